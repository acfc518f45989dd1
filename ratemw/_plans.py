"""Plans: the limits of one route and method, compiled once so requests only fill in numbers.

For every quota that is known before the request (not returned by a callable), the plan holds
its policy name, the tail of its storage key and the head of its ``RateLimit`` entry; a plan
whose quotas are all known also holds its whole ``RateLimit-Policy`` value.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ratemw._decision import sf_string
from ratemw._groups import LimitGroup, is_async_callable
from ratemw._quota import Quota
from ratemw.storage._base import CONCURRENCY

if TYPE_CHECKING:
    from ratemw._limiter import Limiter

#: Plans are cached per request line (method, path, host). A part longer than this (a
#: caller's invention: real routes are short) is planned afresh each time instead, so a cache
#: entry never holds more than a few such parts of this size.
MAX_CACHED_PATH = 512

_serials = itertools.count(1)

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
    quota, no ``deduct_when``, no shadow limit) have their ``RateLimit-Policy`` value in
    ``policy_header``. ``fast`` plans are simple plans of a limiter with nothing to report on
    an admitted request (no hook or metrics that see it, draft-10 headers or none): their
    callers' hits are kept between requests (``serial`` names the plan in that cache) and an
    admitted request's headers come straight from the storage's numbers.
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
    policy_header: str = ""
    needs_request: bool = True
    state_heads: tuple[str, ...] = ()  # a simple plan's slots' RateLimit heads, in hit order
    used: tuple[Any, ...] = ()  # a fast plan's (entry, slots, cost, enforce), as evaluate uses
    serial: int = field(default_factory=_serials.__next__, compare=False, repr=False)

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
    limiter: Limiter, template: str, groups: list[LimitGroup], method: str
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
    instant = fast and all(_answers_at_once(entry.group.key or limiter.key) for entry in entries)
    return Plan(
        template=template,
        entries=tuple(entries),
        names=frozenset(names),
        simple=simple,
        fast=fast,
        instant=instant,
        policy_header=", ".join(policy_parts) if simple else "",
        needs_request=needs_request or limiter.has_hooks,
        state_heads=tuple(
            slot.state_head for entry in entries for slot in entry.slots or ()
        ) if simple else (),
        used=tuple((entry, entry.slots, entry.group.cost, True) for entry in entries)
        if fast else (),
    )


def _answers_at_once(key: Any) -> bool:
    """Whether a key function is a built-in one: sync, reading only the scope, never awaited."""
    return bool(getattr(key, "scope_only", False)) and not is_async_callable(key)


def _needs_request(group: LimitGroup, limiter: Limiter) -> bool:
    """Whether anything of the group's but the built-in key functions looks at the request."""
    key = group.key or limiter.key
    return (
        not getattr(key, "scope_only", False)
        or group.quotas is None
        or group.exempt_when is not None
        or not isinstance(group.cost, int)
    )
