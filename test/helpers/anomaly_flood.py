"""A separate process that toggles an anomaly topic at a fixed rate, ending on true; prints how many it sent.

Usage: anomaly_flood.py TOPIC RATE_HZ SECONDS. A process of its own, as a real anomaly detector is:
a busy publisher in the test process would starve the node's threads of the interpreter lock.
"""

import sys
import time

import rclpy
from std_msgs.msg import Bool

from revperception.ros import qos


def main() -> None:
    topic, rate, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    rclpy.init()
    node = rclpy.create_node("anomaly_flood")
    publisher = node.create_publisher(Bool, topic, qos.ANOMALY)
    deadline = time.monotonic() + 30
    while publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
    sent = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        publisher.publish(Bool(data=sent % 2 == 0))
        sent += 1
        time.sleep(max(0.0, start + sent / rate - time.perf_counter()))  # the detector's rate, not a busy loop
    publisher.publish(Bool(data=True))
    print(sent + 1, flush=True)
    publisher.wait_for_all_acked(rclpy.duration.Duration(seconds=60))
    node.destroy_node()
    rclpy.try_shutdown()


if __name__ == "__main__":
    main()
