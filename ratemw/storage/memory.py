"""The embedded in-memory storage (``memory://``).

One process, no server. Bounded: at most ``max_keys`` keys are held; expired keys are swept
as new ones arrive, and when the table is still full the least recently used key goes first.
A caller who keeps hammering a limit keeps its key fresh, so a flood of new keys evicts idle
keys long before it can evict an active one.

Hits are checked before anything is read or written: a cost that is not a whole number of at
least 1, an amount below 1, a window of no time, an unknown strategy raise
``StorageCallError`` and leave the table as it was (the limiter checks them too; this is the
second line).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from ratemw._clock import wall_clock_ms
from ratemw.errors import StorageCallError
from ratemw.storage.base import Batch, Hit, Usage, unconsumed
from ratemw.storage.strategies import STRATEGY_IMPLEMENTATIONS

__all__ = ["DEFAULT_MAX_KEYS", "AsyncMemoryStorage", "MemoryStorage", "wall_clock_ms"]

DEFAULT_MAX_KEYS = 100_000
_SWEEP_BATCH = 64


def _whole(value: Any, least: int) -> bool:
    return type(value) is int and value >= least


def refuse_invalid(hits: Sequence[Hit]) -> None:
    """Raise ``StorageCallError`` unless every hit can be counted (a kept batch, once)."""
    if type(hits) is Batch:
        if hits.checked:
            return
        refuse_invalid(list(hits))
        hits.checked = True
        return
    for hit in hits:
        if not (
            _whole(hit.cost, 1)
            and _whole(hit.amount, 1)
            and _whole(hit.window_ms, 1)
            and _whole(hit.burst, 0)
            and hit.strategy in STRATEGY_IMPLEMENTATIONS
        ):
            raise StorageCallError(
                f"memory storage refused the hit {hit.key!r}: cost {hit.cost!r} and amount "
                f"{hit.amount!r} must be whole numbers of at least 1, window_ms "
                f"{hit.window_ms!r} at least 1 ms, burst {hit.burst!r} at least 0, and "
                f"strategy {hit.strategy!r} one of {sorted(STRATEGY_IMPLEMENTATIONS)}"
            )


class MemoryStorage:
    """Thread-safe in-memory storage serving both WSGI (sync) and ASGI (through its async twin).

    Args:
        max_keys: how many keys at most are held at once.
        clock: a callable returning the current time in integer milliseconds
            (``ratemw.testing.FakeClock`` gives tests a clock they control).
    """

    def __init__(
        self, *, max_keys: int = DEFAULT_MAX_KEYS, clock: Callable[[], int] = wall_clock_ms
    ) -> None:
        self.max_keys = max_keys
        self.clock = clock
        self._data: OrderedDict[str, tuple[Any, int]] = OrderedDict()  # key -> (state, expiry)
        self._lock = threading.Lock()
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._data)

    def _state(self, key: str, now: int) -> Any:
        entry = self._data.get(key)
        if entry is None:
            return None
        state, expiry = entry
        if expiry <= now:
            del self._data[key]
            return None
        # A refused caller still counts as recent: it must not be the next evicted.
        self._data.move_to_end(key)
        return state

    def _check(self, hits: Sequence[Hit], now: int) -> tuple[list[Any], list[Usage]]:
        states = []
        usages = []
        for hit in hits:
            state = self._state(hit.key, now)
            states.append(state)
            usages.append(STRATEGY_IMPLEMENTATIONS[hit.strategy].check(state, now, hit))
        return states, usages

    def acquire(self, hits: Sequence[Hit]) -> list[Usage]:
        refuse_invalid(hits)
        with self._lock:
            now = self.clock()
            if len(hits) == 1:  # the common case, without the bookkeeping of a batch
                hit = hits[0]
                state = self._state(hit.key, now)
                strategy = STRATEGY_IMPLEMENTATIONS[hit.strategy]
                usage = strategy.check(state, now, hit)
                if usage.fits:
                    state = strategy.consume(state, now, hit)
                    data = self._data
                    data[hit.key] = (state, strategy.expires(state, hit))
                    if len(data) > self.max_keys:
                        self._make_room(now)
                return [usage]
            states = []
            usages = []
            admit = True
            for hit in hits:
                state = self._state(hit.key, now)
                usage = STRATEGY_IMPLEMENTATIONS[hit.strategy].check(state, now, hit)
                if not usage.fits and hit.enforce:
                    admit = False
                states.append(state)
                usages.append(usage)
            if not admit:
                # Nothing is consumed: report the numbers as they stand.
                return [unconsumed(u, h) for u, h in zip(usages, hits, strict=True)]
            # A key named by several hits (two limits on one counter) counts the request once:
            # by the first of its hits that fits (as acquire.lua does).
            counted: set[str] = set()
            for hit, state, usage in zip(hits, states, usages, strict=True):
                if usage.fits and hit.key not in counted:
                    counted.add(hit.key)
                    self._consume(hit, state, now)
            return usages

    def _consume(self, hit: Hit, state: Any, now: int) -> None:
        strategy = STRATEGY_IMPLEMENTATIONS[hit.strategy]
        state = strategy.consume(state, now, hit)
        data = self._data
        # A new key lands at the end; a known one was moved there when it was read.
        data[hit.key] = (state, strategy.expires(state, hit))
        if len(data) > self.max_keys:
            self._make_room(now)

    def peek(self, hits: Sequence[Hit]) -> list[Usage]:
        refuse_invalid(hits)
        with self._lock:
            _, usages = self._check(hits, self.clock())
            return [unconsumed(u, h) for u, h in zip(usages, hits, strict=True)]

    def refund(self, hits: Sequence[Hit], stamp_ms: int) -> None:
        refuse_invalid(hits)
        with self._lock:
            now = self.clock()
            handed: set[str] = set()  # a key is handed back once, by its first hit
            for hit in hits:
                if hit.key in handed:
                    continue
                handed.add(hit.key)
                state = self._state(hit.key, now)
                if state is not None:
                    strategy = STRATEGY_IMPLEMENTATIONS[hit.strategy]
                    state = strategy.refund(state, now, hit, stamp_ms)
                    self._data[hit.key] = (state, strategy.expires(state, hit))

    def release(self, hits: Sequence[Hit]) -> None:
        self.refund(hits, 0)

    def _make_room(self, now: int) -> None:
        data = self._data
        # Least recently used keys sit at the front; most of them have expired.
        for _ in range(min(_SWEEP_BATCH, len(data))):
            key, (_, expiry) = next(iter(data.items()))
            if expiry > now:
                break
            del data[key]
        while len(data) > self.max_keys:
            data.popitem(last=False)
            self.evictions += 1

    def check(self) -> None:
        """Nothing to connect to: always ready (the twin of ``RedisStorage.check``)."""

    def exists(self, keys: Sequence[str]) -> int:
        """How many of ``keys`` hold counts that still count (expired ones do not)."""
        with self._lock:
            now = self.clock()
            return sum(1 for key in keys if self._state(key, now) is not None)

    def clear(self, key: str) -> bool:
        """Forget one key; whether it held counts that still counted."""
        with self._lock:
            entry = self._data.pop(key, None)
            return entry is not None and entry[1] > self.clock()

    def reset(self) -> None:
        """Forget every key."""
        with self._lock:
            self._data.clear()

    def close(self) -> None:
        pass


class AsyncMemoryStorage:
    """The async face of a ``MemoryStorage``; both faces share one table."""

    def __init__(self, sync: MemoryStorage) -> None:
        self.sync = sync

    async def acquire(self, hits: Sequence[Hit]) -> list[Usage]:
        return self.sync.acquire(hits)

    async def peek(self, hits: Sequence[Hit]) -> list[Usage]:
        return self.sync.peek(hits)

    async def check(self) -> None:
        self.sync.check()

    async def refund(self, hits: Sequence[Hit], stamp_ms: int) -> None:
        self.sync.refund(hits, stamp_ms)

    async def release(self, hits: Sequence[Hit]) -> None:
        self.sync.release(hits)

    async def exists(self, keys: Sequence[str]) -> int:
        return self.sync.exists(keys)

    async def clear(self, key: str) -> bool:
        return self.sync.clear(key)

    async def reset(self) -> None:
        self.sync.reset()

    async def aclose(self) -> None:
        pass
