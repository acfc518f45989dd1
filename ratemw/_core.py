"""The decision path shared by the ASGI and WSGI adapters, free of I/O.

``evaluate`` is a generator: it runs the key, cost and limit callables, builds the storage
hits, and decides. Whenever it needs something it cannot do without I/O it yields, and the
adapter's driver answers: an awaitable returned by a user's async callable is awaited (ASGI) or
run to completion (WSGI); a ``StorageCall`` is answered by the async or the sync storage. The
adapters translate between their protocol and this core; they never decide.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ratemw._decision import Decision, decide, denial_headers, problem_body, rate_limit_headers
from ratemw._exceptions import RateLimitExceeded, StorageError
from ratemw._groups import LimitGroup
from ratemw._quota import Quota, parse_quotas
from ratemw.keys import client_ip
from ratemw.storage._base import Hit, Usage

if TYPE_CHECKING:
    from ratemw._limiter import Limiter

logger = logging.getLogger("ratemw")

MAX_KEY_LENGTH = 1024
_STRATEGY_TAGS = {"fixed-window": "fw", "moving-window": "mw", "sliding-window-counter": "sw"}
_HASH_CACHE_SIZE = 8192
FALLBACK_KEY = client_ip()


@dataclass(frozen=True, slots=True)
class Plan:
    """Which groups apply to one route, resolved once per path."""

    template: str
    groups: tuple[LimitGroup, ...]


@dataclass(frozen=True, slots=True)
class StorageCall:
    """The core asks its driver to run ``acquire(hits)`` on the storage."""

    hits: list[Hit]
    fallback: bool = False


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the adapter must do.

    - ``exceeded`` set: refuse with 429 (or the custom handler's response);
    - ``unavailable``: storage failed under ``failure_mode="deny"``: refuse with 503;
    - otherwise pass the request on, adding ``headers`` to the response.
    """

    headers: list[tuple[str, str]]
    decision: Decision | None = None
    exceeded: RateLimitExceeded | None = None
    unavailable: bool = False


PASS = Outcome(headers=[])

Step = Generator[Any, Any, Outcome]


class KeyHasher:
    """Caps and hashes caller identities so that raw input never reaches storage."""

    def __init__(self) -> None:
        self._cache: dict[str, str] = {}

    def __call__(self, identity: str) -> str:
        cached = self._cache.get(identity)
        if cached is not None:
            return cached
        raw = identity[:MAX_KEY_LENGTH].encode("utf-8", "surrogatepass")
        digest = hashlib.blake2b(raw, digest_size=16).hexdigest()
        if len(self._cache) >= _HASH_CACHE_SIZE:
            self._cache.clear()
        self._cache[identity] = digest
        return digest


def storage_key(limiter: Limiter, digest: str, bucket: str, quota: Quota) -> str:
    """The storage key of one quota for one (hashed) identity and bucket.

    The identity's digest is the Redis Cluster hash tag: all of a caller's keys share a slot.
    """
    tag = _STRATEGY_TAGS[limiter.strategy]
    return f"{limiter.key_prefix}:{{{digest}}}:{bucket}:{tag}:{quota.amount}/{quota.window}"


