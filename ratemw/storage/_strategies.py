"""The strategies' arithmetic, on integer milliseconds, free of I/O.

The in-memory storage calls these directly; the Redis scripts implement the same arithmetic
line for line, so both storages give the same answers. Each strategy keeps a small mutable
state per key and offers:

- ``check(state, now, amount, window, cost) -> Usage`` (with ``remaining`` as if consumed),
- ``consume(state, now, window, cost) -> state``,
- ``expires(state, window) -> ms`` after which the state can be dropped.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from ratemw.storage._base import Usage


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class FixedWindow:
    """``amount`` units per window; the window starts at a key's first hit."""

    name = "fixed-window"

    @staticmethod
    def fresh(now: int, window: int) -> list[int]:
        return [0, now + window]  # count, window end

    def current(self, state: list[int] | None, now: int, window: int) -> list[int]:
        if state is None or now >= state[1]:
            return self.fresh(now, window)
        return state

    def check(self, state: Any, now: int, amount: int, window: int, cost: int) -> Usage:
        count, end = self.current(state, now, window)
        reset = end - now
        if count + cost <= amount:
            return Usage(True, amount - count - cost, reset, 0)
        wait = None if cost > amount else reset
        return Usage(False, amount - count, reset, wait)

    def consume(self, state: Any, now: int, window: int, cost: int) -> list[int]:
        current = self.current(state, now, window)
        current[0] += cost
        return current

    @staticmethod
    def expires(state: list[int], window: int) -> int:
        return state[1]


class MovingWindow:
    """At most ``amount`` units in any ``window`` ending now (a log of hits)."""

    name = "moving-window"

    @staticmethod
    def _trim(state: deque[tuple[int, int]], now: int, window: int) -> int:
        while state and state[0][0] <= now - window:
            state.popleft()
        return sum(cost for _, cost in state)

    def check(self, state: Any, now: int, amount: int, window: int, cost: int) -> Usage:
        log: deque[tuple[int, int]] = state if state is not None else deque()
        used = self._trim(log, now, window)
        if used + cost <= amount:
            # Full restore happens when this request's own entry leaves the window.
            return Usage(True, amount - used - cost, window, 0)
        reset = log[-1][0] + window - now if log else 0
        if cost > amount:
            return Usage(False, amount - used, reset, None)
        needed = used + cost - amount
        freed = 0
        for stamp, hit_cost in log:
            freed += hit_cost
            if freed >= needed:
                return Usage(False, amount - used, reset, stamp + window - now)
        raise AssertionError("unreachable: the whole log frees enough")  # pragma: no cover

    def consume(self, state: Any, now: int, window: int, cost: int) -> deque[tuple[int, int]]:
        log: deque[tuple[int, int]] = state if state is not None else deque()
        self._trim(log, now, window)
        log.append((now, cost))
        return log

    @staticmethod
    def expires(state: deque[tuple[int, int]], window: int) -> int:
        return state[-1][0] + window if state else 0


class SlidingWindowCounter:
    """Two epoch-aligned fixed windows; the previous one counts in proportion to its overlap.

    With ``e`` ms elapsed in the current window of length ``W``, the weighted count is
    ``prev * (W - e) / W + curr``. Everything is compared multiplied by ``W`` so the
    arithmetic stays in integers.
    """

    name = "sliding-window-counter"

    @staticmethod
    def current(state: list[int] | None, now: int, window: int) -> list[int]:
        start = now - now % window
        if state is None:
            return [start, 0, 0]  # current window start, previous count, current count
        if state[0] == start:
            return state
        if state[0] == start - window:
            return [start, state[2], 0]
        return [start, 0, 0]

    def check(self, state: Any, now: int, amount: int, window: int, cost: int) -> Usage:
        start, prev, curr = self.current(state, now, window)
        elapsed = now - start
        weighted = prev * (window - elapsed) + curr * window  # scaled by window
        room = amount * window - weighted  # scaled by window
        after = curr + cost
        # Full restore: the current count stops weighing at the end of the next window.
        if after > 0:
            reset = start + 2 * window - now
        elif prev > 0:
            reset = start + window - now
        else:
            reset = 0
        if cost * window <= room:
            return Usage(True, (room - cost * window) // window, reset, 0)
        remaining = max(room, 0) // window
        if cost > amount:
            return Usage(False, remaining, reset, None)
        wait = self._wait(start, prev, curr, now, amount, window, cost)
        return Usage(False, remaining, reset, wait)

    @staticmethod
    def _wait(
        start: int, prev: int, curr: int, now: int, amount: int, window: int, cost: int
    ) -> int:
        # Still inside the current window: prev * (W - e) <= (amount - curr - cost) * W.
        spare = amount - curr - cost
        if spare >= 0 and prev > 0:
            elapsed_needed = window - (spare * window) // prev
            if elapsed_needed < window:
                return max(elapsed_needed - (now - start), 0)
        # In the next window the current count becomes the previous one.
        next_start = start + window
        if curr == 0:
            return next_start - now
        elapsed_needed = max(window - ((amount - cost) * window) // curr, 0)
        return next_start + elapsed_needed - now

    def consume(self, state: Any, now: int, window: int, cost: int) -> list[int]:
        current = self.current(state, now, window)
        current[2] += cost
        return current

    @staticmethod
    def expires(state: list[int], window: int) -> int:
        return state[0] + 2 * window


STRATEGY_IMPLEMENTATIONS: dict[str, FixedWindow | MovingWindow | SlidingWindowCounter] = {
    s.name: s for s in (FixedWindow(), MovingWindow(), SlidingWindowCounter())
}
