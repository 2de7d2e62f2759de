#!/usr/bin/env bash
# Build the vision_msgs detection messages (interfaces/vision_msgs) into the
# venv prefix. Only called when vision_msgs is not importable, so it never
# shadows a real vision_msgs from a sourced ROS 2 or colcon workspace.
# Usage: scripts/build_vision_msgs.sh VENV
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(cd "$1" && pwd)
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT

# With wheels, the ROS CMake packages live in the venv prefix; with a system
# ROS 2, they come from the sourced AMENT_PREFIX_PATH.
prefix_path="$venv"
if [ -n "${AMENT_PREFIX_PATH:-}" ]; then
  prefix_path="$venv;${AMENT_PREFIX_PATH//:/;}"
fi

echo "setup: building vision_msgs into $venv"
PATH="$venv/bin:$PATH" cmake -S interfaces/vision_msgs -B "$build" \
  -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$prefix_path" \
  -DCMAKE_INSTALL_PREFIX="$venv" \
  -DCMAKE_INSTALL_RPATH="$venv/lib" \
  -DPython3_EXECUTABLE="$venv/bin/python" \
  -DBUILD_TESTING=OFF >"$build/configure.log" 2>&1 \
  || { cat "$build/configure.log" >&2; exit 1; }
PATH="$venv/bin:$PATH" cmake --build "$build" -j "$(nproc)" >"$build/build.log" 2>&1 \
  || { tail -50 "$build/build.log" >&2; exit 1; }
cmake --install "$build" >/dev/null
