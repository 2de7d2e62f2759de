"""revperception: reversible-pruning YOLOv5 perception for ROS 2.

The core (models, pruning, checkpoint, runtime, offline) imports no rclpy;
`revperception.ros` and `revperception.tools` are the ROS-facing layer.
"""

import os

# Ultralytics probes the network for settings and fonts; vehicles have no network.
os.environ.setdefault("YOLO_OFFLINE", "1")

__version__ = "0.1.0"
