"""ament_python build: installs the package, its launch/config files and console scripts."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "revperception"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml", "LICENSE", "THIRD_PARTY_NOTICES.md"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.xml")),
        (f"share/{PACKAGE}/models", glob("models/*.rvp.safetensors") + glob("models/*.json")),  # the demo model
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="revperception maintainers",
    maintainer_email="maintainers@revperception.dev",
    description="Reversible-pruning YOLOv5 perception for ROS 2",
    license="AGPL-3.0-only",
    entry_points={
        "console_scripts": [
            "revperception = revperception.cli:main",
            "perception_node = revperception.ros.perception_node:main",
            "anomaly_monitor = revperception.ros.anomaly_monitor:main",
        ],
    },
)
