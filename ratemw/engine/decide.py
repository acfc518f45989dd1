"""The decision path: one request, from its plan to what the adapter must do. Free of I/O.

``decide`` and ``settle`` are generators. They run the user's callables (key, limit, cost,
``exempt_when``, hooks), build the request's hits, decide, and build the outcome. Whenever
they need something they cannot do without I/O they yield it, and a driver
(``engine.drivers``) answers: a ``StorageCall`` with the storage's answer (or the exception
it raised), an awaitable a user's async callable returned with its result (awaited under
ASGI, run to completion under WSGI); a static plan's kept hits (a ``Batch``) with the
storage's answer to acquiring them. So one path serves both worlds, and every request,
whatever its plan, takes it:

1. request filters, then per limit group: ``exempt_when``, the caller's identity, the quotas
   (a limit callable's, or the plan's), the cost; each with its failure rule;
2. one storage call with every hit: all admitted, or none;
3. the decision (``policy.decision``), the headers, the hooks, and the outcome.

What a plan knows in advance shortens the way without leaving it: a static plan's hits are
kept per caller, a quiet plan's admitted headers come from its compiled header heads.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ratemw._redact import describe_error
from ratemw.engine.failures import (
    BILLING_DAY,
    COST,
    DEDUCT,
    EXEMPT,
    FILTER,
    KEY,
    LIMIT,
    MESSAGE,
    STORAGE_CALL,
    FailureLog,
    Role,
)
from ratemw.engine.hits import KeptHits, KeyHasher, policy_hits
from ratemw.engine.plans import (
    MAX_FALLBACKS,
    Entry,
    Plan,
    PlannedPolicy,
    Used,
    dated,
    planned_policies,
)
from ratemw.engine.reporting import (
    call_hook,
    exceeded_for,
    log_refusal,
    near_limit,
    shadow_breach,
)
from ratemw.engine.settings import Settings
from ratemw.errors import ConfigurationError, RateLimitExceeded, StorageCallError, StorageError
from ratemw.keys import UNKNOWN_CLIENT, client_ip
from ratemw.policy.calendar import valid_billing_day
from ratemw.policy.decision import Decision, admitted, decision_of
from ratemw.policy.groups import (
    TAKES_KEY,
    TAKES_NOTHING,
    LimitGroup,
    valid_cost,
    valid_identity,
    valid_limit,
)
from ratemw.policy.headers import rate_limit_headers, state_item
from ratemw.policy.limits import Quota, checked_quotas
from ratemw.storage.base import CONCURRENCY, Hit, Usage

__all__ = [
    "PASS",
    "Context",
    "Outcome",
    "ResponseInfo",
    "StorageCall",
    "Used",
    "decide",
    "settle",
]

FALLBACK_KEY = client_ip()


@dataclass(slots=True)
class StorageCall:
    """The path asks its driver to run ``op`` (``acquire``, ``refund`` or ``release``).

    (A static plan's request asks to acquire its hits by yielding them as they are, a
    ``Batch``: they hold no concurrency slot, so the driver has nothing to watch.)
    """

    hits: Sequence[Hit]
    op: str = "acquire"
    stamp: int = 0
    fallback: bool = False


@dataclass(frozen=True, slots=True)
class ResponseInfo:
    """What ``deduct_when`` callables learn of the response: its status and headers."""

    status_code: int
    headers: list[tuple[str, str]] = field(default_factory=list)


Refundable = tuple[Callable[[ResponseInfo], Any], list[Hit]]


class Outcome:
    """What the adapter must do.

    - ``exceeded`` set: refuse with 429 (or the custom handler's response);
    - ``unavailable``: storage failed under ``failure_mode="deny"``: refuse with 503;
    - otherwise pass the request on, adding ``headers`` to the response; when
      ``needs_settling``, call ``settle`` once the response is over (free concurrency
      slots, refund what ``deduct_when`` says should not count).

    ``Outcome(headers)`` is an admitted request with nothing to settle (the common case:
    one attribute set, the rest default at the class level); ``admitted``, ``refused`` and
    ``unavailable_storage`` build the others.
    """

    decision: Decision | None = None
    exceeded: RateLimitExceeded | None = None
    unavailable: bool = False
    release: Sequence[Hit] = ()
    refundable: Sequence[Refundable] = ()
    stamp: int = 0
    fallback: bool = False
    needs_settling: bool = False
    #: What a quiet admission was decided from, for ``explain``: (used, usages).
    basis: tuple[Sequence[Used], list[Usage]] | None = None

    def __init__(self, headers: list[tuple[str, str]]) -> None:
        self.headers = headers

    def explain(self) -> Decision | None:
        """The decision, built now for a quiet admission (which needed only its headers);
        ``None`` for a request no limit was asked about."""
        if self.decision is None and self.basis is not None:
            used, usages = self.basis
            self.decision = decision_of(policy_rows(used), usages)
        return self.decision

    @classmethod
    def admitted(
        cls,
        headers: list[tuple[str, str]],
        decision: Decision,
        release: Sequence[Hit],
        refundable: Sequence[Refundable],
        stamp: int,
        fallback: bool,
    ) -> Outcome:
        """An admitted request that may hold concurrency slots or be refunded."""
        outcome = cls(headers)
        outcome.decision = decision
        outcome.release = release
        outcome.refundable = refundable
        outcome.stamp = stamp
        outcome.fallback = fallback
        outcome.needs_settling = bool(release or refundable)
        return outcome

    @classmethod
    def refused(cls, decision: Decision, exceeded: RateLimitExceeded) -> Outcome:
        """A request over a limit: the adapter answers 429."""
        outcome = cls([])
        outcome.decision = decision
        outcome.exceeded = exceeded
        return outcome

    @classmethod
    def unavailable_storage(cls) -> Outcome:
        """Storage failed under ``failure_mode="deny"``: the adapter answers 503."""
        outcome = cls([])
        outcome.unavailable = True
        return outcome

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"Outcome({shown})"


PASS = Outcome([])
Step = Generator[Any, Any, Outcome]


@dataclass(frozen=True, slots=True)
class Context:
    """What the path needs besides a plan and a request: the settings, and the engine's
    failure log, identity hasher and kept hits."""

    settings: Settings
    failures: FailureLog
    hasher: KeyHasher
    kept: KeptHits


# -- the path -----------------------------------------------------------------------------------


def decide(
    context: Context, plan: Plan, request: Any, method: str, path: str, op: str = "acquire"
) -> Step:
    """Decide one request on ``plan``. A generator: see the module docstring.

    ``op="peek"`` decides as the request would be decided, consuming nothing (the storage
    answers with its numbers as they stand).

    Read top to bottom, it is the whole path: request filters; per limit group its
    exemption, the caller's identity and (unless the plan is static) its quotas, cost and
    hits; one storage call; the outcome.
    """
    settings = context.settings
    started = time.perf_counter() if settings.metrics is not None else 0.0
    for request_filter in settings.request_filters:
        if (yield from ask(context, FILTER, request_filter, (request,), _bool)) is True:
            return PASS
    if plan.skips_preflight and is_preflight(request):
        return PASS  # a browser's question before the real request, which counts
    static = plan.static
    identities: list[str] = []
    hits: list[Hit] = []
    used: list[Used] = []
    refundable: list[Refundable] = []
    for entry in plan.entries:
        group = entry.group
        exempt_when = group.exempt_when
        # A failing exempt_when is not exempt.
        if exempt_when is not None and (
            (yield from ask(context, EXEMPT, exempt_when, (request,), _bool)) is True
        ):
            continue
        key = entry.key
        try:
            identity = key(request)
        except Exception as error:
            identity = key_failed(context, key, request, error)
        else:
            if type(identity) is not str or not identity or identity.isspace():
                identity = yield from identified(context, key, request, identity)
        if static:  # every hit known but the caller's: kept per caller
            identities.append(identity)
            continue
        group_used = yield from group_use(context, plan, entry, request, identity, used)
        group_hits = policy_hits(
            settings, context.hasher(identity), group_used.policies, group_used.cost,
            entry.enforce,
        )  # fmt: skip
        hits.extend(group_hits)
        used.append(group_used)
        if group.deduct_when is not None:
            refundable.append((group.deduct_when, group_hits))
    if static:
        hits, used = context.kept.get(plan, identities), plan.used  # type: ignore[assignment]
    if not hits:
        return PASS
    # The storage acquires them all, or none. A static plan's hits (a kept Batch) are
    # yielded as they are (they never take concurrency slots, which the driver watches);
    # any other call is named.
    result = yield hits if static and op == "acquire" else StorageCall(hits, op)
    if plan.quiet and type(result) is list:  # nearly every request: all fit, headers only
        for usage in result:
            if not usage.fits:
                break
        else:
            outcome = Outcome(quiet_headers(plan, settings, result))
            outcome.basis = used, result
            return outcome
    return (yield from conclude(
        context, plan, request, method, path, hits, used, refundable, result, started, op,
    ))  # fmt: skip


def is_preflight(request: Any) -> bool:
    """A CORS preflight: ``OPTIONS`` with an ``Origin`` and an ``Access-Control-Request-Method``
    header (the plan says the method)."""
    names = {name.lower() for name, _ in request.scope.get("headers", ())}
    return b"origin" in names and b"access-control-request-method" in names


def group_use(
    context: Context, plan: Plan, entry: Entry, request: Any, identity: str, used: list[Used]
) -> Generator[Any, Any, Used]:
    """What a limit group of a plan that is not static comes to for this request: its
    quotas (the plan's, or a limit callable's, named apart from the others') and cost."""
    group = entry.group
    policies = entry.policies
    if policies is None:
        names = set(plan.names).union(p.name for u in used for p in u.policies)
        quotas = yield from limit_quotas(context, group, request, identity)
        policies = planned_policies(context.settings.strategy, group, entry.bucket, quotas, names)
    if any(policy.quota.calendar is not None for policy in policies):
        policies = yield from dated_policies(context, policies, request)
    cost = group.cost
    if type(cost) is not int:
        cost = yield from ask(context, COST, cost, (request,), valid_cost)
        cost = 1 if cost is FAILED else cost  # a failing cost counts 1
    return Used(entry, policies, cost)


def dated_policies(
    context: Context, policies: tuple[PlannedPolicy, ...], request: Any
) -> Generator[Any, Any, tuple[PlannedPolicy, ...]]:
    """The calendar quotas among ``policies``, in the periods this request falls in (a
    billing day callable that fails counts months from the 1st)."""
    now_ms = context.settings.clock_ms()
    found = []
    for policy in policies:
        calendar = policy.quota.calendar
        if calendar is None:
            found.append(policy)
            continue
        day = calendar.billing_day
        if callable(day):
            day = yield from ask(context, BILLING_DAY, day, (request,), valid_billing_day)
            day = 1 if day is FAILED else day
        found.append(dated(policy, now_ms, day or 1))
    return tuple(found)


def conclude(
    context: Context,
    plan: Plan,
    request: Any,
    method: str,
    path: str,
    hits: list[Hit],
    used: Sequence[Used],
    refundable: list[Refundable],
    result: Any,
    started: float = 0.0,
    op: str = "acquire",
) -> Step:
    """The outcome once the storage answered ``hits`` with ``result`` (usages, or the error
    it raised): the failure mode, the decision, what to report, what to send. A look that
    counts nothing (``op="peek"``) reports nothing: no metrics, hooks or refusal log line."""
    reports = op == "acquire"
    settings = context.settings
    fallback = False
    if isinstance(result, BaseException):
        # A shadow limit refuses nothing, storage or not: only enforced limits choose.
        mode = failure_mode(settings, [u.entry.group for u in used if u.entry.enforce])
        failed = yield from storage_failed(context, request, hits, result, mode, op)
        if not isinstance(failed, list):
            return failed
        result, fallback = failed, True
    usages: list[Usage] = result
    if plan.quiet and all(usage.fits for usage in usages):  # the fallback storage's answer
        return Outcome(quiet_headers(plan, settings, usages))
    decision = decision_of(policy_rows(used), usages)
    if reports:
        if settings.metrics is not None:
            settings.metrics.observe(plan.template, decision, time.perf_counter() - started)
        if settings.on_near_limit is not None:
            yield from near_limit(settings, context.failures, request, decision)
        if decision.shadow_violated:
            yield from shadow_breach(settings, context.failures, request, decision, method, path)
    if decision.allowed:
        return admitted_outcome(settings, plan, decision, hits, usages, refundable, fallback)
    detail = yield from custom_detail(context, request, decision, used)
    exceeded = exceeded_for(settings, decision, method, path, detail)
    if reports:
        log_refusal(exceeded, plan.template)
        yield from call_hook(context.failures, settings.on_breach, request, exceeded)
    return Outcome.refused(decision, exceeded)


def quiet_headers(plan: Plan, settings: Settings, usages: list[Usage]) -> list[tuple[str, str]]:
    """An admitted request's draft-10 headers, from the plan's compiled heads (the same
    items ``rate_limit_headers`` writes from a decision)."""
    if not settings.header_modes:
        return []
    heads = plan.heads
    if len(heads) == 1:  # one policy, nearly always: no join
        state = state_item(heads[0], *admitted(usages[0]))
    else:
        state = ", ".join(
            state_item(head, *admitted(usage)) for head, usage in zip(heads, usages, strict=True)
        )
    return [("RateLimit-Policy", plan.policy_field), ("RateLimit", state)]


def policy_rows(used: Sequence[Used]) -> list[tuple[str, Quota, int, bool, bool]]:
    """Per hit: the policy's name and quota, the request's cost, whether it is enforced and
    whether it is a shadow policy (what ``decision_of`` reads)."""
    return [
        (p.name, p.quota, u.cost, u.entry.enforce, u.entry.shadow) for u in used for p in u.policies
    ]


def admitted_outcome(
    settings: Settings,
    plan: Plan,
    decision: Decision,
    hits: list[Hit],
    usages: list[Usage],
    refundable: list[Refundable],
    fallback: bool,
) -> Outcome:
    headers: list[tuple[str, str]] = []
    if plan.headed and settings.header_modes:
        now_s = -(-settings.clock_ms() // 1000)  # rounded up: an epoch reset is never early
        for mode in settings.header_modes:
            headers.extend(rate_limit_headers(decision, mode, now_s))
    taken = {id(h) for h, u in zip(hits, usages, strict=True) if u.fits}
    return Outcome.admitted(
        headers,
        decision,
        release=[h for h in hits if id(h) in taken and h.strategy == CONCURRENCY],
        refundable=[
            (when, [h for h in group if id(h) in taken and h.strategy != CONCURRENCY])
            for when, group in refundable
        ],
        stamp=usages[0].stamp_ms if usages else 0,
        fallback=fallback,
    )


def settle(context: Context, outcome: Outcome, response: ResponseInfo) -> Step:
    """After the response: free concurrency slots, refund what should not count."""
    if outcome.release:
        yield StorageCall(outcome.release, op="release", fallback=outcome.fallback)
    for deduct_when, hits in outcome.refundable:
        keep = yield from ask(context, DEDUCT, deduct_when, (response,), _bool)
        if keep is False and hits:  # a failing deduct_when keeps the count
            yield StorageCall(hits, op="refund", stamp=outcome.stamp, fallback=outcome.fallback)
    return PASS


# -- user callables, each with its failure rule -------------------------------------------------

FAILED: Any = object()  # what ``ask`` answers for a callable that raised or returned garbage


def _bool(value: Any) -> Any:
    return value if isinstance(value, bool) else None


def ask(
    context: Context, role: Role, fn: Any, args: tuple[Any, ...], check: Callable[[Any], Any]
) -> Generator[Any, Any, Any]:
    """Call a user callable (sync or async): what ``check`` makes of its result, or
    ``FAILED`` when it raised or returned something ``check`` refuses (``None``).

    The failure is logged once per incident; the caller applies the callable's rule.
    """
    try:
        value = fn(*args)
        if inspect.isawaitable(value):
            value = yield value
    except Exception as error:
        context.failures(role, fn, error)
        return FAILED
    checked = check(value)
    if checked is None:
        context.failures(role, fn, None, value)
        return FAILED
    return checked


def identified(context: Context, key: Any, request: Any, identity: Any) -> Generator[Any, Any, str]:
    """Who the request counts as, when its key function did not answer a plain string at
    once: an awaitable's result, or another identity (``valid_identity``), or the key's
    failure rule."""
    try:
        if inspect.isawaitable(identity):
            identity = yield identity
    except Exception as error:
        return key_failed(context, key, request, error)
    checked = valid_identity(identity)
    if checked is None:
        return key_failed(context, key, request, None, identity)
    return checked


def key_failed(
    context: Context, key: Any, request: Any, error: Exception | None, value: Any = None
) -> str:
    """A key function that raises (or names nobody: ``None``, ``""``) must not let the caller
    escape, nor put everyone in one bucket: count by address.

    The identity is what ``keys.client_ip`` gives with the configuration in use (see
    ``failure_key``), so the request shares its bucket with the address's own requests:
    making the key fail earns a caller no quota that leaving its credentials out would not.
    """
    context.failures(KEY, key, error, value)
    for by_address in (failure_key(context.settings, key), FALLBACK_KEY):
        try:
            identity = by_address(request)
        except Exception:  # a client_ip of the app's that fails too: the peer address
            continue
        if type(identity) is str and identity:
            return identity
    return UNKNOWN_CLIENT  # no usable client address at all: the shared bucket


def failure_key(settings: Settings, key: Any) -> client_ip:
    """The ``keys.client_ip`` that counts requests whose key function ``key`` failed.

    The first ``client_ip`` in the failing key's ``fallback`` chain (``keys.header``,
    ``user_or_ip``), then in the limiter key's (or the limiter key itself): its trusted
    proxies and IPv6 prefix apply. Without one, ``keys.client_ip()``: no proxy trusted.
    """
    for candidate in (key, settings.key):
        for _ in range(MAX_FALLBACKS):
            if isinstance(candidate, client_ip):
                return candidate
            candidate = getattr(candidate, "fallback", None)
            if candidate is None:
                break
    return FALLBACK_KEY


def limit_quotas(
    context: Context, group: LimitGroup, request: Any, identity: str
) -> Generator[Any, Any, tuple[Quota, ...]]:
    """The quotas a limit callable gives this request; its fallback's when it fails."""
    takes = group.limit_takes
    args = () if takes == TAKES_NOTHING else (identity,) if takes == TAKES_KEY else (request,)
    strategy = context.settings.strategy

    def check(value: Any) -> Any:
        text = valid_limit(value)
        if text is None:
            return None
        try:
            return checked_quotas(text, strategy)
        except ConfigurationError:
            return None

    quotas = yield from ask(context, LIMIT, group.limit, args, check)
    if quotas is FAILED:
        return group.fallback_quotas or context.settings.fallback_quotas
    return quotas  # type: ignore[no-any-return]


def custom_detail(
    context: Context, request: Any, decision: Decision, used: Sequence[Used]
) -> Generator[Any, Any, str | None]:
    """The ``error_message`` of the limit that refused the request, if it has one."""
    binding = decision.binding
    if binding is None:
        return None
    for u in used:
        if any(policy.name == binding.name for policy in u.policies):
            message = u.entry.group.error_message
            if message is None or isinstance(message, str):
                return message
            found = yield from ask(
                context, MESSAGE, message, (request,), lambda v: v if isinstance(v, str) else None
            )
            return None if found is FAILED else found
    return None


# -- storage failures ---------------------------------------------------------------------------

_SEVERITY = {"allow": 0, "fallback": 1, "deny": 2}


def failure_mode(settings: Settings, groups: list[LimitGroup]) -> str:
    """The strictest failure mode among the request's limits (each defaults to the limiter's)."""
    modes = {group.failure_mode or settings.failure_mode for group in groups}
    return max(modes, key=_SEVERITY.__getitem__) if modes else "allow"


def storage_failed(
    context: Context,
    request: Any,
    hits: list[Hit],
    error: BaseException,
    mode: str,
    op: str = "acquire",
) -> Generator[Any, Any, Outcome | list[Usage]]:
    """Apply ``mode``: a 503, the fallback storage's usages (for ``op``: a look only looks
    there too), or a pass."""
    settings = context.settings
    if settings.metrics is not None:
        settings.metrics.storage_error()
    if isinstance(error, StorageCallError):
        # A defect, not an outage: the breaker did not count it; say what was sent.
        context.failures(STORAGE_CALL, settings.storage_name, error)
    if not isinstance(error, StorageError):
        wrapped = StorageError(f"storage {settings.storage_name} failed: {describe_error(error)}")
        wrapped.__cause__ = error
        error = wrapped
    yield from call_hook(context.failures, settings.on_storage_error, request, error)
    if mode == "deny":
        return Outcome.unavailable_storage()
    if mode == "fallback":
        result = yield StorageCall(hits, op=op, fallback=True)
        if not isinstance(result, BaseException):
            return list(result)
    return PASS
