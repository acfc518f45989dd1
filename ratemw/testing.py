"""Helpers for testing apps that use ratemw.

Example::

    from ratemw import Limiter
    from ratemw.testing import FakeClock, disabled, reset

    clock = FakeClock()
    limiter = Limiter(default_limits="2/minute", clock=clock)

    ...                       # two requests pass, the third gets a 429
    clock.advance(60)         # a minute later it passes again, without sleeping

    with disabled(limiter):   # no limits inside the block
        ...
    reset(limiter)            # forget every count between tests
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from ratemw.limiter import Limiter

__all__ = ["FakeClock", "disabled", "reset"]


class FakeClock:
    """A clock that only moves when told to; pass it as ``Limiter(clock=...)``.

    Calling it returns the time in integer milliseconds (the unit ratemw's storages count in).

    Args:
        start: the initial time in seconds since the epoch (default: a fixed, round instant,
            so window boundaries in tests are predictable).
    """

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now_ms = round(start * 1000)
        self._lock = threading.Lock()

    def __call__(self) -> int:
        return self._now_ms

    @property
    def now(self) -> float:
        """The current time in seconds."""
        return self._now_ms / 1000

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (fractions allowed, down to a millisecond)."""
        if seconds < 0:
            raise ValueError(f"a clock cannot go back: advance({seconds!r})")
        with self._lock:
            self._now_ms += round(seconds * 1000)

    def set(self, seconds: float) -> None:
        """Jump to an absolute time in seconds (forward only)."""
        target = round(seconds * 1000)
        if target < self._now_ms:
            raise ValueError(f"a clock cannot go back: set({seconds!r})")
        with self._lock:
            self._now_ms = target


def reset(limiter: Limiter) -> None:
    """Forget every count the limiter holds (its storage, and its fallback storage)."""
    limiter.reset()


@contextmanager
def disabled(limiter: Limiter) -> Iterator[Limiter]:
    """Turn the limiter off inside a ``with`` block; restores the previous state after."""
    previous = limiter.enabled
    limiter.reconfigure(enabled=False)
    try:
        yield limiter
    finally:
        limiter.reconfigure(enabled=previous)
