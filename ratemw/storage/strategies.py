"""Strategies: how a quota counts, on integer milliseconds, free of I/O.

The in-memory storage calls these directly; the Redis script (``redis/acquire.lua``) implements
the same arithmetic line for line, so both storages give the same answers
(``tests/storage/test_equivalence.py`` holds them to it, exactly). A strategy keeps a small
state per key and offers:

- ``check(state, now, hit) -> Usage``: does the hit fit (``remaining`` as if consumed);
- ``consume(state, now, hit) -> state``;
- ``refund(state, now, hit, stamp) -> state``: give back what a hit consumed at ``stamp``;
- ``expires(state, hit) -> ms``: when the state can be dropped.

A strategy's ``tag`` is the short name its storage keys and its Redis script entries go by
(``fw``, ``mw``, ...): the one table of tags is the strategies' own attributes, read through
``tag_of``. ``Strategy`` is the public protocol; ``register_strategy`` adds one of your own
(see docs/strategies.md).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol, TypeGuard

from ratemw.errors import ConfigurationError
from ratemw.storage.base import CONCURRENCY, STRATEGIES, Hit, Usage

__all__ = [
    "GCRA",
    "STRATEGY_IMPLEMENTATIONS",
    "Concurrency",
    "FixedWindow",
    "MovingWindow",
    "SlidingWindowCounter",
    "Strategy",
    "register_strategy",
    "tag_of",
]


class Strategy(Protocol):
    """How one kind of quota counts.

    ``name`` is what ``Limiter(strategy=...)`` takes. Optional attributes: ``tag``, the short
    name its storage keys and its Redis script entries go by (without one, a strategy goes by
    its name), and ``lua``, the Lua that counts it on Redis (see docs/strategies.md).
    """

    name: str

    def check(self, state: Any, now: int, hit: Hit) -> Usage:
        """Whether ``hit`` fits the ``state`` at ``now`` (``remaining`` as if consumed)."""
        ...

    def consume(self, state: Any, now: int, hit: Hit) -> Any:
        """The state once ``hit`` is counted at ``now`` (``state`` may be changed in place)."""
        ...

    def refund(self, state: Any, now: int, hit: Hit, stamp: int) -> Any:
        """The state once what ``hit`` consumed at ``stamp`` is handed back at ``now``."""
        ...

    def expires(self, state: Any, hit: Hit) -> int:
        """When (in ms of the storage's clock) ``state`` no longer counts and may be dropped."""
        ...


class FixedWindow:
    """``amount`` units per window; the window starts at a key's first hit."""

    name = "fixed-window"
    tag = "fw"

    def check(self, state: Any, now: int, hit: Hit) -> Usage:
        # state: [count, window end]
        amount, cost = hit.amount, hit.cost
        if state is None or now >= state[1]:
            count, end = 0, now + hit.window_ms
        else:
            count, end = state
        reset = end - now
        if count + cost <= amount:
            return Usage(True, amount - count - cost, reset, 0, now)
        wait = None if cost > amount else reset
        return Usage(False, amount - count, reset, wait, now)

    def consume(self, state: Any, now: int, hit: Hit) -> list[int]:
        if state is None or now >= state[1]:
            return [hit.cost, now + hit.window_ms]
        state[0] += hit.cost
        return state  # type: ignore[no-any-return]

    def refund(self, state: Any, now: int, hit: Hit, stamp: int) -> Any:
        # Only the window the hit was counted in can give it back.
        if state is not None and now < state[1] and stamp >= state[1] - hit.window_ms:
            state[0] = max(state[0] - hit.cost, 0)
        return state

    @staticmethod
    def expires(state: list[int], hit: Hit) -> int:
        return state[1]


class MovingWindow:
    """At most ``amount`` units in any ``window`` ending now (a log of hits)."""

    name = "moving-window"
    tag = "mw"

    @staticmethod
    def _trim(log: deque[tuple[int, int]], now: int, window: int) -> int:
        while log and log[0][0] <= now - window:
            log.popleft()
        return sum(cost for _, cost in log)

    def check(self, state: Any, now: int, hit: Hit) -> Usage:
        amount, window, cost = hit.amount, hit.window_ms, hit.cost
        log: deque[tuple[int, int]] = state if state is not None else deque()
        used = self._trim(log, now, window)
        if used + cost <= amount:
            # Full restore happens when this request's own entry leaves the window.
            return Usage(True, amount - used - cost, window, 0, now)
        reset = log[-1][0] + window - now if log else 0
        if cost > amount:
            return Usage(False, amount - used, reset, None, now)
        needed = used + cost - amount
        freed = 0
        for stamp, hit_cost in log:
            freed += hit_cost
            if freed >= needed:
                return Usage(False, amount - used, reset, stamp + window - now, now)
        raise AssertionError("unreachable: the whole log frees enough")  # pragma: no cover

    def consume(self, state: Any, now: int, hit: Hit) -> deque[tuple[int, int]]:
        log: deque[tuple[int, int]] = state if state is not None else deque()
        self._trim(log, now, hit.window_ms)
        log.append((now, hit.cost))
        return log

    def refund(self, state: Any, now: int, hit: Hit, stamp: int) -> Any:
        if state is not None and (stamp, hit.cost) in state:
            state.remove((stamp, hit.cost))
        return state

    @staticmethod
    def expires(state: deque[tuple[int, int]], hit: Hit) -> int:
        return state[-1][0] + hit.window_ms if state else 0


class SlidingWindowCounter:
    """Two epoch-aligned fixed windows; the previous one counts in proportion to its overlap.

    With ``e`` ms elapsed in the current window of length ``W``, the weighted count is
    ``prev * (W - e) / W + curr``. Everything is compared multiplied by ``W`` so the
    arithmetic stays in integers.
    """

    name = "sliding-window-counter"
    tag = "sw"

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

    def check(self, state: Any, now: int, hit: Hit) -> Usage:
        amount, window, cost = hit.amount, hit.window_ms, hit.cost
        start, prev, curr = self.current(state, now, window)
        elapsed = now - start
        weighted = prev * (window - elapsed) + curr * window  # scaled by window
        room = amount * window - weighted  # scaled by window
        # Full restore: the current count stops weighing at the end of the next window.
        if curr + cost > 0:
            reset = start + 2 * window - now
        elif prev > 0:
            reset = start + window - now
        else:
            reset = 0
        if cost * window <= room:
            return Usage(True, (room - cost * window) // window, reset, 0, now)
        remaining = max(room, 0) // window
        if cost > amount:
            return Usage(False, remaining, reset, None, now)
        wait = self._wait(start, prev, curr, now, hit)
        return Usage(False, remaining, reset, wait, now)

    @staticmethod
    def _wait(start: int, prev: int, curr: int, now: int, hit: Hit) -> int:
        amount, window, cost = hit.amount, hit.window_ms, hit.cost
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

    def consume(self, state: Any, now: int, hit: Hit) -> list[int]:
        current = self.current(state, now, hit.window_ms)
        current[2] += hit.cost
        return current

    def refund(self, state: Any, now: int, hit: Hit, stamp: int) -> Any:
        if state is not None and state[0] == stamp - stamp % hit.window_ms:
            state[2] = max(state[2] - hit.cost, 0)
        return state

    @staticmethod
    def expires(state: list[int], hit: Hit) -> int:
        return state[0] + 2 * hit.window_ms


class GCRA:
    """The generic cell rate algorithm: a token bucket without a background refill.

    One unit is emitted every ``window / amount`` ms and at most ``burst`` units fit at once.
    The state is the theoretical arrival time ``tat``, kept exactly as ``tat_ms`` plus
    ``rem / amount`` ms. The backlog ``tat - now`` is measured in 1/amount ms, where one
    unit of cost is ``window`` long and the capacity is ``burst * window``.
    """

    name = "gcra"
    tag = "gc"

    @staticmethod
    def backlog(state: list[int] | None, now: int, amount: int) -> int:
        if state is None:
            return 0
        tat_ms, rem = state
        return max((tat_ms - now) * amount + rem, 0)

    def check(self, state: Any, now: int, hit: Hit) -> Usage:
        amount, window, cost = hit.amount, hit.window_ms, hit.cost
        burst = hit.burst or amount
        capacity = burst * window
        backlog = self.backlog(state, now, amount)
        after = backlog + cost * window
        if after <= capacity:
            return Usage(True, (capacity - after) // window, -(-after // amount), 0, now)
        remaining = (capacity - backlog) // window
        reset = -(-backlog // amount)
        if cost > burst:
            return Usage(False, remaining, reset, None, now)
        return Usage(False, remaining, reset, -(-(after - capacity) // amount), now)

    def consume(self, state: Any, now: int, hit: Hit) -> list[int]:
        after = self.backlog(state, now, hit.amount) + hit.cost * hit.window_ms
        return [now + after // hit.amount, after % hit.amount]

    def refund(self, state: Any, now: int, hit: Hit, stamp: int) -> Any:
        if state is None:
            return state
        left = max(self.backlog(state, now, hit.amount) - hit.cost * hit.window_ms, 0)
        return [now + left // hit.amount, left % hit.amount]

    @staticmethod
    def expires(state: list[int], hit: Hit) -> int:
        return state[0] + 1


class Concurrency:
    """At most ``amount`` requests in flight; each holds a slot named by its token.

    A slot that is never released (a crashed worker) lapses after ``window_ms``.
    """

    name = CONCURRENCY
    tag = "cc"

    @staticmethod
    def live(state: dict[str, int] | None, now: int) -> dict[str, int]:
        if state is None:
            return {}
        for token in [t for t, until in state.items() if until <= now]:
            del state[token]
        return state

    def check(self, state: Any, now: int, hit: Hit) -> Usage:
        in_flight = len(self.live(state, now))
        if in_flight + 1 <= hit.amount:
            return Usage(True, hit.amount - in_flight - 1, 0, 0, now)
        # When a slot frees is up to the requests in flight; ask again in a second.
        return Usage(False, hit.amount - in_flight, 0, 1000, now)

    def consume(self, state: Any, now: int, hit: Hit) -> dict[str, int]:
        slots = self.live(state, now)
        slots[hit.token] = now + hit.window_ms
        return slots

    def refund(self, state: Any, now: int, hit: Hit, stamp: int) -> Any:
        if state is not None:
            state.pop(hit.token, None)
        return state

    @staticmethod
    def expires(state: dict[str, int], hit: Hit) -> int:
        return max(state.values(), default=0)


STRATEGY_IMPLEMENTATIONS: dict[str, Strategy] = {
    s.name: s
    for s in (
        FixedWindow(),
        MovingWindow(),
        SlidingWindowCounter(),
        GCRA(),
        Concurrency(),
    )
}


def tag_of(strategy: str) -> str:
    """The tag a strategy's storage keys and script entries go by (the one table of them)."""
    tag = getattr(STRATEGY_IMPLEMENTATIONS.get(strategy), "tag", None)
    return tag if isinstance(tag, str) else strategy


def _plain_word(value: Any) -> TypeGuard[str]:
    return isinstance(value, str) and bool(value) and not any(ch.isspace() for ch in value)


def register_strategy(strategy: Strategy) -> None:
    """Make a strategy of your own available as ``Limiter(strategy=strategy.name)``.

    Its name (and its ``tag``, if it has one) must be a word without white space that no
    other strategy goes by: storage keys and the Redis script tell strategies apart by tag.
    """
    name = getattr(strategy, "name", None)
    if not _plain_word(name):
        raise ConfigurationError(
            f"a strategy needs a non-empty name without white space, got {name!r}"
        )
    for method in ("check", "consume", "refund", "expires"):
        if not callable(getattr(strategy, method, None)):
            raise ConfigurationError(f"strategy {name!r} has no {method}() method")
    if name in STRATEGIES or name == CONCURRENCY:
        raise ConfigurationError(f"strategy name {name!r} is taken by a built-in strategy")
    tag = getattr(strategy, "tag", name)
    if not _plain_word(tag):
        raise ConfigurationError(
            f"strategy {name!r} has tag {tag!r}: a tag is a non-empty word without white space"
        )
    taken = {tag_of(other): other for other in STRATEGY_IMPLEMENTATIONS if other != name}
    if tag in taken:
        raise ConfigurationError(
            f"strategy {name!r} has tag {tag!r}, which strategy {taken[tag]!r} goes by"
        )
    STRATEGY_IMPLEMENTATIONS[name] = strategy
