"""The decision path shared by the ASGI and WSGI adapters, free of I/O.

``evaluate`` and ``settle`` are generators: they run the key, cost and limit callables, build
the storage hits, and decide. Whenever they need something they cannot do without I/O they
yield, and the adapter's driver answers: an awaitable returned by a user's async callable is
awaited (ASGI) or run to completion (WSGI); a ``StorageCall`` is answered by the async or the
sync storage. The adapters translate between their protocol and this core; they never decide.
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import logging
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ratemw.policy.decision import Decision, decide, rate_limit_headers, sf_string
from ratemw.errors import ConfigurationError, StorageCallError, StorageError
from ratemw.policy.groups import (
    TAKES_KEY,
    TAKES_NOTHING,
    LimitGroup,
    valid_cost,
    valid_identity,
    valid_limit,
)
from ratemw.engine.plans import Entry, Plan, Slot, key_tail, storage_key, unique_name
from ratemw.policy.limits import Quota, checked_quotas
from ratemw._redact import describe_error
from ratemw.engine.reporting import (
    COST,
    DEDUCT,
    EXEMPT,
    FILTER,
    KEY,
    LIMIT,
    MESSAGE,
    STORAGE_CALL,
    Role,
    call_hook,
    exceeded_for,
    near_limit,
    shadow_breach,
)
from ratemw.keys import UNKNOWN_CLIENT, client_ip
from ratemw.storage._base import CONCURRENCY, Batch, Hit, Usage

if TYPE_CHECKING:
    from ratemw.errors import RateLimitExceeded
    from ratemw.limiter import Limiter

__all__ = [
    "Outcome",
    "Plan",
    "ResponseInfo",
    "StorageCall",
    "conclude",
    "evaluate",
    "fast_outcome",
    "instant_hits",
    "settle",
    "storage_key",
]

logger = logging.getLogger("ratemw")

MAX_KEY_LENGTH = 1024
_HASH_CACHE_SIZE = 8192
FALLBACK_KEY = client_ip()
_MAX_FALLBACKS = 4  # how deep key functions' ``fallback`` chains are looked into
_tokens = itertools.count()


@dataclass(slots=True)
class StorageCall:
    """The core asks its driver to run ``op`` (``acquire``, ``refund`` or ``release``)."""

    hits: list[Hit]
    op: str = "acquire"
    stamp: int = 0
    fallback: bool = False


@dataclass(frozen=True, slots=True)
class ResponseInfo:
    """What ``deduct_when`` callables learn of the response: its status and headers."""

    status_code: int
    headers: list[tuple[str, str]] = field(default_factory=list)


class Outcome:
    """What the adapter must do.

    - ``exceeded`` set: refuse with 429 (or the custom handler's response);
    - ``unavailable``: storage failed under ``failure_mode="deny"``: refuse with 503;
    - otherwise pass the request on, adding ``headers`` to the response; when
      ``needs_settling``, run ``settle`` once the response is over.

    A plain class with class-level defaults: an admitted request, the common case, sets one
    attribute.
    """

    decision: Decision | None = None
    exceeded: RateLimitExceeded | None = None
    unavailable: bool = False
    release: list[Hit] = []  # noqa: RUF012 - never mutated; instances set their own
    refundable: list[tuple[Callable[[ResponseInfo], Any], list[Hit]]] = []  # noqa: RUF012
    stamp: int = 0
    fallback: bool = False

    needs_settling = False

    def __init__(self, headers: list[tuple[str, str]], **details: Any) -> None:
        self.headers = headers
        if details:
            self.__dict__.update(details)
            self.needs_settling = bool(self.release or self.refundable)


PASS = Outcome(headers=[])
_new = object.__new__

Step = Generator[Any, Any, Outcome]
# What each of a request's limit groups came to: (entry, slots, cost, enforce).
Used = Sequence[tuple[Entry, tuple[Slot, ...], int, bool]]


class KeyHasher:
    """Caps and hashes caller identities so that raw input never reaches storage."""

    def __init__(self) -> None:
        self.cache: dict[str, str] = {}

    def __call__(self, identity: str) -> str:
        cached = self.cache.get(identity)
        if cached is not None:
            return cached
        raw = identity[:MAX_KEY_LENGTH].encode("utf-8", "surrogatepass")
        digest = hashlib.blake2b(raw, digest_size=16).hexdigest()
        if len(identity) <= MAX_KEY_LENGTH:  # a flood of huge values must not be kept
            if len(self.cache) >= _HASH_CACHE_SIZE:
                self.cache.clear()
            self.cache[identity] = digest
        return digest


class KeptBatches:
    """The hits of recent callers on fast plans: a repeat caller's are not built again.

    A batch depends only on the plan's ``batch_id`` (what hits it gives) and the caller's
    identities; hits never change once built. Bounded like the hash cache; identities too
    long to hash whole are not kept. Cleared when a setting hits depend on changes.
    """

    def __init__(self, size: int = _HASH_CACHE_SIZE) -> None:
        self.size = size
        self.kept: dict[tuple[Any, ...], Batch] = {}

    def get(self, limiter: Limiter, plan: Plan, identities: list[str]) -> Batch:
        """The caller's batch: kept under ``(plan.batch_id, *identities)``, built if not."""
        cache_key = (plan.batch_id, *identities)
        batch = self.kept.get(cache_key)
        if batch is not None:
            return batch
        batch = Batch()
        prefix = limiter.key_head
        for (_, slots, cost, enforce), identity in zip(plan.used, identities, strict=True):
            digest = limiter.hash_key(identity)
            batch.extend(
                _hit(limiter, prefix + digest + slot.key_tail, slot.quota, cost, enforce)
                for slot in slots
            )
        if all(len(identity) <= MAX_KEY_LENGTH for identity in identities):
            if len(self.kept) >= self.size:
                self.kept.clear()
            self.kept[cache_key] = batch
            if plan.generation != limiter.plan_generation:  # settings changed: not kept
                self.kept.pop(cache_key, None)
        return batch


def _hit(limiter: Limiter, key: str, quota: Quota, cost: int, enforce: bool) -> Hit:
    if quota.concurrent:
        return Hit(key, quota.amount, limiter.concurrency_timeout_ms, 1, CONCURRENCY, enforce,
                   0, f"{limiter.instance_id}:{next(_tokens)}")
    if cost > quota.amount:
        # A cost over the quota's capacity can never fit, however large: the storage sees
        # the smallest such cost, and its numbers stay exact.
        cost = min(cost, max(quota.amount, quota.burst or 0) + 1)
    return Hit(key, quota.amount, quota.window_ms, cost, limiter.strategy, enforce,
               quota.burst or 0)


_FAILED: Any = object()  # what _ask answers for a callable that raised or returned garbage


def _valid_bool(value: Any) -> Any:
    return value if isinstance(value, bool) else None


def _ask(
    limiter: Limiter, role: Role, fn: Any, args: tuple[Any, ...], check: Callable[[Any], Any]
) -> Generator[Any, Any, Any]:
    """Call a user callable (sync or async): what ``check`` makes of its result, or
    ``_FAILED`` when it raised or returned something ``check`` refuses (``None``).

    The failure is logged once per incident; the caller applies the callable's rule.
    """
    try:
        value = fn(*args)
        if inspect.isawaitable(value):
            value = yield value
    except Exception as error:
        limiter.failures(role, fn, error)
        return _FAILED
    checked = check(value)
    if checked is None:
        limiter.failures(role, fn, None, value)
        return _FAILED
    return checked


def evaluate(limiter: Limiter, plan: Plan, request: Any, method: str, path: str) -> Step:
    """Decide one request. A generator: see the module docstring for what it yields."""
    started = time.perf_counter() if limiter.metrics is not None else 0.0
    hits: list[Hit]
    used: Used
    refundable: list[tuple[Callable[[ResponseInfo], Any], list[Hit]]]
    if plan.fast:  # every quota known: the caller's hits are kept
        identities: list[str] = []
        for entry in plan.entries:
            identities.append((yield from _identity(limiter, entry.group.key, request)))
        hits = limiter.batches.get(limiter, plan, identities)
        used, refundable = plan.used, []
    else:
        for request_filter in limiter.request_filters:  # a fast plan's limiter has none
            if (yield from _ask(limiter, FILTER, request_filter, (request,), _valid_bool)) is True:
                return PASS
        collected = yield from _collect(limiter, plan, request)
        hits, used, refundable = collected
        if not hits:
            return PASS
    result = yield StorageCall(hits)
    if plan.fast:
        outcome = fast_outcome(limiter, plan, result)
        if outcome is not None:
            return outcome
    return (yield from conclude(
        limiter, plan, request, method, path, hits, used, refundable, result, started
    ))


def instant_hits(limiter: Limiter, plan: Plan, request: Any) -> Batch:
    """The hits of a request on an ``instant`` plan, whose keys all answer at once.

    With ``fast_outcome`` and ``conclude``, what ``evaluate`` does for such a plan, without
    a generator to drive: the drivers' instant lane (``decide_request``).
    """
    identities: list[str] = []
    for key in plan.keys:
        try:
            identity = key(request)
        except Exception as error:
            identity = _key_failed(limiter, key, request, error)
        else:
            if type(identity) is not str or not identity or identity.isspace():
                identity = _key_failed(limiter, key, request, None, identity)
        identities.append(identity)
    return limiter.batches.get(limiter, plan, identities)


def fast_outcome(limiter: Limiter, plan: Plan, result: Any) -> Outcome | None:
    """A fast plan's admitted request, its headers straight from the storage's numbers.

    ``None`` when the storage failed or something did not fit: ``conclude`` decides.
    Same numbers as ``decide`` + ``rate_limit_headers``: remaining, and the reset rounded up.
    """
    if type(result) is not list:
        return None
    if not limiter.header_modes:
        for usage in result:
            if not usage.fits:
                return None
        return PASS
    state = ""
    for head, usage in zip(plan.state_heads, result):  # noqa: B905 - one usage per slot
        if not usage.fits:
            return None
        remaining, reset = usage.remaining, usage.reset_ms
        seconds = -(-reset // 1000) if reset > 0 else 0  # rounded up
        item = f"{head}{remaining if remaining > 0 else 0};t={seconds}"
        state = f"{state}, {item}" if state else item  # one limit, nearly always: no join
    # Built without __init__: this runs for nearly every request.
    outcome: Outcome = _new(Outcome)
    outcome.headers = [plan.policy_field, ("RateLimit", state)]
    return outcome


def conclude(
    limiter: Limiter,
    plan: Plan,
    request: Any,
    method: str,
    path: str,
    hits: list[Hit],
    used: Used,
    refundable: list[tuple[Callable[[ResponseInfo], Any], list[Hit]]],
    result: Any,
    started: float = 0.0,
) -> Step:
    """The decision once the storage answered ``hits`` with ``result`` (usages, or the error).

    Applies the failure mode, decides, reports (metrics, hooks, the log line) and builds the
    outcome. A generator, like ``evaluate``.
    """
    fallback = False
    if isinstance(result, BaseException):
        # A shadow limit refuses nothing, storage or not: only enforced limits choose.
        mode = _failure_mode(limiter, [entry.group for entry, _, _, enforce in used if enforce])
        failed = yield from _storage_failed(limiter, request, hits, result, mode)
        if not isinstance(failed, list):
            return failed
        result, fallback = failed, True
        if plan.fast:
            outcome = fast_outcome(limiter, plan, result)
            if outcome is not None:
                return outcome
    usages: list[Usage] = result
    policies = [
        (slot.name, slot.quota, cost, enforce)
        for _, slots, cost, enforce in used
        for slot in slots
    ]
    decision = decide(policies, usages)
    if limiter.metrics is not None:
        limiter.metrics.observe(plan.template, decision, time.perf_counter() - started)
    if limiter.on_near_limit is not None:
        yield from near_limit(limiter, request, decision)
    if decision.shadow_violated:
        yield from shadow_breach(limiter, request, decision, method, path)
    if decision.allowed:
        now_s = -(-limiter.clock_ms() // 1000)  # rounded up: an epoch reset is never early
        headers: list[tuple[str, str]] = []
        for mode in limiter.header_modes:
            headers.extend(rate_limit_headers(decision, mode, now_s))
        taken = {id(h) for h, u in zip(hits, usages, strict=True) if u.fits}
        return Outcome(
            headers=headers,
            decision=decision,
            release=[h for h in hits if id(h) in taken and h.strategy == CONCURRENCY],
            refundable=[
                (when, [h for h in group if id(h) in taken and h.strategy != CONCURRENCY])
                for when, group in refundable
            ],
            stamp=usages[0].stamp_ms,
            fallback=fallback,
        )
    detail = yield from _custom_detail(limiter, request, decision, used)
    exceeded = exceeded_for(limiter, decision, method, path, detail)
    logger.info(
        "rate limit exceeded: %s",
        exceeded.detail,
        extra={
            "ratemw": {
                "event": "rate_limit_exceeded",
                "route": plan.template,
                "method": method,
                "policies": [p.name for p in exceeded.violated],
                "retry_after": exceeded.retry_after,
            }
        },
    )
    yield from call_hook(limiter.failures, limiter.on_breach, request, exceeded)
    return Outcome(headers=[], decision=decision, exceeded=exceeded)


Collected = tuple[
    list[Hit],
    list[tuple[Entry, tuple[Slot, ...], int, bool]],
    list[tuple[Callable[[ResponseInfo], Any], list[Hit]]],
]


def _collect(limiter: Limiter, plan: Plan, request: Any) -> Generator[Any, Any, Collected]:
    """The hits of a request on any plan: exemptions, quotas, keys and costs worked out."""
    hits: list[Hit] = []
    used: list[tuple[Entry, tuple[Slot, ...], int, bool]] = []
    refundable: list[tuple[Callable[[ResponseInfo], Any], list[Hit]]] = []
    names: set[str] | None = None
    prefix = limiter.key_head
    hashes = limiter.hash_key.cache
    for entry in plan.entries:
        group = entry.group
        if group.exempt_when is not None:
            exempt = yield from _ask(limiter, EXEMPT, group.exempt_when, (request,), _valid_bool)
            if exempt is True:  # a failing exempt_when is not exempt
                continue
        identity = yield from _identity(limiter, group.key, request)
        slots = entry.slots
        if slots is None:
            if names is None:
                names = set(plan.names)
            quotas = yield from _limit_quotas(limiter, group, request, identity)
            slots = dynamic_slots(limiter, entry, quotas, names)
        cost = group.cost
        if type(cost) is not int:
            cost = yield from _ask(limiter, COST, cost, (request,), valid_cost)
            if cost is _FAILED:
                cost = 1
        enforce = not (limiter.shadow if group.shadow is None else group.shadow)
        digest = hashes.get(identity) or limiter.hash_key(identity)
        group_hits = [
            _hit(limiter, prefix + digest + slot.key_tail, slot.quota, cost, enforce)
            for slot in slots
        ]
        hits.extend(group_hits)
        used.append((entry, slots, cost, enforce))
        if group.deduct_when is not None:
            refundable.append((group.deduct_when, group_hits))
    return hits, used, refundable


def _limit_quotas(
    limiter: Limiter, group: LimitGroup, request: Any, identity: str
) -> Generator[Any, Any, tuple[Quota, ...]]:
    """The quotas a limit callable gives this request; its fallback's when it fails."""
    takes = group.limit_takes
    args = () if takes == TAKES_NOTHING else (identity,) if takes == TAKES_KEY else (request,)
    strategy = limiter.strategy

    def check(value: Any) -> Any:
        text = valid_limit(value)
        if text is None:
            return None
        try:
            return checked_quotas(text, strategy)
        except ConfigurationError:
            return None

    quotas = yield from _ask(limiter, LIMIT, group.limit, args, check)
    if quotas is _FAILED:
        return group.fallback_quotas or limiter.fallback_quotas
    return quotas  # type: ignore[no-any-return]


def _custom_detail(
    limiter: Limiter, request: Any, decision: Decision, used: Used
) -> Generator[Any, Any, str | None]:
    """The ``error_message`` of the limit that refused the request, if it has one."""
    binding = decision.binding
    if binding is None:
        return None
    for entry, slots, _, _ in used:
        if any(slot.name == binding.name for slot in slots):
            message = entry.group.error_message
            if message is None or isinstance(message, str):
                return message
            found = yield from _ask(
                limiter, MESSAGE, message, (request,), lambda v: v if isinstance(v, str) else None
            )
            return None if found is _FAILED else found
    return None


def dynamic_slots(
    limiter: Limiter, entry: Entry, quotas: tuple[Quota, ...], names: set[str]
) -> tuple[Slot, ...]:
    """Slots for quotas a callable returned for this request."""
    return tuple(
        Slot(quota, name, key_tail(limiter, entry.bucket, quota), sf_string(name) + ";r=")
        for quota in quotas
        for name in (unique_name(entry.group, quota, names),)
    )


def settle(limiter: Limiter, outcome: Outcome, response: ResponseInfo) -> Step:
    """After the response: free concurrency slots, refund what should not count."""
    if outcome.release:
        yield StorageCall(outcome.release, op="release", fallback=outcome.fallback)
    for deduct_when, hits in outcome.refundable:
        keep = yield from _ask(limiter, DEDUCT, deduct_when, (response,), _valid_bool)
        if keep is False and hits:  # a failing deduct_when keeps the count
            yield StorageCall(hits, op="refund", stamp=outcome.stamp, fallback=outcome.fallback)
    return PASS


def _identity(limiter: Limiter, key: Any, request: Any) -> Generator[Any, Any, str]:
    """Who the request counts as, by the group's key (or the limiter's)."""
    key = key or limiter.key
    try:
        identity = key(request)
        if type(identity) is str and identity and not identity.isspace():
            return identity  # nearly always
        if inspect.isawaitable(identity):
            identity = yield identity
    except Exception as error:
        return _key_failed(limiter, key, request, error)
    checked = valid_identity(identity)
    if checked is None:
        return _key_failed(limiter, key, request, None, identity)
    return checked


def _key_failed(
    limiter: Limiter, key: Any, request: Any, error: Exception | None, value: Any = None
) -> str:
    """A key function that raises (or names nobody: ``None``, ``""``) must not let the caller
    escape, nor put everyone in one bucket: count by address.

    The identity is exactly what ``keys.client_ip`` gives with the configuration in use (see
    ``failure_key``), so the request shares its bucket with the address's own requests (the
    key function's fallback, ``keys.header`` without its header): making the key fail earns
    a caller no quota that leaving its credentials out would not. Logged once per incident.
    """
    limiter.failures(KEY, key, error, value)
    for by_address in (failure_key(limiter, key), FALLBACK_KEY):
        try:
            identity = by_address(request)
        except Exception:  # a client_ip of the app's that fails too: the peer address
            continue
        if type(identity) is str and identity:
            return identity
    return UNKNOWN_CLIENT  # no usable client address at all: the shared bucket


def failure_key(limiter: Limiter, key: Any) -> client_ip:
    """The ``keys.client_ip`` that counts requests whose key function ``key`` raised.

    The first ``client_ip`` found in the failing key's ``fallback`` chain (``keys.header``,
    ``user_or_ip``), then in the limiter key's (or the limiter key itself): its trusted
    proxies and IPv6 prefix apply. Without one, ``keys.client_ip()``: no proxy trusted.
    """
    for candidate in (key, limiter.key):
        for _ in range(_MAX_FALLBACKS):
            if isinstance(candidate, client_ip):
                return candidate
            candidate = getattr(candidate, "fallback", None)
            if candidate is None:
                break
    return FALLBACK_KEY


_SEVERITY = {"allow": 0, "fallback": 1, "deny": 2}


def _failure_mode(limiter: Limiter, groups: list[LimitGroup]) -> str:
    """The strictest failure mode among the request's limits (each defaults to the limiter's)."""
    modes = {group.failure_mode or limiter.failure_mode for group in groups}
    return max(modes, key=_SEVERITY.__getitem__) if modes else "allow"


def _storage_failed(
    limiter: Limiter, request: Any, hits: list[Hit], error: BaseException, mode: str
) -> Generator[Any, Any, Outcome | list[Usage]]:
    if limiter.metrics is not None:
        limiter.metrics.storage_error()
    if isinstance(error, StorageCallError):
        # A defect, not an outage: the breaker did not count it; say what was sent.
        limiter.failures(STORAGE_CALL, limiter.storage_uri_redacted, error)
    if not isinstance(error, StorageError):
        wrapped = StorageError(
            f"storage {limiter.storage_uri_redacted} failed: {describe_error(error)}"
        )
        wrapped.__cause__ = error
        error = wrapped
    yield from call_hook(limiter.failures, limiter.on_storage_error, request, error)
    if mode == "deny":
        return Outcome(headers=[], unavailable=True)
    if mode == "fallback":
        result = yield StorageCall(hits, fallback=True)
        if not isinstance(result, BaseException):
            return list(result)
    return PASS
