"""django-ratelimit's decorator and helpers, on ratemw: migrate by changing an import.

``from django_ratelimit.decorators import ratelimit`` becomes
``from ratemw.contrib.django import ratelimit``; the arguments, key shortcuts, rates,
``request.limited`` and ``Ratelimited`` mean what they meant. Counting is ratemw's: the
limiter of ``settings.RATEMW_LIMITER`` / ``settings.RATEMW`` (a Redis one shares counts
across processes), or, when ratemw is not configured, one in-memory limiter per process
(as django-ratelimit's default local-memory cache is).

What is better, not different, for a caller: a request over the limit is refused with the
standard 429 (problem+json, exact ``Retry-After``, ``RateLimit`` headers) when ratemw's
middleware is installed; without it Django answers ``Ratelimited`` with a 403, as before. A
key that names nobody (a missing field or header, an anonymous user for ``key="user"``, a
key callable that fails) counts the request by client address instead of in one bucket
shared by everyone. ``increment=False`` asks whether one more request would be refused.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable
from typing import Any, TypeVar

from django.core.exceptions import PermissionDenied  # type: ignore[import-untyped]
from django.utils.module_loading import import_string  # type: ignore[import-untyped]
from starlette.requests import Request

from ratemw._environ import wsgi_scope
from ratemw.contrib._django_settings import current
from ratemw.engine.decide import failure_key
from ratemw.engine.failures import KEY, RATE
from ratemw.engine.reporting import exceeded_for
from ratemw.errors import ConfigurationError, RateLimitExceeded
from ratemw.limiter import Limiter
from ratemw.policy.decision import Decision, PolicyState
from ratemw.policy.groups import normalize_methods, valid_identity
from ratemw.policy.limits import MAX_WINDOW, parse_quotas

__all__ = ["ALL", "UNSAFE", "Ratelimited", "get_usage", "is_ratelimited", "ratelimit"]

#: Every HTTP method (django-ratelimit's sentinel value).
ALL: tuple[None] = (None,)
#: The methods that change things.
UNSAFE = ["DELETE", "PATCH", "POST", "PUT"]

View = TypeVar("View", bound=Callable[..., Any])

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# "5/m", "100/5m", "100/300" (seconds), and the spelled-out units ("10/hour", "5/min").
_RATE = re.compile(
    r"\s*(?P<count>\d+)\s*/\s*(?P<multiple>\d*)\s*"
    r"(?:(?P<unit>s(?:ec(?:onds?)?)?|m(?:in(?:utes?)?)?|h(?:ours?)?|d(?:ays?)?))?\s*",
    re.IGNORECASE,
)
_SIMPLE_KEYS = ("ip", "user", "user_or_ip")
_ACCESSORS = ("get", "post", "header")


class Ratelimited(RateLimitExceeded, PermissionDenied):  # type: ignore[misc]
    """A request over a ``@ratelimit(block=True)`` limit.

    A ``RateLimitExceeded`` (ratemw's middleware answers it with the standard 429) and a
    Django ``PermissionDenied`` (without the middleware, Django answers 403, and a
    ``handler403`` testing ``isinstance(exception, Ratelimited)`` still works). Raised without
    arguments, it carries no numbers.
    """

    def __init__(self, decision: Decision | None = None, **fields: Any) -> None:
        if decision is None:
            decision = Decision(False, (), None)
            fields = {"method": "", "path": "", "headers": [],
                      "body": {"detail": "Rate limit exceeded."}}  # fmt: skip
        super().__init__(decision, **fields)

    @classmethod
    def of(cls, exceeded: RateLimitExceeded) -> Ratelimited:
        return cls(
            exceeded.decision,
            method=exceeded.method,
            path=exceeded.path,
            headers=exceeded.headers,
            body=exceeded.body,
        )


# -- what the arguments mean ------------------------------------------------------------------


def _split_rate(rate: str) -> tuple[int, int] | None:
    """``"100/5m"`` as (100, 300); ``None`` if it is not a rate."""
    found = _RATE.fullmatch(rate)
    if found is None:
        return None
    unit = (found["unit"] or "s")[0].lower()
    seconds = _UNITS[unit] * int(found["multiple"] or 1)
    return int(found["count"]), seconds


def _checked_rate(value: Any) -> tuple[int, int] | None:
    """A rate a callable returned (or was given) as (count, seconds); ``None`` if it is not
    one. ``(0, seconds)`` refuses every request."""
    if isinstance(value, str):
        pair = _split_rate(value)
    elif isinstance(value, tuple) and len(value) == 2:
        pair = value
    else:
        return None
    if pair is None or not all(type(n) is int for n in pair):
        return None
    count, seconds = pair
    if count < 0 or not 0 < seconds <= MAX_WINDOW:
        return None
    return count, seconds


def _limit_text(count: int, seconds: int) -> str:
    """ratemw's limit string of a rate: ``(5, 60)`` is ``"5/1 minute"``."""
    for unit, name in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if seconds % unit == 0:
            return f"{count}/{seconds // unit} {name}"
    return f"{count}/{seconds} second"


class _Limit:
    """One ``@ratelimit`` (or ``get_usage`` call): its arguments, checked once."""

    def __init__(self, group: str | None, key: Any, rate: Any, method: Any) -> None:
        if group is not None and (not isinstance(group, str) or not group):
            raise ConfigurationError(f"ratelimit: invalid group {group!r}: expected a name")
        self.group = group
        self.key = _key(key)
        self.rate = rate
        if not (rate is None or callable(rate) or isinstance(rate, (str, tuple))):
            raise ConfigurationError(
                f"ratelimit: invalid rate {rate!r}: expected a rate such as '5/m', a "
                "(count, seconds) pair, a callable (group, request) or its dotted path"
            )
        fixed = isinstance(rate, tuple) or (isinstance(rate, str) and "." not in rate)
        if fixed and _checked_rate(rate) is None:
            raise ConfigurationError(
                f"ratelimit: invalid rate {rate!r}: expected 'count/[multiple]unit' with "
                "unit s, m, h or d (such as '5/m', '100/5m', '100/300')"
            )
        self.methods = _methods(method)

    def applies(self, request: Any) -> bool:
        return self.methods is None or request.method in self.methods

    def group_of(self, fn: Any) -> str:
        return self.group if self.group is not None else _group_of_view(fn)

    def scope(self, group: str) -> str:
        if self.methods is None:
            return group
        return f"{group}:{','.join(sorted(self.methods))}"

    def rate_of(self, limiter: Limiter, group: str, request: Any) -> tuple[int, int] | None:
        """The rate of this request; ``None`` for no limit. A rate callable that fails
        (raises, or returns what is not a rate) limits the request: logged once."""
        rate = self.rate
        if isinstance(rate, str) and "." in rate:
            rate = _imported(rate, "rate")
        if not callable(rate):
            return _checked_rate(rate) if rate is not None else None
        try:
            value = rate(group, request)
        except Exception as exc:
            limiter.engine.context.failures(RATE, rate, exc, None)
            return 0, 60
        if value is None:
            return None
        checked = _checked_rate(value)
        if checked is None:
            limiter.engine.context.failures(RATE, rate, None, value)
            return 0, 60
        return checked


def _key(key: Any) -> Any:
    if key is None or key == "":
        raise ConfigurationError("ratelimit: a key must be given, such as key='ip'")
    if callable(key) or key in _SIMPLE_KEYS:
        return key
    if isinstance(key, str) and ":" in key:
        accessor, name = key.split(":", 1)
        if accessor in _ACCESSORS and name:
            return (accessor, name)
        raise ConfigurationError(
            f"ratelimit: unknown key {key!r}: expected 'ip', 'user', 'user_or_ip', "
            "'get:<field>', 'post:<field>', 'header:<name>', a callable (group, request) or "
            "its dotted path"
        )
    if isinstance(key, str) and "." in key:
        return key  # a dotted path, imported when first used
    raise ConfigurationError(f"ratelimit: unknown key {key!r}")


def _methods(method: Any) -> frozenset[str] | None:
    if method is ALL or method == ALL or method is None:
        return None
    names = [method] if isinstance(method, str) else method
    if not isinstance(names, (list, tuple, set, frozenset)):
        raise ConfigurationError(f"ratelimit: invalid method {method!r}")
    return normalize_methods(names, "ratelimit")


@functools.lru_cache(maxsize=64)
def _imported(path: str, what: str) -> Any:
    try:
        found = import_string(path)
    except ImportError as exc:
        raise ConfigurationError(f"ratelimit: cannot import {what} {path!r}: {exc}") from None
    if not callable(found):
        raise ConfigurationError(f"ratelimit: {what} {path!r} is not callable")
    return found


def _group_of_view(fn: Any) -> str:
    """The dotted name of a view, as django-ratelimit names its default group."""
    if isinstance(fn, functools.partial):  # method_decorator hands a partial bound method
        fn = fn.func
    parts = [getattr(fn, "__module__", None) or ""]
    owner = getattr(fn, "__self__", None)
    if owner is not None:
        parts.append(type(owner).__name__)
    parts.append(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", "view"))
    return ".".join(part for part in parts if part)


# -- who is counted -------------------------------------------------------------------------


def _scope_request(request: Any) -> Request:
    return Request(wsgi_scope(request.META, request.method, request.path))


def _address(limiter: Limiter, request: Any) -> Any:
    """The client address, by the limiter's ``keys.client_ip`` (its trusted proxies)."""
    return failure_key(limiter.engine.settings, None)(_scope_request(request))


def _user_identity(user: Any) -> str | None:
    if user is not None and getattr(user, "is_authenticated", False):
        return valid_identity(getattr(user, "pk", None))
    return None


def _identity(limiter: Limiter, key: Any, group: str, request: Any, user: Any) -> Any:
    """The identity of ``request`` under ``key``; the client address when it names nobody."""
    value: Any = None
    try:
        if key == "ip":
            return _address(limiter, request)
        if key in ("user", "user_or_ip"):
            value = _user_identity(user)
            if value is not None:
                return f"user:{value}"
        elif isinstance(key, tuple):
            accessor, name = key
            if accessor == "header":
                value = request.META.get("HTTP_" + name.replace("-", "_").upper())
            else:
                value = (request.GET if accessor == "get" else request.POST).get(name)
        else:
            function = _imported(key, "key") if isinstance(key, str) else key
            value = function(group, request)
            if valid_identity(value) is None:
                limiter.engine.context.failures(KEY, function, None, value)
    except ConfigurationError:
        raise
    except Exception as exc:  # a malformed body, a key callable that raises
        limiter.engine.context.failures(KEY, key, exc, None)
    identity = valid_identity(value)
    if identity is None:
        return _address(limiter, request)
    # Marked as a value the request (or a key callable) gave, so that no value can name the
    # bucket of an address (a caller sending another's address as its API key).
    return "v:" + identity


def _limiter() -> Limiter | None:
    """The configured limiter; the process's in-memory one when ratemw is not configured;
    ``None`` when ``RATELIMIT_ENABLE = False``."""
    from django.conf import settings  # type: ignore[import-untyped]

    if not getattr(settings, "RATELIMIT_ENABLE", True):
        return None
    if getattr(settings, "RATEMW_LIMITER", None) is None and not getattr(settings, "RATEMW", None):
        return _default_limiter()
    return current().limiter


@functools.lru_cache(maxsize=1)
def _default_limiter() -> Limiter:
    return Limiter()


# -- counting -------------------------------------------------------------------------------


def _refusal_of_zero(scope: str, seconds: int) -> Decision:
    """A rate of 0 refuses every request, counting nothing."""
    (quota,) = parse_quotas(_limit_text(1, seconds))
    text = quota.text.replace("1 request", "0 requests", 1)
    state = PolicyState(f"{scope}-{quota.name}", 0, seconds, 0, None, True, False, text, 1)
    return Decision(False, (state,), None)


def _prepared(
    limit: _Limit, fn: Any, request: Any
) -> tuple[Limiter, str, str, tuple[int, int]] | None:
    """What a request is counted by: limiter, group, scope and rate; ``None``: not limited."""
    limiter = _limiter()
    if limiter is None or not limit.applies(request):
        return None
    group = limit.group_of(fn)
    rate = limit.rate_of(limiter, group, request)
    if rate is None:
        return None
    return limiter, group, limit.scope(group), rate


def _usage(decision: Decision) -> dict[str, Any]:
    """django-ratelimit's usage dict of a decision."""
    policy = decision.policies[0] if decision.policies else None
    if policy is None:  # the storage failed and the limiter lets requests through
        return {"count": 0, "limit": 0, "should_limit": False, "time_left": 0}
    return {
        "count": policy.quota - policy.remaining,
        "limit": policy.quota,
        "should_limit": not decision.allowed,
        "time_left": policy.reset if policy.reset is not None else -1,
        "decision": decision,
    }


def _count(
    limit: _Limit, fn: Any, request: Any, increment: bool, user: Any
) -> tuple[Decision, Limiter] | None:
    prepared = _prepared(limit, fn, request)
    if prepared is None:
        return None
    limiter, group, scope, (count, seconds) = prepared
    if count == 0:
        return _refusal_of_zero(scope, seconds), limiter
    identity = _identity(limiter, limit.key, group, request, user)
    call = limiter.hit if increment else limiter.peek
    return call(identity, _limit_text(count, seconds), scope=scope, request=request), limiter


async def _acount(
    limit: _Limit, fn: Any, request: Any, increment: bool
) -> tuple[Decision, Limiter] | None:
    prepared = _prepared(limit, fn, request)
    if prepared is None:
        return None
    limiter, group, scope, (count, seconds) = prepared
    if count == 0:
        return _refusal_of_zero(scope, seconds), limiter
    user = None
    if limit.key in ("user", "user_or_ip"):
        auser = getattr(request, "auser", None)
        user = await auser() if auser is not None else getattr(request, "user", None)
    identity = _identity(limiter, limit.key, group, request, user)
    call = limiter.ahit if increment else limiter.apeek
    decision = await call(identity, _limit_text(count, seconds), scope=scope, request=request)
    return decision, limiter


def _user(limit: _Limit, request: Any) -> Any:
    return getattr(request, "user", None) if limit.key in ("user", "user_or_ip") else None


def _refused(request: Any, counted: tuple[Decision, Limiter] | None) -> bool:
    """Mark the request (``request.limited``); whether it is refused."""
    limited = counted is not None and not counted[0].allowed
    request.limited = limited or getattr(request, "limited", False)
    return limited


def _raise(request: Any, counted: tuple[Decision, Limiter]) -> None:
    from django.conf import settings

    decision, limiter = counted
    custom = getattr(settings, "RATELIMIT_EXCEPTION_CLASS", None)
    if custom is not None:
        cls = import_string(custom) if isinstance(custom, str) else custom
        raise cls()
    # Over the limit, or the storage failing under failure_mode="deny": refused either way,
    # as django-ratelimit refuses when its cache fails.
    raise Ratelimited.of(
        exceeded_for(limiter.engine.settings, decision, request.method, request.path)
    )


# -- the public face ------------------------------------------------------------------------


def ratelimit(
    group: str | None = None,
    key: Any = None,
    rate: Any = None,
    method: Any = ALL,
    block: bool = True,
) -> Callable[[View], View]:
    """Limit a Django view, as django-ratelimit's decorator does.

    Args:
        group: the name of the counts (views with one group share them); default the view's
            dotted name.
        key: who is counted: ``"ip"``, ``"user"``, ``"user_or_ip"``, ``"header:<name>"``,
            ``"get:<field>"``, ``"post:<field>"``, a callable ``(group, request)`` or its
            dotted path. A key that names nobody counts the request by client address.
        rate: ``"5/m"``, ``"100/5m"``, ``"100/300"`` (seconds), a ``(count, seconds)`` pair,
            or a callable ``(group, request)`` (or its dotted path) returning one, or ``None``
            for no limit. A rate of 0 refuses every request.
        method: the methods limited: ``ALL`` (default), ``UNSAFE``, a name or a list.
        block: raise ``Ratelimited`` over the limit (default); with ``False`` the view runs
            with ``request.limited = True``.

    Example::

        from ratemw.contrib.django import ratelimit

        @ratelimit(key="post:username", rate="5/m", method="POST")
        def login(request): ...
    """
    if not isinstance(block, bool):
        raise ConfigurationError(f"ratelimit: invalid block {block!r}: expected True or False")
    limit = _Limit(group, key, rate, method)

    def decorator(fn: View) -> View:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def limited_async(request: Any, *args: Any, **kwargs: Any) -> Any:
                counted = await _acount(limit, fn, request, True)
                if _refused(request, counted) and block and counted is not None:
                    _raise(request, counted)
                return await fn(request, *args, **kwargs)

            return limited_async  # type: ignore[return-value]

        @functools.wraps(fn)
        def limited(request: Any, *args: Any, **kwargs: Any) -> Any:
            counted = _count(limit, fn, request, True, _user(limit, request))
            if _refused(request, counted) and block and counted is not None:
                _raise(request, counted)
            return fn(request, *args, **kwargs)

        return limited  # type: ignore[return-value]

    return decorator


ratelimit.ALL = ALL  # type: ignore[attr-defined]
ratelimit.UNSAFE = UNSAFE  # type: ignore[attr-defined]


def get_usage(
    request: Any,
    group: str | None = None,
    fn: Callable[..., Any] | None = None,
    key: Any = None,
    rate: Any = None,
    method: Any = ALL,
    increment: bool = False,
) -> dict[str, Any] | None:
    """A request's usage of a limit, as django-ratelimit's ``get_usage``: ``count``,
    ``limit``, ``should_limit``, ``time_left`` (seconds until the window has room again),
    and ratemw's whole ``decision``. ``None`` where no limit applies (another method, a rate
    of ``None``, limiting disabled). ``increment=False`` counts nothing and asks whether one
    more request would be refused. Sync views only (in async code use ``Limiter.apeek``).
    """
    if group is None and fn is None:
        raise ConfigurationError("get_usage needs group= or fn= (whose counts to read)")
    limit = _Limit(group, key, rate, method)
    counted = _count(limit, fn, request, increment, _user(limit, request))
    if counted is None:
        return None
    return _usage(counted[0])


def is_ratelimited(
    request: Any,
    group: str | None = None,
    fn: Callable[..., Any] | None = None,
    key: Any = None,
    rate: Any = None,
    method: Any = ALL,
    increment: bool = False,
) -> bool:
    """Whether the request is over the limit (``get_usage``'s ``should_limit``)."""
    usage = get_usage(request, group, fn, key, rate, method, increment)
    return bool(usage is not None and usage["should_limit"])


get_usage.ALL = is_ratelimited.ALL = ALL  # type: ignore[attr-defined]
get_usage.UNSAFE = is_ratelimited.UNSAFE = UNSAFE  # type: ignore[attr-defined]
