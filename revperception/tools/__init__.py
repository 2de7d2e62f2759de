"""Tools around the node: synthetic scenes and the demo (these may import rclpy)."""
