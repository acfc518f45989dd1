"""Quotas on the calendar: per calendar day, week, month or year, in a time zone.

A calendar quota is counted in a window that starts and ends on the calendar's boundaries
(local midnight; Monday for weeks; the 1st, or the caller's billing day, for months; 1
January for years), whatever the day's length (23 or 25 hours across a daylight-saving
change) or the month's. Every period has its own count: the period is part of the storage
key, and the count expires at the period's end.

Written in limit strings::

    "1000 per calendar day"                      # UTC
    "1000/calendar day in Europe/Berlin"
    "50000 per calendar month in America/New_York"

or, for months that start on a billing day (the 31st becomes the last day of shorter
months), as an object::

    Calendar(50_000, "month", zone="America/New_York", billing_day=lambda request: 15)
"""

from __future__ import annotations

import calendar as _calendar
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ratemw.errors import ConfigurationError

__all__ = ["NOMINAL", "PERIODS", "Calendar", "CalendarPeriod", "parse_calendar", "period_of"]

PERIODS = ("day", "week", "month", "year")
#: A period's nominal length in seconds: for bounds, and until a request dates it.
NOMINAL = {"day": 86_400, "week": 604_800, "month": 2_678_400, "year": 31_622_400}
_ITEM = re.compile(
    r"^\s*(?P<amount>\d+)\s*(?:/|\bper\b)\s*calendar\s+(?P<period>day|week|month|year)s?"
    r"(?:\s+in\s+(?P<zone>[A-Za-z0-9_+\-/]+))?\s*$",
    re.IGNORECASE,
)


@lru_cache(maxsize=64)
def zone_info(zone: str) -> ZoneInfo:
    """The IANA time zone ``zone`` (``ConfigurationError`` for one that does not exist)."""
    try:
        return ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigurationError(
            f"unknown time zone {zone!r}: expected an IANA name such as 'Europe/Berlin' or 'UTC'"
        ) from None


@dataclass(frozen=True, slots=True)
class CalendarPeriod:
    """Which calendar a quota counts by (on ``Quota.calendar``)."""

    period: str
    zone: str = "UTC"
    #: The day months start on (1-31: the last day of shorter months), or a callable of the
    #: request returning it; ``None``: the 1st.
    billing_day: int | Callable[[Any], Any] | None = None


def parse_calendar(item: str) -> tuple[int, CalendarPeriod] | None:
    """``"1000 per calendar day in Europe/Berlin"`` as (1000, its period); ``None`` if the
    item is not a calendar quota."""
    found = _ITEM.match(item)
    if found is None:
        if "calendar" in item.lower():
            raise ConfigurationError(
                f"invalid calendar limit {item.strip()!r}: expected e.g. '1000 per calendar "
                "day', '1000/calendar week in Europe/Berlin' (day, week, month or year)"
            )
        return None
    zone = found["zone"] or "UTC"
    zone_info(zone)
    return int(found["amount"]), CalendarPeriod(found["period"].lower(), zone)


def valid_billing_day(value: Any) -> int | None:
    """A billing day a callable returned: a whole number 1-31; ``None`` if it is not one."""
    if type(value) is int and 1 <= value <= 31:
        return value
    return None


def _local_midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=zone)


def _month_start(year: int, month: int, billing_day: int) -> date:
    last = _calendar.monthrange(year, month)[1]
    return date(year, month, min(billing_day, last))


def _next_month(year: int, month: int) -> tuple[int, int]:
    return (year + 1, 1) if month == 12 else (year, month + 1)


def _previous_month(year: int, month: int) -> tuple[int, int]:
    return (year - 1, 12) if month == 1 else (year, month - 1)


def period_of(now_ms: int, calendar: CalendarPeriod, billing_day: int = 1) -> tuple[str, int, int]:
    """The period ``now_ms`` falls in: ``(its name, its start, its end)`` in epoch ms.

    The name (``"d2026-03-29"``, ``"w2026-03-23"``, ``"m2026-01-31"``, ``"y2026"``) tells
    periods apart in storage keys.
    """
    zone = zone_info(calendar.zone)
    today = datetime.fromtimestamp(now_ms / 1000, zone).date()
    period = calendar.period
    if period == "day":
        start, end = today, today + timedelta(days=1)
        name = f"d{start.isoformat()}"
    elif period == "week":
        start = today - timedelta(days=today.weekday())  # Monday
        end = start + timedelta(days=7)
        name = f"w{start.isoformat()}"
    elif period == "month":
        start = _month_start(today.year, today.month, billing_day)
        if today < start:
            start = _month_start(*_previous_month(today.year, today.month), billing_day)
        end = _month_start(*_next_month(start.year, start.month), billing_day)
        name = f"m{start.isoformat()}"
    else:
        start, end = date(today.year, 1, 1), date(today.year + 1, 1, 1)
        name = f"y{start.year}"
    start_ms = round(_local_midnight(start, zone).timestamp() * 1000)
    end_ms = round(_local_midnight(end, zone).timestamp() * 1000)
    return name, start_ms, end_ms


class Calendar:
    """A calendar quota as an object: for months that start on a billing day.

    Pass it as the limit of ``Limiter.limit``, ``shared_limit`` or a ``Rule``.

    Example::

        def billing_day(request) -> int:
            return tenants[request.headers["X-Tenant"]].billing_day   # 1-31

        @limiter.limit(Calendar(50_000, "month", zone="America/New_York",
                                billing_day=billing_day))
        async def export(request): ...

    Args:
        amount: the quota, per period.
        period: ``"day"``, ``"week"`` (from Monday), ``"month"`` or ``"year"``.
        zone: the IANA time zone the calendar is read in (default ``"UTC"``).
        billing_day: for months: the day they start on (1-31; the 31st is the last day of
            shorter months), or a callable of the request returning it (sync). A callable
            that fails, or returns what is not a day, counts months from the 1st (logged once
            per incident).
    """

    def __init__(
        self,
        amount: int,
        period: str,
        *,
        zone: str = "UTC",
        billing_day: int | Callable[[Any], Any] | None = None,
    ) -> None:
        if type(amount) is not int or amount < 1:
            raise ConfigurationError(
                f"invalid calendar amount {amount!r}: expected a whole number >= 1"
            )
        if period not in PERIODS:
            raise ConfigurationError(
                f"invalid calendar period {period!r}: expected one of {list(PERIODS)}"
            )
        if not isinstance(zone, str):
            raise ConfigurationError(f"invalid time zone {zone!r}: expected an IANA name")
        zone_info(zone)
        if billing_day is not None:
            if period != "month":
                raise ConfigurationError(
                    f"billing_day applies to months, not to a calendar {period}"
                )
            if not callable(billing_day) and valid_billing_day(billing_day) is None:
                raise ConfigurationError(
                    f"invalid billing_day {billing_day!r}: expected a day 1-31 or a callable "
                    "of the request returning one"
                )
        self.amount = amount
        self.period = CalendarPeriod(period, zone, billing_day)

    def __repr__(self) -> str:
        billing = self.period.billing_day
        extra = "" if billing is None else f", billing_day={billing!r}"
        return f"Calendar({self.amount}, {self.period.period!r}, zone={self.period.zone!r}{extra})"

    @property
    def text(self) -> str:
        """The calendar quota as a sentence, for messages."""
        unit = "request" if self.amount == 1 else "requests"
        billing = self.period.billing_day
        anchor = "" if billing is None else " from the billing day"
        return (
            f"{self.amount} {unit} per calendar {self.period.period}{anchor} ({self.period.zone})"
        )
