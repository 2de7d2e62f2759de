"""The `revperception` command: each subcommand is a thin call into the package."""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    from revperception.tools.demo import print_summary, run_demo

    result = run_demo(weights=args.weights, frames=args.frames)
    print_summary(result)
    return 0 if result.ok else 1


def _prune(args: argparse.Namespace) -> int:
    from revperception.bench import measure_levels
    from revperception.checkpoint import save_reversible
    from revperception.models import load_model
    from revperception.pruning import encode_full, encode_level
    from revperception.pruning.prune import prune_to_levels

    if not args.no_finetune:
        print("revperception prune: fine-tuning is not available yet; pass --no-finetune", file=sys.stderr)
        return 2
    fractions = [args.sparsity, *(args.sparsity * (i + 1) / args.levels for i in range(args.levels - 1))]
    pruned = prune_to_levels(load_model(args.weights), fractions, ranking=args.ranking, round_to=args.round_to,
                             imgsz=args.imgsz)
    pruned.info["levels"] = measure_levels(pruned)
    checkpoint = save_reversible(args.out, pruned)
    full = pruned.info["levels"]["full"]
    print(f"wrote {args.out} ({len(pruned.groups)} channel groups, sha256 {checkpoint.sha256[:16]})")
    for name in pruned.levels.names:
        stats = pruned.info["levels"][name]
        encoding = encode_full(pruned.groups) if name == "full" else encode_level(pruned.groups,
                                                                                  pruned.levels.keep[name])
        print(f"  {name:<8} params {stats['params']:>10,} ({stats['params'] / full['params']:.3f})  "
              f"FLOPs {stats['flops'] / full['flops']:.3f}  encoding {len(encoding)} B")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from revperception.bench import format_table, run_bench, write_json

    result = run_bench(args.model, sparsity=args.sparsity, imgsz=args.imgsz, switches=args.switches,
                       loads=args.loads, runs=args.runs)
    print(format_table(result))
    if args.json:
        write_json(result, args.json)
    return 0


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

    prune = sub.add_parser("prune", help="turn a YOLOv5 into a reversible *.rvp.safetensors checkpoint")
    prune.add_argument("--weights", required=True, help="model YAML, Ultralytics .pt or YOLOv5 release .pt")
    prune.add_argument("--out", required=True, help="output checkpoint (*.rvp.safetensors)")
    prune.add_argument("--sparsity", type=float, default=0.36, help="fraction of filters pruned per group")
    prune.add_argument("--levels", type=int, default=1, help="pruned levels below full (nested, evenly spread)")
    prune.add_argument("--ranking", choices=("l1", "l2"), default="l1", help="filter importance criterion")
    prune.add_argument("--round-to", type=int, default=16,
                       help="round kept channels to a multiple of this (CPU kernels run blocks of 16)")
    prune.add_argument("--imgsz", type=int, default=640, help="inference size stored in the checkpoint")
    prune.add_argument("--no-finetune", action="store_true", help="prune only, on the given weights")
    prune.set_defaults(func=_prune)

    bench = sub.add_parser("bench", help="time swaps, disk loads and inference of a reversible model")
    bench.add_argument("--model", required=True, help="checkpoint, or a model to prune on the fly (no fine-tune)")
    bench.add_argument("--sparsity", type=float, default=0.36, help="filter fraction when pruning on the fly")
    bench.add_argument("--imgsz", type=int, default=640)
    bench.add_argument("--switches", type=int, default=200, help="level switches timed (median reported)")
    bench.add_argument("--loads", type=int, default=5, help="disk loads timed (median reported)")
    bench.add_argument("--runs", type=int, default=10, help="interleaved inferences per level")
    bench.add_argument("--json", help="also write the results here")
    bench.set_defaults(func=_bench)

    env = sub.add_parser("env", help="print the versions and middleware this environment uses")
    env.set_defaults(func=_env)
    return parser


def main(argv: list[str] | None = None) -> int:
    from revperception.checkpoint import CheckpointError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CheckpointError, FileNotFoundError, ValueError) as err:  # bad input: one clear line, non-zero exit
        print(f"revperception {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
