"""QoS profiles chosen on purpose, in one place, and the DDS transport that camera frames need."""

import os
from pathlib import Path

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

from revperception.share import share_path

# Camera frames: best effort, shallow. A late frame is worth less than the next one.
IMAGE_SENSOR_DATA: QoSProfile = qos_profile_sensor_data
# For recorded or bridged streams whose publishers are reliable-only.
IMAGE_RELIABLE = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
# Detections: reliable so downstream planners and recorders see every result.
DETECTIONS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)

# ~/mode: late joiners (a recorder, a dashboard) get the current level at once.
MODE = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
# Anomaly flags: reliable and keep-all, so no message is dropped even when a burst outpaces the callback
# (a short true pulse must still start the hold); a reliable publisher is slowed rather than losing one.
ANOMALY = QoSProfile(depth=1, history=HistoryPolicy.KEEP_ALL, reliability=ReliabilityPolicy.RELIABLE)


def image_qos(name: str) -> QoSProfile:
    """The image QoS for parameter value `name` ('sensor_data' or 'reliable')."""
    profiles = {"sensor_data": IMAGE_SENSOR_DATA, "reliable": IMAGE_RELIABLE}
    if name not in profiles:
        raise ValueError(f"image_qos must be one of {sorted(profiles)}, got {name!r}")
    return profiles[name]


def large_frames_profile() -> Path:
    """Fast DDS shared-memory segments big enough for whole camera frames; the file says what the default costs."""
    return share_path("config", "fastdds_large_frames.xml")


def use_large_frame_transport() -> None:
    """Point Fast DDS at `large_frames_profile()` for this process and those it starts, unless a profile is chosen.

    Call it before rclpy.init(): Fast DDS reads its profiles when the first participant is created.
    """
    os.environ.setdefault("FASTRTPS_DEFAULT_PROFILES_FILE", str(large_frames_profile()))
