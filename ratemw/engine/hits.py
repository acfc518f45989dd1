"""Hits: what a request asks of the storage, one per quota, built from a plan and the
caller's identities.

A caller's identity (what a key function returned) never reaches storage as it is: it is cut
to ``MAX_KEY_LENGTH`` characters and hashed. Its digest is the Redis Cluster hash tag of the
storage key, so all of a caller's keys share one slot.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import uuid
from typing import Any

from ratemw._bounded import Bounded
from ratemw.engine.plans import CALENDAR_STRATEGY, Plan, PlannedPolicy
from ratemw.engine.settings import Settings
from ratemw.policy.limits import Quota
from ratemw.storage.base import CONCURRENCY, Batch, Hit

__all__ = ["MAX_KEY_LENGTH", "KeptHits", "KeyHasher", "make_hit", "policy_hits", "storage_key"]

MAX_KEY_LENGTH = 1024
CACHE_SIZE = 8192  # callers whose digests (and, on static plans, hits) are kept
_tokens = itertools.count()
_RUN = uuid.uuid4().hex[:8]  # with the process id, tells apart workers sharing one storage


class KeyHasher:
    """Caps and hashes caller identities so that raw input never reaches storage."""

    def __init__(self) -> None:
        self.cache: Bounded[str, str] = Bounded(CACHE_SIZE)

    def __call__(self, identity: str) -> str:
        cached = self.cache.get(identity)
        if cached is not None:
            return cached
        raw = identity[:MAX_KEY_LENGTH].encode("utf-8", "surrogatepass")
        digest = hashlib.blake2b(raw, digest_size=16).hexdigest()
        if len(identity) <= MAX_KEY_LENGTH:  # a flood of huge values must not be kept
            self.cache.put(identity, digest)
        return digest


def storage_key(settings: Settings, digest: str, tail: str) -> str:
    """The storage key of one quota for one hashed identity: ``prefix:{digest}`` + tail."""
    return settings.key_head + digest + tail


def make_hit(settings: Settings, key: str, quota: Quota, cost: int, enforce: bool) -> Hit:
    """The hit of one quota. A concurrency quota's hit names this request's slot."""
    if quota.concurrent:
        return Hit(key, quota.amount, settings.concurrency_timeout_ms, 1, CONCURRENCY, enforce,
                   0, f"{_RUN}.{os.getpid()}:{next(_tokens)}")  # fmt: skip
    if cost > quota.amount:
        # A cost over the quota's capacity can never fit, however large: the storage sees
        # the smallest such cost, and its numbers stay exact.
        cost = min(cost, max(quota.amount, quota.burst or 0) + 1)
    if quota.until_ms:  # a calendar quota, dated: its window ends with the period
        window_ms = max(quota.until_ms - settings.clock_ms(), 1)
        return Hit(key, quota.amount, window_ms, cost, CALENDAR_STRATEGY, enforce, 0)
    return Hit(key, quota.amount, quota.window_ms, cost, settings.strategy, enforce,
               quota.burst or 0)  # fmt: skip


def policy_hits(
    settings: Settings,
    digest: str,
    policies: tuple[PlannedPolicy, ...],
    cost: int,
    enforce: bool,
) -> list[Hit]:
    """One hit per policy, for one caller (by digest) at one cost."""
    head = settings.key_head + digest
    return [make_hit(settings, head + p.key_tail, p.quota, cost, enforce) for p in policies]


class KeptHits:
    """The hits of recent callers on static plans: a repeat caller's are not built again.

    A static plan's hits depend only on what the plan gives (its ``batch_id``) and the
    caller's identities, and hits never change once built, so the storage may keep what it
    derives from them too (the Redis storage keeps its packed script call). Bounded;
    identities too long to hash whole are not kept.
    """

    def __init__(self, settings: Settings, hasher: KeyHasher) -> None:
        self.settings = settings
        self.hasher = hasher
        self.kept: Bounded[tuple[Any, ...], Batch] = Bounded(CACHE_SIZE)

    def get(self, plan: Plan, identities: list[str]) -> Batch:
        """The caller's hits on a static plan: kept under ``(batch_id, *identities)``."""
        kept_key = (plan.batch_id, *identities)
        batch = self.kept.get(kept_key)
        if batch is not None:
            return batch
        batch = Batch()
        for entry, identity in zip(plan.entries, identities, strict=True):
            policies = entry.policies or ()
            cost: int = entry.group.cost  # type: ignore[assignment] # static: an int
            batch.extend(
                policy_hits(self.settings, self.hasher(identity), policies, cost, entry.enforce)
            )
        if all(len(identity) <= MAX_KEY_LENGTH for identity in identities):
            self.kept.put(kept_key, batch)
        return batch
