"""The one bounded cache: every map ratemw fills from requests is a ``Bounded``.

Callers can invent values without end (paths, hosts, header names, identities), so a map
keyed by them must not grow without end either. A ``Bounded`` forgets everything when it is
full and a new key arrives: the cheapest policy that keeps memory bounded, and a fine one for
caches whose entries are cheap to make again (a plan, a hash, a parsed address). A flood of
made-up keys then costs a rebuild of the few real ones, never memory.
"""

from __future__ import annotations

from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Bounded(dict[K, V], Generic[K, V]):
    """A dict of at most ``size`` entries: ``put`` clears it when it is full.

    Reads are a plain dict's (``get``, ``[]``), so a cache hit costs nothing more.

    Example::

        hashes: Bounded[str, str] = Bounded(8192)
        digest = hashes.get(identity) or hashes.put(identity, hash_of(identity))
    """

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def put(self, key: K, value: V) -> V:
        """Keep ``value`` under ``key`` (forgetting everything first if full); returns it."""
        if len(self) >= self.size and key not in self:
            self.clear()
        self[key] = value
        return value
