"""Parsing limit strings such as ``"5/minute;100/hour"`` into quotas."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import limits

from ratemw._exceptions import ConfigurationError


@dataclass(frozen=True, slots=True)
class Quota:
    """One quota: ``amount`` units per ``window`` seconds.

    ``name`` is the policy name sent in the ``RateLimit`` headers (``"per-minute"``,
    ``"per-5-seconds"``); ``text`` is the spelled-out form used in error details
    (``"5 requests per 1 minute"``).
    """

    amount: int
    window: int
    name: str
    text: str

    @property
    def window_ms(self) -> int:
        return self.window * 1000


def _quota_from_item(item: limits.RateLimitItem) -> Quota:
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
    return Quota(
        amount=amount,
        window=int(item.get_expiry()),
        name=name,
        text=f"{amount} {unit} per {span}",
    )


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
    try:
        items = limits.parse_many(value)
    except ValueError as exc:
        raise ConfigurationError(
            f"invalid limit {value!r}: {exc}; expected e.g. '5/minute', '10 per 5 seconds' "
            "or several joined by ';'"
        ) from None
    quotas = tuple(_quota_from_item(item) for item in items)
    for quota in quotas:
        if quota.amount < 1:
            raise ConfigurationError(
                f"invalid limit {value!r}: a quota must allow at least 1 request "
                "(use Limiter.exempt or a route rule to block or free a route instead)"
            )
    return quotas


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
