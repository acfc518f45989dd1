"""Callers Redis refused, remembered locally until their answer could change."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from ratemw.storage._base import CONCURRENCY, Hit, Usage

DEFAULT_SIZE = 10_000


def _monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class BlockedCache:
    """Refusals remembered until the earliest moment one of the violated limits could change.

    Until then the same request from the same caller would be refused again with the same
    numbers (less the time that passed), so the answer is given without asking Redis. Only
    durations are measured locally (on the monotonic clock); the numbers come from Redis.
    """

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        self.size = size
        # signature -> (seen at, until, usages); read without the lock (a dict is safe to read)
        self.entries: dict[tuple[Any, ...], tuple[int, int, list[Usage]]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def signature(hits: Sequence[Hit]) -> tuple[Any, ...]:
        return tuple((h.key, h.cost, h.enforce) for h in hits)

    def get(self, signature: tuple[Any, ...]) -> list[Usage] | None:
        entry = self.entries.get(signature)
        if entry is None:
            return None
        seen_at, until, usages = entry
        now = _monotonic_ms()
        if now >= until:
            self.entries.pop(signature, None)
            return None
        elapsed = now - seen_at
        return [
            Usage(
                u.fits,
                u.remaining,
                max(u.reset_ms - elapsed, 0),
                None if u.wait_ms is None else max(u.wait_ms - elapsed, 0),
            )
            for u in usages
        ]

    def remember(
        self, signature: tuple[Any, ...], hits: Sequence[Hit], usages: list[Usage]
    ) -> None:
        violated = [(u, h) for u, h in zip(usages, hits, strict=True) if h.enforce and not u.fits]
        # A concurrency slot may free at any moment: its "wait" is a guess, not a bound.
        if not violated or self.size == 0 or any(h.strategy == CONCURRENCY for _, h in violated):
            return
        waits = [u.wait_ms for u, _ in violated]
        # A cost that can never fit is not remembered: the limit may be raised meanwhile.
        known = [w for w in waits if w is not None]
        if len(known) < len(waits) or min(known) <= 0:
            return
        with self._lock:
            if len(self.entries) >= self.size:
                self.entries.clear()
            now = _monotonic_ms()
            self.entries[signature] = (now, now + min(known), usages)

    def __len__(self) -> int:
        return len(self.entries)

    def forget(self, keys: set[str]) -> None:
        """Drop the refusals that involve ``keys`` (units were handed back on them)."""
        if not self.entries:
            return
        with self._lock:
            for signature in list(self.entries):
                if any(key in keys for key, _, _ in signature):
                    del self.entries[signature]

    def clear(self) -> None:
        with self._lock:
            self.entries.clear()

