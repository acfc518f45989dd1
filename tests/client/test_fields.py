"""Plain header values (``ratemw/client/_fields.py``): header collections, numbers,
``Retry-After`` and JSON bodies, each read strictly and never raising."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st
from requests.structures import CaseInsensitiveDict

from ratemw.client._fields import fields, http_date, json_object, number, retry_after

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z
WANTED = frozenset({"retry-after", "ratelimit"})

COLLECTIONS = [
    pytest.param({"Retry-After": "5", "Other": "x"}, {"retry-after": ["5"]}, id="dict"),
    pytest.param([("RateLimit", '"a";r=1'), ("ratelimit", '"b";r=0')],
                 {"ratelimit": ['"a";r=1', '"b";r=0']}, id="pairs keep repeats apart"),
    pytest.param(httpx.Headers([("RateLimit", '"a";r=1'), ("RateLimit", '"b";r=0')]),
                 {"ratelimit": ['"a";r=1', '"b";r=0']}, id="httpx.Headers keeps repeats apart"),
    pytest.param(CaseInsensitiveDict({"RETRY-AFTER": "5"}), {"retry-after": ["5"]},
                 id="requests' headers"),
    pytest.param([(b"Retry-After", b"7")], {"retry-after": ["7"]}, id="bytes pairs"),
    pytest.param([("Retry-After",), (1, 2), "ab", ("Retry-After", None)], {},
                 id="malformed pairs are skipped"),
]  # fmt: skip


@pytest.mark.parametrize(("headers", "expected"), COLLECTIONS)
def test_fields(headers: Any, expected: dict[str, list[str]]) -> None:
    assert fields(headers, WANTED) == expected


def test_requests_joins_repeated_headers_itself() -> None:
    response = requests.Response()
    response.headers = CaseInsensitiveDict({"Retry-After": "5, 5"})
    assert number(fields(response.headers, WANTED)["retry-after"]) == 5


NUMBERS = [
    pytest.param(["5"], False, 5, id="integer"),
    pytest.param(["5", "5"], False, 5, id="repeats that agree"),
    pytest.param(["5, 5"], False, 5, id="joined repeats that agree"),
    pytest.param([" 5\t"], False, 5, id="spaces and tabs around"),
    pytest.param(["0"], False, 0, id="zero"),
    pytest.param(["999999999999999"], False, 999_999_999_999_999, id="fifteen digits"),
    pytest.param(["12.5"], True, 12.5, id="a decimal where allowed"),
    pytest.param(["5", "6"], False, None, id="repeats that disagree"),
    pytest.param(["5, 6"], False, None, id="joined repeats that disagree"),
    pytest.param(["12.5"], False, None, id="a decimal where not allowed"),
    pytest.param(["-1"], False, None, id="negative"),
    pytest.param(["+1"], False, None, id="plus sign"),
    pytest.param(["1e3"], False, None, id="exponent"),
    pytest.param(["NaN"], True, None, id="NaN"),
    pytest.param(["inf"], True, None, id="infinity"),
    pytest.param(["1_000"], False, None, id="underscore"),
    pytest.param(["\uff11\uff12"], False, None, id="full-width digits"),
    pytest.param(["\u0661"], False, None, id="Arabic-Indic digit"),
    pytest.param(["9" * 16], False, None, id="sixteen digits"),
    pytest.param(["9" * 5000], False, None, id="five thousand digits"),
    pytest.param([""], False, None, id="empty"),
    pytest.param([], False, None, id="absent"),
]


@pytest.mark.parametrize(("values", "decimal", "expected"), NUMBERS)
def test_number(values: list[str], decimal: bool, expected: float | None) -> None:
    assert number(values, decimal=decimal) == expected


DATES = [
    pytest.param("Sun, 06 Nov 1994 08:49:37 GMT", 784111777.0, id="IMF-fixdate"),
    pytest.param("Sunday, 06-Nov-94 08:49:37 GMT", 784111777.0, id="RFC 850"),
    pytest.param("Sun Nov  6 08:49:37 1994", 784111777.0, id="asctime"),
    pytest.param("Wednesday, 01-Jan-76 00:00:00 GMT", 3345062400.0,
                 id="RFC 850 year up to 50 years ahead: this century (2076)"),
    pytest.param("Sunday, 01-Jan-78 00:00:00 GMT", 252460800.0,
                 id="RFC 850 year more than 50 years ahead: the last century (1978)"),
    pytest.param("Thu, 29 Feb 2024 00:00:00 GMT", 1709164800.0, id="leap day"),
    pytest.param("Fri, 31 Dec 9999 23:59:59 GMT", 253402300799.0, id="year 9999"),
    pytest.param("Wed, 29 Feb 2023 00:00:00 GMT", None, id="no such day"),
    pytest.param("Sun, 06 Nov 1994 24:00:00 GMT", None, id="hour 24"),
    pytest.param("Sun, 06 Nov 1994 08:49:37 UTC", None, id="not GMT"),
    pytest.param("Sun, 6 Nov 1994 08:49:37 GMT", None, id="one-digit day"),
    pytest.param("Sun, 06 Foo 1994 08:49:37 GMT", None, id="no such month"),
    pytest.param("Sun, 06 Nov 0000 08:49:37 GMT", None, id="year 0"),
    pytest.param("1994-11-06T08:49:37Z", None, id="ISO 8601"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), DATES)
def test_http_date(text: str, expected: float | None) -> None:
    assert http_date(text, NOW) == expected


RETRY_AFTER = [
    pytest.param(["120"], 120.0, id="seconds"),
    pytest.param(["Fri, 15 Jan 2027 08:00:30 GMT"], 30.0, id="a date 30 s ahead"),
    pytest.param(["Sun, 06 Nov 1994 08:49:37 GMT"], 0.0, id="a date in the past: now"),
    pytest.param(["Fri, 15 Jan 2027 08:00:30 GMT"] * 2, 30.0, id="repeated dates that agree"),
    pytest.param(["Fri, 15 Jan 2027 08:00:30 GMT", "Fri, 15 Jan 2027 08:00:31 GMT"], None,
                 id="repeated dates that disagree"),
    pytest.param(["Fri, 15 Jan 2027 08:00:30 GMT, Fri, 15 Jan 2027 08:00:30 GMT"], None,
                 id="dates joined by a comma cannot be told apart"),
    pytest.param(["-5"], None, id="negative"),
    pytest.param(["soon"], None, id="garbage"),
    pytest.param(None, None, id="absent"),
]  # fmt: skip


@pytest.mark.parametrize(("values", "expected"), RETRY_AFTER)
def test_retry_after(values: list[str] | None, expected: float | None) -> None:
    assert retry_after(values, NOW) == expected


JSON = [
    pytest.param(b'{"a": 1}', {"a": 1}, id="object"),
    pytest.param('{"a": 1}', {"a": 1}, id="text"),
    pytest.param({"a": 1}, {"a": 1}, id="already decoded"),
    pytest.param(b"[1]", None, id="array"),
    pytest.param(b"", None, id="empty"),
    pytest.param(b"\xff", None, id="not UTF-8"),
    pytest.param(b"[" * 100_000, None, id="too deep"),
    pytest.param(b'{"a": ' + b"1" * 5000 + b"}", None, id="a number too long to convert"),
    pytest.param(None, None, id="no body"),
]


@pytest.mark.parametrize(("body", "expected"), JSON)
def test_json_object(body: Any, expected: dict[str, Any] | None) -> None:
    assert json_object(body) == expected


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=40), max_size=3))
def test_nothing_here_raises(values: list[str]) -> None:
    number(values)
    number(values, decimal=True)
    retry_after(values, NOW)
    for value in values:
        http_date(value, NOW)
