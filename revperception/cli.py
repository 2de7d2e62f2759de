"""The `revperception` command: each subcommand is a thin call into the package."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _demo(args: argparse.Namespace) -> int:
    """The synthetic drive, or with --video a user's footage, through the same chain and report."""
    from revperception.tools.demo import parse_fog, report, run_demo, run_video_demo

    if args.video is None:
        if args.fog is not None:
            raise ValueError("--fog needs --video: the synthetic drive has its own fog in its middle fifth")
        result = run_demo(args.checkpoint, seconds=30.0 if args.seconds is None else args.seconds,
                          hz=10.0 if args.hz is None else args.hz, out=args.out)
    else:
        if args.hz is not None:
            raise ValueError("--hz is the synthetic drive's camera rate: a video plays at its own frame rate")
        result = run_video_demo(args.video, args.checkpoint, fog=None if args.fog is None else parse_fog(args.fog),
                                seconds=args.seconds, out=args.out)
    report(result, args.out)
    return 0 if result.ok else 1


def _prune(args: argparse.Namespace) -> int:
    """No fine-tuning: rank and slice the given weights. Otherwise: the offline pipeline."""
    if args.no_finetune:
        return _prune_only(args)
    from dataclasses import fields

    from revperception.offline.config import PruneConfig
    from revperception.offline.pipeline import run_pipeline
    from revperception.offline.report import format_table

    if not args.data:
        print("revperception prune: error: --data is required unless --no-finetune", file=sys.stderr)
        return 2
    cfg = PruneConfig(**{f.name: getattr(args, f.name) for f in fields(PruneConfig)})
    report = run_pipeline(cfg)
    print(format_table(report))
    print(f"wrote {args.out}, its report and plot; full level vs dense: max |difference| / (1 + |output|) "
          f"{report['full_deviation']:.1e}")
    return 0


def _prune_only(args: argparse.Namespace) -> int:
    from revperception.checkpoint import save_reversible
    from revperception.measure import measure_levels
    from revperception.models import load_model
    from revperception.pruning import encodings
    from revperception.pruning.prune import prune_to_levels

    top = args.filter_fraction
    fractions = [top, *(top * (i + 1) / args.levels for i in range(args.levels - 1))]
    pruned = prune_to_levels(load_model(args.weights), fractions, ranking=args.ranking, round_to=args.round_to,
                             imgsz=args.imgsz, level_imgsz=args.level_imgsz)
    pruned.info["levels"] = measure_levels(pruned)
    checkpoint = save_reversible(args.out, pruned)
    full = pruned.info["levels"]["full"]
    print(f"wrote {args.out} ({len(pruned.groups)} channel groups, sha256 {checkpoint.sha256[:16]})")
    codes = encodings(pruned.groups, pruned.levels)
    for name in pruned.levels.names:
        stats = pruned.info["levels"][name]
        print(f"  {name:<8} {stats['imgsz']} px  params {stats['params']:>10,} "
              f"({stats['params'] / full['params']:.3f})  "
              f"FLOPs {stats['flops'] / full['flops']:.3f}  encoding {len(codes[name])} B")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from revperception.checkpoint import load_reversible
    from revperception.detector import build_levels
    from revperception.io import atomic_write_text
    from revperception.models import load_model
    from revperception.offline.evaluate import evaluate
    from revperception.pruning import FULL
    from revperception.pruning.prune import prune_to_levels

    if bool(args.checkpoint) == bool(args.weights):
        print("revperception eval: error: give exactly one of --checkpoint or --weights", file=sys.stderr)
        return 2
    if args.checkpoint:
        pruned = load_reversible(args.checkpoint)
        level, imgsz = args.level, args.imgsz or pruned.levels.size(args.level, pruned.imgsz)
    else:  # a dense model is a checkpoint with one level, so that it runs on every backend the same way
        pruned, level, imgsz = prune_to_levels(load_model(args.weights), [0.0]), FULL, args.imgsz or 640
    model = build_levels(pruned, backend=args.backend, precision=args.precision, device=args.device,
                         start_level=level, sizes=dict.fromkeys(pruned.levels.names, imgsz))
    level = level if args.checkpoint else "dense"
    result = {**evaluate(model, args.data, imgsz=imgsz, device=args.device, split=args.split), "level": level,
              "imgsz": imgsz, "backend": args.backend, "precision": model.precision}
    for key in ("map50", "map50_95", "precision", "recall", "images", "level"):
        print(f"{key:<10} {result[key]:.4f}" if isinstance(result[key], float) else f"{key:<10} {result[key]}")
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2, sort_keys=True) + "\n")
    return 0