def evaluate(limiter: Limiter, plan: Plan, request: Any, method: str, path: str) -> Step:
    """Decide one request. A generator: see the module docstring for what it yields."""
    started = time.perf_counter() if limiter.metrics is not None else 0.0
    policies: list[tuple[str, Quota, int, bool]] = []
    hits: list[Hit] = []
    names: set[str] = set()
    strategy = limiter.strategy
    for group in plan.groups:
        if group.methods is not None and method not in group.methods:
            continue
        if group.exempt_when is not None:
            try:
                exempt = group.exempt_when(request)
                if inspect.isawaitable(exempt):
                    exempt = yield exempt
            except Exception:
                logger.exception("exempt_when %r raised; the limit applies", group.exempt_when)
                exempt = False
            if exempt:
                continue
        quotas = group.quotas
        if quotas is None:
            value = group.limit(request)  # type: ignore[operator]
            if inspect.isawaitable(value):
                value = yield value
            quotas = parse_quotas(value)
        key = group.key or limiter.key
        try:
            identity = key(request)
            if type(identity) is not str:
                if inspect.isawaitable(identity):
                    identity = yield identity
                identity = str(identity)
        except Exception:
            identity = _key_failed(limiter, key, request)
        cost = group.cost
        if not isinstance(cost, int):
            cost = cost(request)
            if inspect.isawaitable(cost):
                cost = yield cost
            cost = int(cost)
        enforce = not (limiter.shadow if group.shadow is None else group.shadow)
        bucket = group.storage_bucket(plan.template, method)
        digest = limiter.hash_key(identity)
        for quota in quotas:
            name = group.name_prefix + quota.name
            if name in names:
                name = f"{group.kind}-{name}"
                while name in names:
                    name += "-"
            names.add(name)
            policies.append((name, quota, cost, enforce))
            hits.append(
                Hit(
                    key=storage_key(limiter, digest, bucket, quota),
                    amount=quota.amount,
                    window_ms=quota.window_ms,
                    cost=cost,
                    strategy=strategy,
                    enforce=enforce,
                )
            )
    if not hits:
        return PASS
    result = yield StorageCall(hits)
    if isinstance(result, BaseException):
        outcome = yield from _storage_failed(limiter, request, hits, result)
        if not isinstance(outcome, list):
            return outcome
        result = outcome
    usages: list[Usage] = result
    decision = decide(policies, usages)
    if limiter.metrics is not None:
        limiter.metrics.observe(plan.template, decision, time.perf_counter() - started)
    if limiter.on_near_limit is not None:
        yield from _near_limit(limiter, request, decision)
    if decision.shadow_violated:
        yield from _shadow_breach(limiter, request, decision, method, path)
    now_s = limiter.clock_ms() // 1000
    if decision.allowed:
        headers: list[tuple[str, str]] = []
        for mode in limiter.header_modes:
            headers.extend(rate_limit_headers(decision, mode, now_s))
        return Outcome(headers=headers, decision=decision)
    body = problem_body(decision, method, path)
    exceeded = RateLimitExceeded(
        decision,
        method=method,
        path=path,
        headers=denial_headers(decision, limiter.header_modes, now_s),
        body=body,
    )
    logger.info("rate limit exceeded: %s", exceeded.detail)
    yield from call_hook(limiter.on_breach, request, exceeded)
    return Outcome(headers=[], decision=decision, exceeded=exceeded)


def _key_failed(limiter: Limiter, key: Any, request: Any) -> str:
    """A key function that raises must not let the caller escape: count by address."""
    logger.warning(
        "key function %r raised; counting the request by client address", key, exc_info=True
    )
    return "key-error:" + FALLBACK_KEY(request)


def _storage_failed(
    limiter: Limiter, request: Any, hits: list[Hit], error: BaseException
) -> Generator[Any, Any, Outcome | list[Usage]]:
    limiter.report_storage_error(error)
    if limiter.metrics is not None:
        limiter.metrics.storage_error()
    if not isinstance(error, StorageError):
        wrapped = StorageError(f"storage {limiter.storage_uri_redacted} failed: {error!r}")
        wrapped.__cause__ = error
        error = wrapped
    yield from call_hook(limiter.on_storage_error, request, error)
    if limiter.failure_mode == "deny":
        return Outcome(headers=[], unavailable=True)
    if limiter.failure_mode == "fallback":
        result = yield StorageCall(hits, fallback=True)
        if not isinstance(result, BaseException):
            return list(result)
    return PASS


def _near_limit(limiter: Limiter, request: Any, decision: Decision) -> Generator[Any, Any, None]:
    if not decision.allowed:
        return
    for policy in decision.policies:
        threshold = max(1, -(-policy.quota * limiter.near_limit_ratio_permille // 1000))
        used_after = policy.quota - policy.remaining
        if used_after - policy.cost < threshold <= used_after:
            yield from call_hook(limiter.on_near_limit, request, policy)


def _shadow_breach(
    limiter: Limiter, request: Any, decision: Decision, method: str, path: str
) -> Generator[Any, Any, None]:
    for policy in decision.shadow_violated:
        logger.info(
            "shadow limit exceeded (not enforced): %s on %s %s", policy.text, method, path
        )
    shadow = Decision(
        allowed=False,
        policies=decision.shadow_violated,
        retry_after=max((p.reset or 0) for p in decision.shadow_violated) or None,
    )
    now_s = limiter.clock_ms() // 1000
    exceeded = RateLimitExceeded(
        shadow,
        method=method,
        path=path,
        headers=denial_headers(shadow, limiter.header_modes, now_s),
        body=problem_body(shadow, method, path),
    )
    exceeded.shadow = True  # type: ignore[attr-defined]
    yield from call_hook(limiter.on_breach, request, exceeded)


def call_hook(hook: Any, *args: Any) -> Generator[Any, Any, None]:
    """Run a user hook; a failing hook is logged and never breaks the request."""
    if hook is None:
        return
    try:
        result = hook(*args)
        if inspect.isawaitable(result):
            yield result
    except Exception:
        logger.exception("ratemw hook %r raised; the request goes on", hook)
