"""Plans: the limits of one route and method, compiled once so requests only fill in numbers.

For every quota that is known before the request (not returned by a callable), the plan holds
its policy name, the tail of its storage key and the head of its ``RateLimit`` entry; a plan
whose quotas are all known also holds its whole ``RateLimit-Policy`` value.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ratemw.policy.decision import sf_string
from ratemw.policy.groups import LimitGroup
from ratemw.policy.limits import Quota
from ratemw.keys import client_ip, header
from ratemw.storage._base import CONCURRENCY

if TYPE_CHECKING:
    from ratemw.limiter import Limiter

#: Plans are cached per request line (method, path, host). A part longer than this (a
#: caller's invention: real routes are short) is planned afresh each time instead, so a cache
#: entry never holds more than a few such parts of this size.
MAX_CACHED_PATH = 512
_MAX_FALLBACKS = 4  # how deep keys.header's fallbacks are looked into

# Plans whose callers get the same hits (same storage-key tails, quotas, costs) share one
# batch id, so a route's kept hits serve all its paths and hosts. Bounded: route
# configurations are few, and past the bound new ids are handed out afresh.
_batch_ids: dict[tuple[Any, ...], int] = {}
_next_batch_id = itertools.count(1)
_MAX_BATCH_IDS = 65536


def _batch_id(signature: tuple[Any, ...]) -> int:
    found = _batch_ids.get(signature)
    if found is None:
        if len(_batch_ids) >= _MAX_BATCH_IDS:
            _batch_ids.clear()
        found = _batch_ids[signature] = next(_next_batch_id)
    return found

STRATEGY_TAGS = {
    "fixed-window": "fw",
    "moving-window": "mw",
    "sliding-window-counter": "sw",
    "gcra": "gc",
    CONCURRENCY: "cc",
}


@dataclass(frozen=True, slots=True)
class Slot:
    """One known quota of a plan."""

    quota: Quota
    name: str
    key_tail: str  # the storage key after the caller's digest
    state_head: str  # '"name";r=' for the RateLimit header


@dataclass(frozen=True, slots=True)
class Entry:
    """One group as it applies to this route and method."""

    group: LimitGroup
    bucket: str
    slots: tuple[Slot, ...] | None  # None: quotas come from a callable per request


@dataclass(frozen=True, slots=True)
class Plan:
    """The compiled limits of one route and method.

    ``simple`` plans (every quota known, no ``exempt_when``, no computed cost, no concurrency
    quota, no ``deduct_when``, no shadow limit) have their ``RateLimit-Policy`` header in
    ``policy_field``. ``fast`` plans are simple plans of a limiter with nothing to report on
    an admitted request (no hook or metrics that see it, draft-10 headers or none): their
    callers' hits are kept between requests (``batch_id`` names the hits the plan gives, the
    same for plans that give the same) and an admitted request's headers come straight from
    the storage's numbers.
    ``instant`` plans are fast plans whose keys are all built in (``keys.client_ip``,
    ``keys.header``): they answer at once, so the drivers decide without the core's
    generator. ``needs_request``: a key, limit, cost or hook looks past ``request.scope``.
    """

    template: str
    entries: tuple[Entry, ...]
    names: frozenset[str] = frozenset()
    simple: bool = False
    fast: bool = False
    instant: bool = False
    policy_field: tuple[str, str] = ("RateLimit-Policy", "")  # the header, ready to send
    needs_request: bool = True
    state_heads: tuple[str, ...] = ()  # a simple plan's slots' RateLimit heads, in hit order
    used: tuple[Any, ...] = ()  # a fast plan's (entry, slots, cost, enforce), as evaluate uses
    # A fast plan's key functions, one per entry.
    keys: tuple[Any, ...] = field(default=(), compare=False, repr=False)
    batch_id: int = field(default=0, compare=False, repr=False)
    generation: int = field(default=0, compare=False, repr=False)  # the limiter's, when planned

    @property
    def groups(self) -> tuple[LimitGroup, ...]:
        return tuple(entry.group for entry in self.entries)


def cacheable(cache_key: tuple[object, ...]) -> bool:
    """Whether a plan cache may keep this key: none of its texts is over ``MAX_CACHED_PATH``.

    Called on a cache miss only: a hit costs nothing more.
    """
    return all(len(part) <= MAX_CACHED_PATH for part in cache_key if isinstance(part, str))


def quota_strategy(limiter: Limiter, quota: Quota) -> str:
    return CONCURRENCY if quota.concurrent else limiter.strategy


def key_tail(limiter: Limiter, bucket: str, quota: Quota) -> str:
    strategy = quota_strategy(limiter, quota)
    tag = STRATEGY_TAGS.get(strategy, strategy)
    return f"}}:{bucket}:{tag}:{quota.amount}/{quota.window}"


def storage_key(limiter: Limiter, digest: str, bucket: str, quota: Quota) -> str:
    """The storage key of one quota for one (hashed) identity and bucket.

    The identity's digest is the Redis Cluster hash tag: all of a caller's keys share a slot.
    """
    return f"{limiter.key_prefix}:{{{digest}" + key_tail(limiter, bucket, quota)


def unique_name(group: LimitGroup, quota: Quota, taken: set[str]) -> str:
    """The policy name of a quota, made unique among the names already taken."""
    name = group.name_prefix + quota.name
    if name in taken:
        name = f"{group.kind}-{name}"
        while name in taken:
            name += "-"
    taken.add(name)
    return name


def compile_plan(
    limiter: Limiter, template: str, groups: list[LimitGroup], method: str, generation: int
) -> Plan:
    entries: list[Entry] = []
    names: set[str] = set()
    policy_parts: list[str] = []
    simple = True
    needs_request = False
    for group in groups:
        if group.methods is not None and method not in group.methods:
            continue
        needs_request = needs_request or _needs_request(group, limiter)
        bucket = group.storage_bucket(template, method)
        if group.quotas is None:
            entries.append(Entry(group, bucket, None))
            simple = False
            continue
        slots = []
        for quota in group.quotas:
            name = unique_name(group, quota, names)
            head = sf_string(name) + ";r="
            slots.append(Slot(quota, name, key_tail(limiter, bucket, quota), head))
            policy_parts.append(f"{sf_string(name)};q={quota.amount};w={quota.window}")
            simple = simple and not quota.concurrent
        entries.append(Entry(group, bucket, tuple(slots)))
        simple = simple and group.exempt_when is None and group.deduct_when is None
        simple = simple and not group.shadow
        simple = simple and isinstance(group.cost, int)
    fast = simple and limiter.fast_reporting
    used = tuple((e, e.slots or (), e.group.cost, True) for e in entries) if fast else ()
    # What a caller's hits are made of, besides its identities (see _batch_id).
    signature = (limiter.key_head, limiter.strategy, *(
        (cost, *((slot.key_tail, slot.quota.window_ms, slot.quota.burst) for slot in slots))
        for _, slots, cost, _ in used
    ))
    instant = fast and all(_answers_at_once(entry.group.key or limiter.key) for entry in entries)
    return Plan(
        template=template,
        entries=tuple(entries),
        names=frozenset(names),
        simple=simple,
        fast=fast,
        instant=instant,
        policy_field=("RateLimit-Policy", ", ".join(policy_parts) if simple else ""),
        needs_request=needs_request or limiter.has_hooks,
        state_heads=tuple(
            slot.state_head for entry in entries for slot in entry.slots or ()
        ) if simple else (),
        used=used,
        keys=tuple(entry.group.key or limiter.key for entry in entries) if fast else (),
        batch_id=_batch_id(signature) if fast else 0,
        generation=generation,
    )


def _answers_at_once(key: Any) -> bool:
    """Whether a key function is a built-in one: it reads only the scope, and returns a
    string at once.

    ``keys.client_ip``, or ``keys.header`` whose fallback is one: not a subclass that
    overrides the call (it might read more, return something else, or an awaitable).
    """
    for _ in range(_MAX_FALLBACKS):
        call = getattr(type(key), "__call__", None)  # noqa: B004 - which call, not whether
        if call is client_ip.__call__:
            return True
        if call is not header.__call__:
            return False
        key = key.fallback
    return False


def _needs_request(group: LimitGroup, limiter: Limiter) -> bool:
    """Whether anything of the group's but the built-in key functions looks at the request."""
    key = group.key or limiter.key
    return (
        not _answers_at_once(key)
        or group.quotas is None
        or group.exempt_when is not None
        or not isinstance(group.cost, int)
    )
