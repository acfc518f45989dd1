"""Plain header values a client reads: header collections, numbers, ``Retry-After``, JSON bodies.

Everything here is lenient in what it accepts as input types and strict about values: a value
that is not exactly what the specification allows is ignored (``None``), never guessed at and
never a reason to raise.
"""

from __future__ import annotations

import calendar
import json
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any, TypeAlias

__all__ = [
    "Fields",
    "HeadersLike",
    "fields",
    "http_date",
    "json_object",
    "number",
    "retry_after",
]

HeadersLike: TypeAlias = Mapping[str, str] | Iterable[tuple[str, str]]
"""A response's headers: ``httpx.Headers``, ``requests``' headers, a ``dict``, or pairs."""

Fields: TypeAlias = dict[str, list[str]]
"""Lower-cased header name -> every value sent under it, in order."""

# Longer numbers are refused: RFC 9651 caps integers at 15 digits, and Python would refuse to
# convert a few thousand digits at all.
_DIGITS = re.compile(r"[0-9]{1,15}", re.ASCII)
_DECIMAL = re.compile(r"[0-9]{1,15}(?:\.[0-9]{1,9})?", re.ASCII)

_DAYS = r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH = "(?P<month>" + "|".join(_MONTHS) + ")"
_TIME = r"(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2}):(?P<second>[0-9]{2})"
# The three forms RFC 9110 (section 5.6.7) obliges a recipient to accept.
_IMF_FIXDATE = re.compile(
    rf"{_DAYS}, (?P<day>[0-9]{{2}}) {_MONTH} (?P<year>[0-9]{{4}}) {_TIME} GMT", re.ASCII
)
_RFC850 = re.compile(
    r"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), "
    rf"(?P<day>[0-9]{{2}})-{_MONTH}-(?P<year>[0-9]{{2}}) {_TIME} GMT",
    re.ASCII,
)
_ASCTIME = re.compile(
    rf"{_DAYS} {_MONTH} (?P<day>[ 0-9][0-9]) {_TIME} (?P<year>[0-9]{{4}})", re.ASCII
)


def _text(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return None


def fields(headers: HeadersLike, wanted: frozenset[str]) -> Fields:
    """The values of the ``wanted`` (lower-case) headers in ``headers``.

    Repeated headers keep every value where the collection kept them apart (``httpx.Headers``,
    pairs); ``requests`` and ``urllib3`` join them with ``", "`` themselves.
    """
    multi_items = getattr(headers, "multi_items", None)
    if callable(multi_items):
        pairs: Iterable[Any] = multi_items()
    elif isinstance(headers, Mapping):
        pairs = headers.items()
    else:
        pairs = headers
    found: Fields = {}
    for pair in pairs:
        try:
            raw_name, raw_value = pair
        except (TypeError, ValueError):
            continue
        name, value = _text(raw_name), _text(raw_value)
        if name is None or value is None:
            continue
        name = name.strip().lower()
        if name in wanted:
            found.setdefault(name, []).append(value)
    return found


def number(values: list[str] | None, *, decimal: bool = False) -> float | None:
    """The one non-negative number that every value (and comma-separated part) agrees on.

    ``"5"`` and ``["5", "5"]`` and ``"5, 5"`` are 5; ``"5, 6"``, ``"-1"``, ``"1e3"``, ``"NaN"``,
    full-width digits and twenty digits are ``None``. ``decimal`` allows a fraction (``"12.5"``).
    """
    if not values:
        return None
    pattern = _DECIMAL if decimal else _DIGITS
    found: set[float] = set()
    for value in values:
        for part in value.split(","):
            part = part.strip(" \t")
            if not pattern.fullmatch(part):
                return None
            found.add(float(part) if decimal else int(part))
    return found.pop() if len(found) == 1 else None


def http_date(value: str, now: float) -> float | None:
    """An HTTP-date (RFC 9110, any of its three forms) as epoch seconds, or ``None``.

    ``now`` (epoch seconds) resolves the two-digit years of the obsolete RFC 850 form.
    """
    value = value.strip(" \t")
    match = _IMF_FIXDATE.fullmatch(value) or _ASCTIME.fullmatch(value)
    two_digit = match is None
    match = match or _RFC850.fullmatch(value)
    if match is None:
        return None
    parts = {name: int(text) for name, text in match.groupdict().items() if name != "month"}
    year, day = parts["year"], parts["day"]
    if two_digit:
        # RFC 9110: a year more than 50 years ahead is the most recent past one.
        this_year = time.gmtime(now).tm_year
        year += this_year - this_year % 100
        if year > this_year + 50:
            year -= 100
    month = _MONTHS.index(match["month"]) + 1
    if year < 1 or not 1 <= day <= calendar.monthrange(year, month)[1]:
        return None
    if parts["hour"] > 23 or parts["minute"] > 59 or parts["second"] > 60:
        return None
    stamp = (year, month, day, parts["hour"], parts["minute"], parts["second"], 0, 0, 0)
    return float(calendar.timegm(stamp))


def retry_after(values: list[str] | None, now: float) -> float | None:
    """``Retry-After`` as seconds from ``now`` (epoch seconds): 0 for a date in the past.

    Delta-seconds or an HTTP-date; repeated values must agree; anything else is ``None``.
    """
    if not values:
        return None
    seconds = number(values)
    if seconds is not None:
        return float(seconds)
    dates = {http_date(value, now) for value in values}
    if len(dates) != 1:
        return None
    date = dates.pop()
    return None if date is None else max(date - now, 0.0)


def json_object(body: bytes | str | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``body`` as a JSON object, or ``None`` when it is not one (or nests too deep)."""
    if body is None:
        return None
    if isinstance(body, Mapping):
        return dict(body)
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    return data if isinstance(data, dict) else None
