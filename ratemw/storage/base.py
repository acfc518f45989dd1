"""The seam between the decision core and a storage backend.

A request turns into a batch of ``Hit``s, one per quota that applies to it. A storage answers a
batch in one atomic step: it checks every hit, consumes all of them only if every enforced hit
fits (all-or-nothing), and returns one ``Usage`` per hit with the numbers the headers and the
problem body need. Times are integer milliseconds of the storage's own clock, so that the
numbers are exact and agree between hosts that share a storage.

``Storage`` (used under WSGI) and ``AsyncStorage`` (under ASGI) are the protocols every backend
implements; ``ratemw.storage.memory`` and ``ratemw.storage.redis`` are the two there are.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "CONCURRENCY",
    "STRATEGIES",
    "AsyncStorage",
    "Batch",
    "Hit",
    "Storage",
    "Usage",
    "any_refused",
    "unconsumed",
]

STRATEGIES = ("fixed-window", "moving-window", "sliding-window-counter", "gcra")
CONCURRENCY = "concurrency"  # the strategy of "N concurrent" quotas, whatever the limiter's


@dataclass(slots=True)
class Hit:
    """One quota to check for one request.

    ``key`` is the full storage key (identity already hashed); ``enforce`` is false for a
    shadow limit, whose lack of room is reported but does not refuse the request. ``burst``
    is the GCRA capacity (0: equal to ``amount``); ``token`` names one request's slot of a
    concurrency quota, and ``window_ms`` is then how long a slot lives if never released.
    """

    key: str
    amount: int
    window_ms: int
    cost: int
    strategy: str
    enforce: bool = True
    burst: int = 0
    token: str = ""


class Batch(list[Hit]):
    """The hits of one caller on one route, built once and kept for its next requests.

    Hits never change once built, so a storage may keep what it derives from a batch (the
    Redis storage keeps the script call it sends) in ``wire``, and need check a batch's hits
    only once (``checked``): a repeat caller costs no re-encoding and no re-checking. Any
    other sequence of hits works the same, only without the keeping.
    """

    __slots__ = ("checked", "wire")

    def __init__(self, hits: Iterable[Hit] = ()) -> None:
        super().__init__(hits)
        self.wire: Any = None
        self.checked = False


@dataclass(slots=True)
class Usage:
    """What one hit found.

    - ``fits``: the quota had room for this request's cost;
    - ``remaining``: units left after this request (if it was admitted) or now (if not);
    - ``reset_ms``: milliseconds until the quota is fully restored;
    - ``wait_ms``: milliseconds until a request of this cost fits (0 when it fits now,
      ``None`` when the cost can never fit the quota);
    - ``stamp_ms``: the storage's time of the decision (what a refund needs to find it).
    """

    fits: bool
    remaining: int
    reset_ms: int
    wait_ms: int | None
    stamp_ms: int = 0


def unconsumed(usage: Usage, hit: Hit) -> Usage:
    """The usage of a hit that was checked but not consumed (a peek, a refused batch, a slot
    handed back): a hit that fitted keeps its units (a concurrency slot is one unit)."""
    if not usage.fits:
        return usage
    units = 1 if hit.strategy == CONCURRENCY else hit.cost
    return Usage(True, usage.remaining + units, usage.reset_ms, 0, usage.stamp_ms)


def any_refused(hits: Sequence[Hit], usages: Sequence[Usage]) -> bool:
    """Whether an enforced hit found no room (the request was refused)."""
    # Plain loops: this runs on every request, and nearly every time everything fitted.
    for usage in usages:
        if not usage.fits:
            break
    else:
        return False
    return any(not usage.fits and hit.enforce for usage, hit in zip(usages, hits, strict=True))


class Storage(Protocol):
    """A synchronous storage (used under WSGI)."""

    def acquire(self, hits: Sequence[Hit]) -> list[Usage]:
        """Check all hits and consume them all if every enforced hit fits."""
        ...

    def peek(self, hits: Sequence[Hit]) -> list[Usage]:
        """Report the hits' usage without consuming anything."""
        ...

    def refund(self, hits: Sequence[Hit], stamp_ms: int) -> None:
        """Give back what ``acquire`` took at ``stamp_ms`` (a response that does not count)."""
        ...

    def release(self, hits: Sequence[Hit]) -> None:
        """Free the concurrency slots named by the hits' tokens."""
        ...

    def check(self) -> None:
        """Connect and run one call that counts nothing; ``StorageError`` if it cannot."""
        ...

    def exists(self, keys: Sequence[str]) -> int:
        """How many of ``keys`` hold counts (0: nothing is counted under any of them)."""
        ...

    def clear(self, key: str) -> bool:
        """Forget one storage key; whether it held counts."""
        ...

    def reset(self) -> None:
        """Forget everything this storage holds for ratemw."""
        ...

    def close(self) -> None: ...


class AsyncStorage(Protocol):
    """An asynchronous storage (used under ASGI): ``Storage``'s methods, awaited."""

    async def acquire(self, hits: Sequence[Hit]) -> list[Usage]: ...

    async def peek(self, hits: Sequence[Hit]) -> list[Usage]: ...

    async def refund(self, hits: Sequence[Hit], stamp_ms: int) -> None: ...

    async def release(self, hits: Sequence[Hit]) -> None: ...

    async def check(self) -> None: ...

    async def exists(self, keys: Sequence[str]) -> int: ...

    async def clear(self, key: str) -> bool: ...

    async def reset(self) -> None: ...

    async def aclose(self) -> None: ...
