"""Calendar quotas: per calendar day, week, month or year, in a time zone, with billing days.

Boundaries across daylight-saving changes (Europe/Berlin, America/New_York), month ends and a
billing day of 31; ``Retry-After``, ``RateLimit`` and the body exact at each boundary.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from ratemw import Calendar, ConfigurationError, Limiter, RateLimitMiddleware
from ratemw.policy.calendar import CalendarPeriod, period_of
from ratemw.testing import FakeClock
from tests.redis_servers import RedisServer

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def at(zone: ZoneInfo, *when: int) -> float:
    """Epoch seconds of a local wall-clock time."""
    return datetime(*when, tzinfo=zone).timestamp()  # type: ignore[misc]


def local(ms: int, zone: ZoneInfo) -> str:
    return datetime.fromtimestamp(ms / 1000, zone).strftime("%Y-%m-%d %H:%M")


# -- the periods ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "when", "start", "end", "hours"),
    [
        # Berlin springs forward on 2026-03-29 (23 hours) and falls back on 10-25 (25 hours).
        ("Europe/Berlin", (2026, 3, 29, 1, 30), "2026-03-29 00:00", "2026-03-30 00:00", 23),
        ("Europe/Berlin", (2026, 3, 29, 12, 0), "2026-03-29 00:00", "2026-03-30 00:00", 23),
        ("Europe/Berlin", (2026, 10, 25, 2, 30), "2026-10-25 00:00", "2026-10-26 00:00", 25),
        ("Europe/Berlin", (2026, 3, 28, 23, 59), "2026-03-28 00:00", "2026-03-29 00:00", 24),
        # New York springs forward on 2026-03-08 and falls back on 11-01.
        ("America/New_York", (2026, 3, 8, 3, 30), "2026-03-08 00:00", "2026-03-09 00:00", 23),
        ("America/New_York", (2026, 11, 1, 1, 30), "2026-11-01 00:00", "2026-11-02 00:00", 25),
    ],
)
def test_calendar_days_across_daylight_saving(
    zone: str, when: tuple[int, ...], start: str, end: str, hours: int
) -> None:
    info = ZoneInfo(zone)
    name, start_ms, end_ms = period_of(round(at(info, *when) * 1000), CalendarPeriod("day", zone))
    assert (local(start_ms, info), local(end_ms, info)) == (start, end)
    assert end_ms - start_ms == hours * 3_600_000
    assert name == "d" + start[:10]


def test_weeks_start_on_monday_and_years_on_january_first() -> None:
    week = CalendarPeriod("week", "Europe/Berlin")
    name, start, end = period_of(round(at(BERLIN, 2026, 3, 29, 23, 0) * 1000), week)  # Sunday
    assert (name, local(start, BERLIN), local(end, BERLIN)) == (
        "w2026-03-23", "2026-03-23 00:00", "2026-03-30 00:00"
    )  # fmt: skip
    assert end - start == (7 * 24 - 1) * 3_600_000  # the week with the spring change
    year = CalendarPeriod("year", "America/New_York")
    name, start, end = period_of(round(at(NEW_YORK, 2026, 12, 31, 23, 59) * 1000), year)
    assert (name, local(end, NEW_YORK)) == ("y2026", "2027-01-01 00:00")


@pytest.mark.parametrize(
    ("when", "billing_day", "start", "end"),
    [
        ((2026, 1, 31, 12), 1, "2026-01-01", "2026-02-01"),
        ((2026, 2, 28, 23), 1, "2026-02-01", "2026-03-01"),
        ((2028, 2, 29, 12), 1, "2028-02-01", "2028-03-01"),  # a leap year
        # Billing on the 31st: the last day of shorter months.
        ((2026, 1, 30, 12), 31, "2025-12-31", "2026-01-31"),
        ((2026, 1, 31, 0), 31, "2026-01-31", "2026-02-28"),
        ((2026, 2, 27, 23), 31, "2026-01-31", "2026-02-28"),
        ((2026, 2, 28, 0), 31, "2026-02-28", "2026-03-31"),
        ((2026, 4, 30, 1), 31, "2026-04-30", "2026-05-31"),
        ((2028, 2, 29, 0), 31, "2028-02-29", "2028-03-31"),
        ((2026, 12, 15, 0), 15, "2026-12-15", "2027-01-15"),
        ((2026, 1, 14, 23), 15, "2025-12-15", "2026-01-15"),
    ],
)
def test_months_and_billing_days(
    when: tuple[int, ...], billing_day: int, start: str, end: str
) -> None:
    month = CalendarPeriod("month", "UTC")
    utc = ZoneInfo("UTC")
    name, start_ms, end_ms = period_of(round(at(utc, *when) * 1000), month, billing_day)
    assert (local(start_ms, utc)[:10], local(end_ms, utc)[:10]) == (start, end)
    assert name == f"m{start}"


# -- counted by a limiter -------------------------------------------------------------------


def test_retry_after_is_exact_to_the_boundary_across_a_dst_change() -> None:
    clock = FakeClock(start=at(BERLIN, 2026, 3, 28, 23, 59, 30))
    limiter = Limiter(clock=clock)
    limit = "2 per calendar day in Europe/Berlin"
    assert [limiter.hit("k", limit).allowed for _ in range(3)] == [True, True, False]
    assert limiter.peek("k", limit).retry_after == 30
    clock.advance(30)  # midnight: a new day (of 23 hours)
    first = limiter.hit("k", limit)
    assert first.allowed
    assert (first.policies[0].window, first.policies[0].reset) == (82_800, 82_800)
    limiter.hit("k", limit)
    clock.advance(3 * 3600)  # 03:00 local: the clocks jumped from 02:00 to 03:00
    refused = limiter.hit("k", limit)
    assert (refused.allowed, refused.retry_after) == (False, 20 * 3600)


def test_a_long_autumn_day_in_new_york() -> None:
    clock = FakeClock(start=at(NEW_YORK, 2026, 11, 1, 0, 30))
    limiter = Limiter(clock=clock)
    limiter.hit("k", "1/calendar day in America/New_York")
    refused = limiter.hit("k", "1/calendar day in America/New_York")
    assert refused.retry_after == 24 * 3600 + 1800  # 24.5 hours: the day has 25


def test_headers_and_body_through_the_middleware() -> None:
    clock = FakeClock(start=at(BERLIN, 2026, 3, 29, 18, 0))
    limiter = Limiter(clock=clock)

    @limiter.limit("2 per calendar day in Europe/Berlin;10/minute")
    async def report(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/report", report)])
    app.add_middleware(RateLimitMiddleware, limiter=limiter)
    client = TestClient(app)
    first = client.get("/report")
    assert first.headers["ratelimit-policy"] == (
        '"per-calendar-day";q=2;w=82800, "per-minute";q=10;w=60'
    )
    assert first.headers["ratelimit"] == '"per-calendar-day";r=1;t=21600, "per-minute";r=9;t=60'
    client.get("/report")
    clock.advance(60)
    refused = client.get("/report")
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "21540"
    day = refused.json()["policies"][0]
    assert (day["name"], day["window"], day["reset"]) == ("per-calendar-day", 82800, 21540)
    assert "per calendar day (Europe/Berlin)" in refused.json()["detail"]
    clock.advance(21540)
    assert client.get("/report").status_code == 200


def test_whatever_the_limiters_strategy_and_with_costs() -> None:
    clock = FakeClock(start=at(ZoneInfo("UTC"), 2026, 5, 10, 12, 0))
    limiter = Limiter(clock=clock, strategy="gcra")
    assert limiter.hit("k", "10 per calendar week", cost=7).allowed
    refused = limiter.hit("k", "10 per calendar week", cost=4)
    assert (refused.allowed, refused.policies[0].remaining) == (False, 3)
    assert refused.retry_after == 12 * 3600  # Monday 00:00 UTC
    assert limiter.hit("k", "10 per calendar week", cost=3).allowed


def test_a_billing_day_per_caller(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(start=at(ZoneInfo("UTC"), 2026, 2, 27, 12, 0))
    limiter = Limiter(clock=clock)
    days = {"a": 31, "b": 1, "c": "soon"}

    def billing_day(request: Any) -> Any:
        return days[request.headers["x-tenant"]]

    def tenant(request: Any) -> Any:
        return request.headers["x-tenant"]

    @limiter.limit(Calendar(1, "month", billing_day=billing_day), key=tenant)
    async def export(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/export", export)])
    app.add_middleware(RateLimitMiddleware, limiter=limiter)
    client = TestClient(app)
    with caplog.at_level(logging.WARNING, logger="ratemw"):
        assert client.get("/export", headers={"X-Tenant": "a"}).status_code == 200
        refused = client.get("/export", headers={"X-Tenant": "a"})
        assert refused.headers["retry-after"] == str(12 * 3600)  # the 28th: a's new month
        assert client.get("/export", headers={"X-Tenant": "b"}).status_code == 200
        refused = client.get("/export", headers={"X-Tenant": "b"})
        assert refused.headers["retry-after"] == str(36 * 3600)  # 1 March
        # A billing day that is not one counts the month from the 1st, logged once.
        assert client.get("/export", headers={"X-Tenant": "c"}).status_code == 200
        for _ in range(3):
            refused = client.get("/export", headers={"X-Tenant": "c"})
            assert refused.headers["retry-after"] == str(36 * 3600)
    assert len([r for r in caplog.records if "billing_day" in r.getMessage()]) == 1
    # The next period starts each tenant's count afresh.
    clock.advance(12 * 3600)
    assert client.get("/export", headers={"X-Tenant": "a"}).status_code == 200
    assert client.get("/export", headers={"X-Tenant": "b"}).status_code == 429


def test_calendar_quotas_on_redis(redis_standalone_clean: RedisServer) -> None:
    if 86400 - time.time() % 86400 < 5:  # the real clock: not across a UTC midnight
        time.sleep(6)
    limiter = Limiter(storage=redis_standalone_clean.url)
    assert limiter.hit("k", "1 per calendar day").allowed
    refused = limiter.hit("k", "1 per calendar day")
    now = time.time()
    to_midnight = 86400 - int(now) % 86400
    assert refused.retry_after is not None and abs(refused.retry_after - to_midnight) <= 2
    redis = redis_standalone_clean.client()
    (key,) = redis.keys("*calendar*") or redis.keys("*")
    assert 0 < redis.pttl(key) <= to_midnight * 1000 + 2000
    limiter.backends.sync.close()


# -- writing them ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "name", "window"),
    [
        ("1000 per calendar day", "per-calendar-day", 86400),
        ("1000/calendar day in Europe/Berlin", "per-calendar-day", 86400),
        ("5 per Calendar Weeks in America/New_York", "per-calendar-week", 604800),
        ("50000 per calendar month in UTC", "per-calendar-month", 2678400),
        ("1/calendar year", "per-calendar-year", 31622400),
    ],
)
def test_the_grammar(text: str, name: str, window: int) -> None:
    (policy,) = Limiter().peek("k", text).policies
    assert policy.name == name
    assert policy.window <= window  # the period's own length once dated


@pytest.mark.parametrize(
    "text",
    [
        "1000 per calendar fortnight",
        "1000 per calendar day in Mars/Olympus",
        "1000 per calendar day in ",
        "1000 calendar day",
        "1000 per calendar day burst 5",
        "0 per calendar day",
    ],
)
def test_bad_calendar_limits_are_configuration_errors(text: str) -> None:
    with pytest.raises(ConfigurationError):
        Limiter(default_limits=text)


@pytest.mark.parametrize(
    "arguments",
    [
        {"amount": 0, "period": "day"},
        {"amount": 1.5, "period": "day"},
        {"amount": 5, "period": "fortnight"},
        {"amount": 5, "period": "day", "zone": "Nowhere/City"},
        {"amount": 5, "period": "day", "billing_day": 3},
        {"amount": 5, "period": "month", "billing_day": 32},
        {"amount": 5, "period": "month", "billing_day": 0},
    ],
    ids=repr,
)
def test_the_calendar_object_is_checked(arguments: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        Calendar(**arguments)


def test_calendar_objects_in_limits_and_rules() -> None:
    from ratemw import Rule

    calendar = Calendar(3, "month", zone="Europe/Berlin", billing_day=15)
    assert "Calendar(3, 'month'" in repr(calendar)
    limiter = Limiter(default_limits=calendar, rules=[Rule("/x", calendar)])
    assert limiter.engine.settings.default_groups[0].quotas[0].calendar is not None
