"""The clocks ratemw reads, in integer milliseconds: each defined once."""

from __future__ import annotations

import time

__all__ = ["monotonic_ms", "wall_clock_ms"]


def wall_clock_ms() -> int:
    """The time of day (what storages count windows by, and epoch headers tell)."""
    return time.time_ns() // 1_000_000


def monotonic_ms() -> int:
    """A clock that never goes back (what durations are measured by)."""
    return time.monotonic_ns() // 1_000_000
