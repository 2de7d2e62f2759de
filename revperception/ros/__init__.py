"""The ROS 2 layer: the two nodes (perception_node, anomaly_monitor) and the thin adapters they share between
rclpy and the core (conversions, latest_frame, qos, parameters, spin). Outside it, only the tools that start or
talk to nodes (`revperception.tools`: replay, inject, demo, node_bench) import rclpy."""