def _split(args: argparse.Namespace) -> int:
    """Counts per split and per source on stdout, so that a run's log shows what each split holds."""
    from revperception.offline.data import split_dataset

    def amount(text: str) -> int | float:
        return float(text) if "." in text else int(text)  # "32": a count per source, "0.25": a fraction

    data_yaml = split_dataset(args.data, args.out, val=amount(args.val), test=amount(args.test),
                              unlabelled=args.unlabelled or [])
    print(f"wrote {data_yaml}")
    for name, part in json.loads((data_yaml.parent / "split.json").read_text(encoding="utf-8"))["splits"].items():
        print(f"{name:<5} {part['images']:>6}  " + ", ".join(f"{n} {src}" for src, n in part["per_source"].items()))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from revperception.bench import format_table, run_bench, write_json

    result = run_bench(args.model, sparsity=args.sparsity, imgsz=args.imgsz, switches=args.switches,
                       loads=args.loads, runs=args.runs, backend=args.backend, precision=args.precision)
    print(format_table(result))
    if args.json:
        write_json(result, args.json)
    return 0


def _bench_node(args: argparse.Namespace) -> int:
    from revperception.bench import write_json
    from revperception.tools.node_bench import format_node_bench, run_node_bench

    result = run_node_bench(args.checkpoint, trials=args.trials, imgsz=args.imgsz, camera_hz=args.camera_hz,
                            throughput_s=args.throughput_s, backend=args.backend, precision=args.precision)
    print(format_node_bench(result))
    if args.json:
        write_json(result, args.json)
    return 0


def _export(args: argparse.Namespace) -> int:
    from revperception.export import export_level

    out = export_level(args.checkpoint, args.level, args.format, args.out)
    print(f"wrote {out}: level {args.level} of {args.checkpoint} as {args.format}")
    return 0


def _replay(args: argparse.Namespace) -> int:
    from revperception.tools.replay import ReplayOptions, format_summary, replay, warn_absent

    result = replay(ReplayOptions(
        bag=args.bag, rate=args.rate, start_s=args.start, loop=args.loop, topics=args.topics, remap=args.remap,
        record=args.record, record_topics=args.record_topics, record_storage=args.record_storage,
        record_linger_s=args.record_linger, record_timeout_s=args.record_timeout, wait_for=args.wait_for,
        wait_timeout_s=args.wait_timeout, clock=args.clock))
    warn_absent(result)
    print(format_summary(result))
    return 0


def _inject(args: argparse.Namespace) -> int:
    from revperception.injection import build_schedule, into_bag

    schedule = build_schedule(args.at, args.schedule, args.topic)
    if args.into_bag:
        out = into_bag(args.into_bag, schedule, args.out)
        print(f"wrote {out}: {len(schedule.events)} events on {schedule.topic}")
        return 0
    from revperception.tools.inject import inject

    result = inject(schedule, relative_to=args.relative_to, wait_for=args.wait_for, wait_timeout_s=args.wait_timeout)
    print(f"inject: published {len(result.published)} of {len(schedule.events)} events"
          f"{' (interrupted)' if result.interrupted else ''}")
    return 0


def _env(_: argparse.Namespace) -> int:
    """Print what this environment runs on: the first thing to check on a new vehicle."""
    import rclpy
    import torch
    import ultralytics
    import vision_msgs
    from rclpy.utilities import get_rmw_implementation_identifier

    from revperception.precision import cpu_has_amx, resolve

    print(f"python       {sys.version.split()[0]}")
    print(f"torch        {torch.__version__} (threads {torch.get_num_threads()}, cuda {torch.cuda.is_available()})")
    print(f"ultralytics  {ultralytics.__version__}")
    print(f"rclpy        {rclpy.__file__}")
    print(f"rmw          {get_rmw_implementation_identifier()}")
    print(f"vision_msgs  {vision_msgs.__file__}")
    try:
        import openvino

        print(f"openvino     {openvino.__version__} (devices {', '.join(openvino.Core().available_devices)})")
    except ImportError:
        print("openvino     absent (backend torch only)")
    print(f"precision    auto = {resolve('auto', 'cpu')} on this CPU (AMX: {'yes' if cpu_has_amx() else 'no'})")
    return 0


def _add_prune(sub: argparse._SubParsersAction) -> None:
    """`prune`'s options are generated from `PruneConfig`, the one place they are declared."""
    from dataclasses import MISSING, fields

    from revperception.offline.config import PruneConfig
    from revperception.pruning.ranking import RANKINGS

    prune = sub.add_parser("prune", help="turn a YOLOv5 into a reversible *.rvp.safetensors checkpoint")
    for f in fields(PruneConfig):
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        kind = str(f.type)
        options: dict = {"help": f.metadata["help"] + ("" if default in (None, []) else f" (default: {default})")}
        if kind.startswith("list"):
            options.update(type=int, nargs="+", default=default)
        else:
            options.update(type={"int": int, "float": float}.get(kind, str), default=default)
        if "choices" in f.metadata:
            options["choices"] = f.metadata["choices"]
        required = f.metadata.get("required") and f.name != "data"  # --no-finetune needs no data
        prune.add_argument(f"--{f.name.replace('_', '-')}", required=bool(required), **options)
    prune.add_argument("--no-finetune", action="store_true",
                       help="prune only, on the given weights (no data): uniform --filter-fraction per group")
    prune.add_argument("--filter-fraction", type=float, default=0.36, help="--no-finetune: filter fraction pruned")
    prune.add_argument("--ranking", choices=RANKINGS, default="l1",
                       help="--no-finetune: filter importance")
    prune.set_defaults(func=_prune)


