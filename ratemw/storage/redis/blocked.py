"""Callers Redis refused, remembered locally until their answer could change.

A refused caller's next requests are answered from this process's memory until the earliest
moment one of its violated limits could change, so a flood from one key costs Redis nothing.

A reset changes the answer too: ``clear`` and ``reset`` (``ratemw reset``, ``Limiter.reset``)
may run in any process, and must reach the others. They leave a **reset mark** in Redis (the
server time of the latest reset, under ``<prefix>:{resets}``: ``admin.py``); a process that
answers refusals from memory reads the mark at most once a second (``resets_due``), in a
command of its own, never in the per-request script, and forgets every refusal Redis decided
before it (``saw_reset``). At most one round trip a second per process while it answers
anyone from memory, none otherwise; a caller reset anywhere is admitted everywhere within a
second.

Refusals are compared with the mark on the server's clock (each usage's ``stamp_ms``), so
that a reset between a refusal and the next reading of the mark is seen too. Cluster nodes'
clocks may disagree a little: a refusal decided up to ``CLOCK_MARGIN_MS`` after a reset
counts as decided before it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from ratemw._bounded import Bounded
from ratemw._clock import monotonic_ms
from ratemw.storage.base import CONCURRENCY, Hit, Usage

__all__ = ["CLOCK_MARGIN_MS", "DEFAULT_SIZE", "RESET_CHECK_MS", "BlockedCache"]

DEFAULT_SIZE = 10_000
RESET_CHECK_MS = 1_000  # how often a process that remembers refusals reads the reset mark
CLOCK_MARGIN_MS = 1_000

# signature -> (seen at, until: monotonic ms; decided at: server ms; the usages)
_Entry = tuple[int, int, int, list[Usage]]


class BlockedCache:
    """Refusals remembered until the earliest moment one of the violated limits could change,
    or a reset.

    Until then the same request from the same caller would be refused again with the same
    numbers (less the time that passed), so the answer is given without asking Redis. Only
    durations are measured locally (on the monotonic clock); the numbers come from Redis.

    Args:
        size: how many refusals at most are remembered (0: none).
    """

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        self.size = size
        # Read without the lock (a dict is safe to read); a flood of callers clears it.
        self.entries: Bounded[tuple[Any, ...], _Entry] = Bounded(max(size, 1))
        self.reset_at = 0  # the latest reset seen (server ms)
        self._check_at = 0  # when to read the reset mark again (monotonic ms)
        self._lock = threading.Lock()

    @staticmethod
    def signature(hits: Sequence[Hit]) -> tuple[Any, ...]:
        return tuple((h.key, h.cost, h.enforce) for h in hits)

    def get(self, signature: tuple[Any, ...]) -> list[Usage] | None:
        """The remembered refusal of this request, its times brought up to date, if any."""
        entry = self.entries.get(signature)
        if entry is None:
            return None
        seen_at, until, _, usages = entry
        now = monotonic_ms()
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
        """Remember a refusal until its shortest wait is over (if that is known)."""
        violated = [(u, h) for u, h in zip(usages, hits, strict=True) if h.enforce and not u.fits]
        # A concurrency slot may free at any moment: its "wait" is a guess, not a bound.
        if not violated or self.size == 0 or any(h.strategy == CONCURRENCY for _, h in violated):
            return
        waits = [u.wait_ms for u, _ in violated]
        # A cost that can never fit is not remembered: the limit may be raised meanwhile.
        known = [w for w in waits if w is not None]
        if len(known) < len(waits) or min(known) <= 0:
            return
        decided = min(u.stamp_ms for u in usages)
        if decided <= self.reset_at + CLOCK_MARGIN_MS:  # it may predate the reset seen last
            return
        with self._lock:
            now = monotonic_ms()
            if not self.entries:
                # Nothing was being served: the mark need not be read before a second has
                # passed (a reset meanwhile is found by its time, whenever it is read).
                self._check_at = now + RESET_CHECK_MS
            self.entries.put(signature, (now, now + min(known), decided, usages))

    def resets_due(self) -> bool:
        """Whether to read the reset mark now: at most once every ``RESET_CHECK_MS``.

        A true answer is given to one caller, which is to read the mark and pass it to
        ``saw_reset``.
        """
        now = monotonic_ms()
        if now < self._check_at:
            return False
        self._check_at = now + RESET_CHECK_MS
        return True

    def saw_reset(self, reset_at: int) -> None:
        """The reset mark read from Redis: forget the refusals decided before that reset."""
        if reset_at <= self.reset_at:
            return
        self.reset_at = reset_at
        before = reset_at + CLOCK_MARGIN_MS
        with self._lock:
            # A copy to walk: get() drops entries without the lock.
            for signature, entry in list(self.entries.items()):
                if entry[2] <= before:
                    self.entries.pop(signature, None)

    def __len__(self) -> int:
        return len(self.entries)

    def forget(self, keys: set[str]) -> None:
        """Drop the refusals that involve ``keys`` (units were handed back on them)."""
        if not self.entries:
            return
        with self._lock:
            for signature in list(self.entries):  # a copy: get() drops entries without the lock
                if any(key in keys for key, _, _ in signature):
                    self.entries.pop(signature, None)

    def clear(self) -> None:
        """Forget every refusal (this process reset the counts)."""
        with self._lock:
            self.entries.clear()
