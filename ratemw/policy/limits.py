"""Parsing limit strings such as ``"5/minute;100/hour"`` into quotas.

Beyond what ``limits`` parses, two forms are ours:

- ``"10/second burst 20"``: a GCRA (token bucket) rate with a burst capacity of 20;
- ``"5 concurrent"``: at most 5 requests of a caller in flight at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

import limits

from ratemw.errors import ConfigurationError
from ratemw.policy.calendar import NOMINAL, CalendarPeriod, parse_calendar

_SEPARATORS = re.compile(r"[,;|]")
#: The longest window a quota may have, and the largest amount: beyond them no real quota
#: exists, and storages could no longer count or expire keys exactly.
MAX_WINDOW = 10 * 366 * 24 * 3600  # ten years, in seconds
MAX_AMOUNT = 10**15
_BURST = re.compile(r"^(?P<rate>.*?)\s+burst\s+(?P<burst>\d+)\s*$", re.IGNORECASE)
# "5/0 minutes": ``limits`` reads a window of zero as one; we refuse it.
_ZERO_MULTIPLES = re.compile(r"(?:/|\bper\b)\s*0+\s*[a-z]", re.IGNORECASE)
_CONCURRENT = re.compile(r"^\s*(?P<amount>\d+)\s+concurrent(\s+requests?)?\s*$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Quota:
    """One quota: ``amount`` units per ``window`` seconds.

    ``name`` is the policy name sent in the ``RateLimit`` headers (``"per-minute"``,
    ``"per-5-seconds"``); ``text`` is the spelled-out form used in error details
    (``"5 requests per 1 minute"``). ``burst`` is the GCRA burst capacity (``None``: equal to
    ``amount``). A ``concurrent`` quota counts requests in flight and has no window.
    """

    amount: int
    window: int
    name: str
    text: str
    burst: int | None = None
    concurrent: bool = False
    #: A calendar quota's calendar; its ``window`` is the period's nominal length until a
    #: request dates it (``until_ms``: the end of the period that request falls in).
    calendar: CalendarPeriod | None = None
    until_ms: int = 0
    window_ms: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "window_ms", self.window * 1000)


def _quota_from_item(item: limits.RateLimitItem, burst: int | None) -> Quota:
    granularity = item.GRANULARITY.name
    multiples = int(item.multiples)
    amount = int(item.amount)
    if multiples == 1:
        name = f"per-{granularity}"
        span = f"1 {granularity}"
    else:
        name = f"per-{multiples}-{granularity}s"
        span = f"{multiples} {granularity}s"
    unit = "request" if amount == 1 else "requests"
    text = f"{amount} {unit} per {span}"
    if burst is not None:
        text += f" (bursts of {burst})"
    return Quota(amount=amount, window=int(item.get_expiry()), name=name, text=text, burst=burst)


def calendar_quota(amount: int, calendar: CalendarPeriod, text: str = "") -> Quota:
    """The quota of ``amount`` per calendar period."""
    unit = "request" if amount == 1 else "requests"
    text = text or f"{amount} {unit} per calendar {calendar.period} ({calendar.zone})"
    name = f"per-calendar-{calendar.period}"
    return Quota(amount, NOMINAL[calendar.period], name, text, calendar=calendar)


def _parse_item(value: str, item: str) -> Quota:
    calendar = parse_calendar(item)
    if calendar is not None:
        return calendar_quota(*calendar)
    concurrent = _CONCURRENT.match(item)
    if concurrent:
        amount = int(concurrent["amount"])
        unit = "request" if amount == 1 else "requests"
        return Quota(amount, 0, "concurrent", f"{amount} concurrent {unit}", concurrent=True)
    burst: int | None = None
    bursting = _BURST.match(item)
    if bursting:
        item, burst = bursting["rate"], int(bursting["burst"])
        if burst < 1:
            raise ConfigurationError(f"invalid limit {value!r}: a burst must be at least 1")
    if _ZERO_MULTIPLES.search(item):
        raise ConfigurationError(
            f"invalid limit {value!r}: a window must be at least 1 second long"
        )
    try:
        return _quota_from_item(limits.parse(item), burst)
    except ValueError as exc:
        raise ConfigurationError(
            f"invalid limit {value!r}: {exc}; expected e.g. '5/minute', '10 per 5 seconds', "
            "'10/second burst 20', '5 concurrent', or several joined by ';'"
        ) from None


@lru_cache(maxsize=1024)
def parse_quotas(value: str) -> tuple[Quota, ...]:
    """Parse ``"5/minute;100/hour"`` (or ``"10 per 5 seconds"``) into quotas.

    Raises ``ConfigurationError`` naming the bad value. Results are cached, so limits returned
    by a callable per request cost a dictionary look-up once seen.
    """
    if not isinstance(value, str):
        raise ConfigurationError(
            f"limit must be a string such as '5/minute', got {value!r} ({type(value).__name__})"
        )
    items = [item for item in _SEPARATORS.split(value) if item.strip()]
    if not items:
        raise ConfigurationError(f"invalid limit {value!r}: expected e.g. '5/minute'")
    quotas = tuple(_parse_item(value, item) for item in items)
    for quota in quotas:
        _check_bounds(value, quota)
    return quotas


def _check_bounds(value: str, quota: Quota) -> None:
    if quota.amount < 1:
        raise ConfigurationError(
            f"invalid limit {value!r}: a quota must allow at least 1 request "
            "(use Limiter.exempt or a route rule to block or free a route instead)"
        )
    if quota.amount > MAX_AMOUNT or (quota.burst or 0) > MAX_AMOUNT:
        raise ConfigurationError(
            f"invalid limit {value!r}: at most {MAX_AMOUNT} requests per window"
        )
    if quota.concurrent:
        return
    if quota.window < 1:
        raise ConfigurationError(
            f"invalid limit {value!r}: a window must be at least 1 second long"
        )
    if quota.window > MAX_WINDOW:
        raise ConfigurationError(f"invalid limit {value!r}: a window may be at most 10 years long")


#: Sliding-window and GCRA arithmetic multiplies a quota by its window in milliseconds; kept
#: below this, every number a storage computes stays exact (Lua counts in doubles).
EXACT_PRODUCT = 2**51
_SCALED = ("sliding-window-counter", "gcra")


def strategy_problem(quota: Quota, strategy: str) -> str | None:
    """Why ``strategy`` cannot count ``quota`` exactly (``None``: it can)."""
    if quota.concurrent or quota.calendar is not None:
        return None  # counted as such, whatever the strategy
    if quota.burst is not None and strategy != "gcra":
        return f"has a burst, which only strategy='gcra' counts (this limiter uses {strategy!r})"
    if strategy in _SCALED:
        capacity = max(quota.amount, quota.burst or 0) + 1
        if capacity * quota.window_ms > EXACT_PRODUCT:
            return (
                f"is too large for strategy {strategy!r} to count exactly ({quota.text}: the "
                f"quota times its window in milliseconds must stay under {EXACT_PRODUCT}); "
                "use a shorter window, or 'fixed-window' or 'moving-window'"
            )
    return None


def parse_limit_list(value: str | list[str] | tuple[str, ...], *, what: str) -> tuple[Quota, ...]:
    """Parse one limit string or a sequence of them (as configuration files give them)."""
    if isinstance(value, str):
        return parse_quotas(value)
    if isinstance(value, list | tuple):
        quotas: list[Quota] = []
        for item in value:
            quotas.extend(parse_quotas(item))
        return tuple(quotas)
    raise ConfigurationError(
        f"{what} must be a limit string or a list of them, got {value!r} ({type(value).__name__})"
    )


@lru_cache(maxsize=1024)
def checked_quotas(value: str, strategy: str) -> tuple[Quota, ...]:
    """``parse_quotas(value)``, refused (``ConfigurationError``) if ``strategy`` cannot count
    one of them exactly. Cached: limits returned per request cost a look-up once seen."""
    quotas = parse_quotas(value)
    for quota in quotas:
        problem = strategy_problem(quota, strategy)
        if problem is not None:
            raise ConfigurationError(f"limit {value!r} {problem}")
    return quotas