def _add_runtime_options(parser: argparse.ArgumentParser) -> None:
    """--backend and --precision, as the node's parameters of the same names take them."""
    from revperception.precision import PRECISIONS
    from revperception.runtime import BACKENDS

    parser.add_argument("--backend", choices=BACKENDS, default="torch",
                        help="torch: one set of shared weights; openvino: each level compiled once (default: torch)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="auto: the fastest the device runs natively (default: fp32)")


def _add_speed_tools(sub: argparse._SubParsersAction) -> None:
    """`bench`, `export` and `bench-node`: how fast each level runs, and each level as a file for other runtimes."""
    from revperception.export import FORMATS

    bench = sub.add_parser("bench", help="time swaps, disk loads and inference of a reversible model")
    bench.add_argument("--model", required=True, help="checkpoint, or a model to prune on the fly (no fine-tune)")
    bench.add_argument("--sparsity", type=float, default=0.36, help="filter fraction when pruning on the fly")
    bench.add_argument("--imgsz", type=int,
                       help="run every level at this size (default: each level at its own; 640 pruning on the fly)")
    bench.add_argument("--switches", type=int, default=200, help="level switches timed (median reported)")
    bench.add_argument("--loads", type=int, default=5, help="disk loads timed (median reported)")
    bench.add_argument("--runs", type=int, default=10, help="interleaved inferences per level")
    _add_runtime_options(bench)
    bench.add_argument("--json", help="also write the results here")
    bench.set_defaults(func=_bench)

    export = sub.add_parser("export", help="write one level of a checkpoint as ONNX (TensorRT, ONNX Runtime) or "
                                           "OpenVINO IR, with its class names and input size")
    export.add_argument("--checkpoint", required=True, help="*.rvp.safetensors")
    export.add_argument("--level", default="pruned", help="the checkpoint level to write")
    export.add_argument("--format", required=True, choices=FORMATS)
    export.add_argument("--out", required=True, type=Path,
                        help="onnx: the .onnx file; openvino: a folder for <name>.xml, .bin and metadata.yaml")
    export.set_defaults(func=_export)

    node_bench = sub.add_parser("bench-node", help="the node over DDS: anomaly -> full-level detections, throughput")
    node_bench.add_argument("--checkpoint", type=Path, required=True, help="*.rvp.safetensors")
    node_bench.add_argument("--imgsz", type=int, default=640)
    node_bench.add_argument("--trials", type=int, default=50, help="anomaly trials (median and worst reported)")
    node_bench.add_argument("--camera-hz", type=float,
                            help="camera rate (default: 30 Hz, or 1.25x the bare pruned fps if faster; <= 60)")
    node_bench.add_argument("--throughput-s", type=float, default=10.0, help="seconds of throughput measurement")
    _add_runtime_options(node_bench)
    node_bench.add_argument("--json", help="also write the results here")
    node_bench.set_defaults(func=_bench_node)


def _add_bag_tools(sub: argparse._SubParsersAction) -> None:
    """`replay` and `inject`: the rosbag2 and `ros2 topic pub` stand-ins, with many options each."""
    replay = sub.add_parser("replay", help="play a rosbag2 onto live topics (like `ros2 bag play`), record outputs")
    replay.add_argument("bag", type=Path, help="rosbag2 folder (sqlite3 or mcap)")
    replay.add_argument("--rate", type=float, default=1.0, help="playback speed factor")
    replay.add_argument("--start", type=float, default=0.0, help="skip the first S seconds of the bag")
    replay.add_argument("--loop", action="store_true", help="play again from --start until interrupted")
    replay.add_argument("--topics", nargs="+", help="replay only these topics (default: all)")
    replay.add_argument("--remap", nargs="+", default=[], metavar="FROM:=TO", help="publish FROM on TO")
    replay.add_argument("--wait-for", type=int, default=0, metavar="N",
                        help="wait until every replayed topic has N subscribers before the first message")
    replay.add_argument("--wait-timeout", type=float, default=30.0, help="seconds --wait-for waits before failing")
    replay.add_argument("--clock", action="store_true", help="publish /clock with the bag time (for use_sim_time)")
    replay.add_argument("--record", type=Path, metavar="OUT", help="also record --record-topics into a new bag")
    replay.add_argument("--record-topics", nargs="+", default=[], metavar="T", help="topics to record")
    replay.add_argument("--record-storage", choices=("sqlite3", "mcap"), default="sqlite3")
    replay.add_argument("--record-linger", type=float, default=2.0,
                        help="seconds to keep recording after the last message (trailing outputs)")
    replay.add_argument("--record-timeout", type=float, default=5.0,
                        help="seconds to wait for record topics to appear before the first message")
    replay.set_defaults(func=_replay)

    inject = sub.add_parser("inject", help="publish a timed anomaly schedule (std_msgs/Bool), or write it into a bag")
    inject.add_argument("--topic", help="default: the schedule file's topic, else `anomaly`")
    inject.add_argument("--at", action="append", default=[], metavar="TIME:VALUE", help="e.g. 5.0:true (repeatable)")
    inject.add_argument("--schedule", type=Path, help="YAML: {topic: anomaly, events: [{at: 5.0, value: true}]}")
    inject.add_argument("--relative-to", choices=("start", "bag"), default="start",
                        help="times from this command's start, or from the first /clock (replay --clock)")
    inject.add_argument("--wait-for", type=int, default=0, metavar="N", help="wait for N subscribers first")
    inject.add_argument("--wait-timeout", type=float, default=30.0, help="seconds to wait for subscribers or /clock")
    inject.add_argument("--into-bag", type=Path, metavar="BAG", help="write the events into a copy of BAG instead")
    inject.add_argument("--out", type=Path, help="--into-bag: the new bag (default: BAG-injected)")
    inject.set_defaults(func=_inject)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="revperception", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="replay a synthetic foggy drive (or --video FILE) through the anomaly monitor "
                                       "and the node")
    demo.add_argument("--checkpoint", type=Path,
                      help="reversible checkpoint (default: models/demo-yolov5n.rvp.safetensors; `make demo-model`; "
                           "it knows only the synthetic classes)")
    demo.add_argument("--video", type=Path, metavar="FILE",
                      help="replay this video (decoded by OpenCV, at its own frame rate, downscaled to at most 640 px "
                           "wide) instead of the synthetic drive")
    demo.add_argument("--fog", metavar="START:END",
                      help="--video: add synthetic fog from START to END seconds into the video (default: no fog)")
    demo.add_argument("--seconds", type=float,
                      help="length of the drive (default 30; fog covers its middle fifth); --video: the most seconds "
                           "used from its start (default 30, or the whole video when shorter)")
    demo.add_argument("--hz", type=float, help="camera rate of the synthetic drive (default 10)")
    demo.add_argument("--out", type=Path, default=Path("demo-out"),
                      help="folder for the drive bag, the recorded outputs, timeline.png and strip.png")
    demo.set_defaults(func=_demo)

    _add_prune(sub)

    evaluation = sub.add_parser("eval", help="mAP of a checkpoint level or a dense model on a dataset")
    evaluation.add_argument("--checkpoint", help="*.rvp.safetensors")
    evaluation.add_argument("--level", default="pruned", help="checkpoint level to evaluate")
    evaluation.add_argument("--weights", help="a dense model instead of a checkpoint")
    evaluation.add_argument("--data", required=True, help="Ultralytics dataset YAML")
    evaluation.add_argument("--split", default="val")
    evaluation.add_argument("--imgsz", type=int, help="default: the level's own input size, or 640 for --weights")
    evaluation.add_argument("--device", default="cpu")
    _add_runtime_options(evaluation)
    evaluation.add_argument("--json", help="also write the results here")
    evaluation.set_defaults(func=_eval)

    split = sub.add_parser("split", help="deterministic train/val(/test) split of labelled datasets (and unlabelled "
                                         "images, train only)")
    split.add_argument("--data", required=True, action="append",
                       help="Ultralytics dataset YAML (repeat for several sources; each is split on its own)")
    split.add_argument("--out", required=True, help="folder for the new data.yaml, image lists and split.json")
    split.add_argument("--val", default="0.25", help="validation images per source: a count (32) or a fraction (0.25)")
    split.add_argument("--test", default="0", help="test images per source, picked first: a count or a fraction; "
                                                   "0: no test split")
    split.add_argument("--unlabelled", action="append", metavar="DIR",
                       help="unlabelled image folder or .txt list, train only (repeatable)")
    split.set_defaults(func=_split)

    _add_speed_tools(sub)
    _add_bag_tools(sub)

    env = sub.add_parser("env", help="print the versions and middleware this environment uses")
    env.set_defaults(func=_env)
    return parser


def main(argv: list[str] | None = None) -> int:
    from revperception.checkpoint import CheckpointError
    from revperception.export import BackendError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CheckpointError, FileNotFoundError, KeyError, ValueError, BackendError) as err:  # one line, exit 1
        print(f"revperception {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
