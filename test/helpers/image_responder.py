"""A separate ROS process for the middleware test: answers each Image with a Detection2DArray.

The reply's class_id carries the image's size and pixel checksum, so the test can prove the frame
crossed process boundaries intact, and the bbox spans the whole image.
"""

import zlib

from rclpy.node import Node
from sensor_msgs.msg import Image
from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose

from revperception.ros import qos
from revperception.ros.conversions import image_to_bgr
from revperception.ros.spin import run_node


def responder() -> Node:
    node = Node("image_responder")
    publisher = node.create_publisher(Detection2DArray, "reply", qos.DETECTIONS)

    def on_image(msg: Image) -> None:
        frame = image_to_bgr(msg)
        det = Detection2D(header=msg.header)
        det.bbox.center.position.x = frame.shape[1] / 2
        det.bbox.center.position.y = frame.shape[0] / 2
        det.bbox.size_x, det.bbox.size_y = float(frame.shape[1]), float(frame.shape[0])
        hypothesis = ObjectHypothesisWithPose()
        hypothesis.hypothesis.class_id = f"{frame.shape[1]}x{frame.shape[0]}:{zlib.crc32(frame.tobytes())}"
        hypothesis.hypothesis.score = 1.0
        det.results.append(hypothesis)
        publisher.publish(Detection2DArray(header=msg.header, detections=[det]))

    node.create_subscription(Image, "image", on_image, qos.IMAGE_RELIABLE)
    return node


def main() -> None:
    run_node(responder, "image_responder")


if __name__ == "__main__":
    main()
