"""What both nodes do alike: declare their parameter table, read a parameter, choose the image subscription,
build a diagnostics message. A mixin, since one node is a LifecycleNode and the other a plain Node."""

from __future__ import annotations

from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.exceptions import ParameterUninitializedException
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header


class NodeBase:
    """Mix in before rclpy's Node or LifecycleNode: `class X(NodeBase, Node)`."""

    def declare_table(self, table: dict[str, tuple[Any, ParameterDescriptor]]) -> None:
        """Declare every parameter of `table` (name -> (default, descriptor))."""
        for name, (default, descriptor) in table.items():
            self.declare_parameter(name, default, descriptor)

    def param(self, name: str) -> Any:
        """A parameter's value; None for one declared without a value (an unset integer array)."""
        try:
            return self.get_parameter(name).value
        except ParameterUninitializedException:
            return None

    def image_subscription(self) -> tuple[type, str]:
        """The camera's message type and topic: `<image>/compressed` as image_transport names it when the
        `compressed` parameter is true, else the raw `image`."""
        if self.param("compressed"):
            return CompressedImage, self.resolve_topic_name("image") + "/compressed"
        return Image, "image"

    def status_array(self, header: Header, what: str, values: dict[str, Any], level: bytes = DiagnosticStatus.OK,
                     message: str = "") -> DiagnosticArray:
        """One DiagnosticStatus named `<node>: <what>`, values as strings, this node as its hardware id."""
        status = DiagnosticStatus(level=level, name=f"{self.get_name()}: {what}", message=message,
                                  hardware_id=self.get_fully_qualified_name(),
                                  values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])
        return DiagnosticArray(header=header, status=[status])
