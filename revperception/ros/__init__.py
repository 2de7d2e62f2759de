"""The ROS 2 layer: thin adapters between rclpy and the core. Nothing outside this package imports rclpy,
except the tools that replay and inject topics."""
