"""Where the package's installed files live: launch and parameter files, the Fast DDS profile, the demo checkpoint.

Installed by colcon (or as a ROS package), they are in the package's share directory, found through the ament
index (`. install/setup.bash` puts the install space on AMENT_PREFIX_PATH). A developer's editable install has no
share directory; there the files are read from the source checkout the package is imported from.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = "revperception"


def share_dir() -> Path:
    """The package's share directory (or, in an editable install, its source checkout)."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    except ImportError:
        pass
    else:
        try:
            return Path(get_package_share_directory(PACKAGE))
        except (PackageNotFoundError, OSError):  # OSError: AMENT_PREFIX_PATH is not set
            pass
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "package.xml").is_file() and (checkout / "config").is_dir():
        return checkout
    raise FileNotFoundError(f"{PACKAGE}'s share directory is not on the ament index: source the install space "
                            f"(`. install/setup.bash`) or install the package with colcon")


def share_path(*parts: str) -> Path:
    """A file under the share directory, e.g. share_path("config", "perception.yaml")."""
    return share_dir().joinpath(*parts)
