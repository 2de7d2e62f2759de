"""Launch the revperception perception node and, unless monitor:=false, the reference anomaly monitor.

ros2 launch revperception perception.launch.py checkpoint:=/path/model.rvp.safetensors image:=/camera/image_raw
"""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.parameter_descriptions import ParameterValue

CONFIG = Path(get_package_share_directory("revperception")) / "config" / "perception.yaml"
MONITOR_CONFIG = CONFIG.with_name("anomaly_monitor.yaml")


def generate_launch_description() -> LaunchDescription:
    arg = LaunchConfiguration
    return LaunchDescription([
        DeclareLaunchArgument("checkpoint", description="reversible checkpoint (*.rvp.safetensors)"),
        DeclareLaunchArgument("image", default_value="/camera/image_raw", description="camera image topic"),
        DeclareLaunchArgument("anomaly", default_value="/anomaly", description="anomaly topic (std_msgs/Bool)"),
        DeclareLaunchArgument("params_file", default_value=str(CONFIG), description="node parameters"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its topics"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="follow /clock (bag replay)"),
        DeclareLaunchArgument("monitor", default_value="true",
                              description="run the reference anomaly monitor (false when bringing your own)"),
        DeclareLaunchArgument("autostart", default_value="true",
                              description="configure and activate at once; false leaves the node unconfigured for "
                                          "a lifecycle manager (nav2's lifecycle_manager, `ros2 lifecycle set`)"),
        DeclareLaunchArgument("monitor_params_file", default_value=str(MONITOR_CONFIG),
                              description="anomaly monitor parameters"),
        LifecycleNode(
            package="revperception",
            executable="perception_node",
            name="revperception",
            namespace=arg("namespace"),
            output="screen",
            parameters=[arg("params_file"), {
                "checkpoint": arg("checkpoint"),
                "autostart": ParameterValue(arg("autostart"), value_type=bool),
                "use_sim_time": ParameterValue(arg("use_sim_time"), value_type=bool),
            }],
            remappings=[("image", arg("image")), ("anomaly", arg("anomaly"))],
        ),
        Node(
            package="revperception",
            executable="anomaly_monitor",
            name="anomaly_monitor",
            namespace=arg("namespace"),
            output="screen",
            condition=IfCondition(arg("monitor")),
            parameters=[arg("monitor_params_file"), {
                "use_sim_time": ParameterValue(arg("use_sim_time"), value_type=bool),
            }],
            remappings=[("image", arg("image")), ("anomaly", arg("anomaly"))],
        ),
    ])
