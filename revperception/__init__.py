"""revperception: reversible-pruning YOLOv5 perception for ROS 2.

The core (models, pruning, checkpoint, runtime, compiled, detector, measure, offline) imports no rclpy;
`revperception.ros` and `revperception.tools` are the ROS-facing layer.
"""

import os

# Ultralytics probes the network for settings and fonts; vehicles have no network.
os.environ.setdefault("YOLO_OFFLINE", "1")
# Ultralytics sets OMP_NUM_THREADS=1 in os.environ on import when it is unset, and every process started
# from ours (the node from `make demo`, tests and benches) inherited it: the node ran torch on one thread,
# at half speed. Pin torch's own default (one thread per usable CPU) first, so that import changes nothing.
# (sched_getaffinity is Linux-only; elsewhere every CPU counts as usable.)
_usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
os.environ.setdefault("OMP_NUM_THREADS", str(_usable))

__version__ = "0.1.0"
