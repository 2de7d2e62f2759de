"""Parameter descriptors in one line each, shared by the package's nodes."""

from __future__ import annotations

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor


def describe(description: str, *, read_only: bool = False, low: float | None = None, high: float | None = None,
              integer: bool = False) -> ParameterDescriptor:
    """A descriptor with its description, read-only flag and (integer or float) range, as ros2 param shows it."""
    descriptor = ParameterDescriptor(description=description, read_only=read_only)
    if low is not None:
        if integer:
            descriptor.integer_range = [IntegerRange(from_value=int(low), to_value=int(high), step=1)]
        else:
            descriptor.floating_point_range = [FloatingPointRange(from_value=low, to_value=high)]
    return descriptor
