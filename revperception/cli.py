"""The `revperception` command: each subcommand is a thin call into the package."""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    from revperception.tools.demo import print_summary, run_demo

    result = run_demo(weights=args.weights, frames=args.frames)
    print_summary(result)
    return 0 if result.ok else 1


def _env(_: argparse.Namespace) -> int:
    """Print what this environment runs on: the first thing to check on a new vehicle."""
    import rclpy
    import torch
    import ultralytics
    import vision_msgs
    from rclpy.utilities import get_rmw_implementation_identifier

    print(f"python       {sys.version.split()[0]}")
    print(f"torch        {torch.__version__} (threads {torch.get_num_threads()}, cuda {torch.cuda.is_available()})")
    print(f"ultralytics  {ultralytics.__version__}")
    print(f"rclpy        {rclpy.__file__}")
    print(f"rmw          {get_rmw_implementation_identifier()}")
    print(f"vision_msgs  {vision_msgs.__file__}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="revperception", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the end-to-end demo over DDS")
    demo.add_argument("--weights", default="yolov5n.yaml", help="model YAML or .pt checkpoint")
    demo.add_argument("--frames", type=int, default=20, help="frames to send through the node")
    demo.set_defaults(func=_demo)

    env = sub.add_parser("env", help="print the versions and middleware this environment uses")
    env.set_defaults(func=_env)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
