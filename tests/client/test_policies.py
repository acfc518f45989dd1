"""Reading rate-limit headers (``ratemw/client/_policies.py``): each dialect as written,
hostile values, the problem body, and whatever ratemw's server side sends."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ratemw.client import Policy, parse_rate_limit
from ratemw.policy.decision import Decision, PolicyState
from ratemw.policy.headers import HEADER_MODES, rate_limit_headers
from ratemw.policy.problems import problem_body

NOW = 1_800_000_000.0


def p(name: str | None, quota: int | None, window: int | None, remaining: int | None,
      reset: float | None, dialect: str = "draft-10") -> Policy:  # fmt: skip
    return Policy(name, quota, window, remaining, reset, dialect)  # type: ignore[arg-type]


DIALECTS = [
    pytest.param({"RateLimit-Policy": '"per-minute";q=5;w=60, "per-hour";q=100;w=3600',
                  "RateLimit": '"per-minute";r=0;t=17, "per-hour";r=93;t=2410'},
                 [p("per-minute", 5, 60, 0, 17), p("per-hour", 100, 3600, 93, 2410)],
                 id="draft-10, as the contract shows it"),
    pytest.param({"RateLimit-Policy": "burst;q=100;w=60", "RateLimit": "burst;r=50;t=30"},
                 [p("burst", 100, 60, 50, 30)], id="draft-10 with token names"),
    pytest.param({"RateLimit-Policy": '"a";q=5;w=60;qu="requests";pk=:aGk=:'},
                 [p("a", 5, 60, None, None)], id="draft-10 policy alone, extra parameters"),
    pytest.param({"RateLimit": '"a";r=2;t=9'}, [p("a", None, None, 2, 9)],
                 id="draft-10 state alone"),
    pytest.param([("RateLimit-Policy", '"a";q=5;w=60'), ("RateLimit-Policy", '"b";q=9;w=1'),
                  ("RateLimit", '"b";r=0;t=1'), ("RateLimit", '"a";r=3;t=40')],
                 [p("a", 5, 60, 3, 40), p("b", 9, 1, 0, 1)],
                 id="draft-10 repeated lines are one list"),
    pytest.param({"RateLimit": '"a";r=1;t=5, "a";r=0;t=9'},
                 [p("a", None, None, 1, 5), p("a", None, None, 0, 9)],
                 id="draft-10 a repeated name is kept twice"),
    pytest.param({"RateLimit": '"a";r=-1;t=1.5, "b";r=?1;t="9", "c";r=999999999999999;t=0'},
                 [p("a", None, None, None, None), p("b", None, None, None, None),
                  p("c", None, None, 999_999_999_999_999, 0)],
                 id="draft-10 invalid parameter values are ignored one by one"),
    pytest.param({"RateLimit-Policy": '"a";q=5', "RateLimit": '"a";r=0;t=9999999999999999'},
                 [p("a", 5, None, None, None)], id="draft-10 a 16-digit t voids the field"),
    pytest.param({"RateLimit": '5;r=0;t=5, (a b);r=0, %"x";r=0;t=5, "ok";r=0;t=5'},
                 [p("ok", None, None, 0, 5)], id="draft-10 members that are not names"),
    pytest.param({"RateLimit": "limit=5, remaining=0, reset=2",
                  "RateLimit-Policy": "5;w=2, 100;w=3600"},
                 [p(None, 5, 2, 0, 2, "draft-7"), p(None, 100, 3600, None, None, "draft-7")],
                 id="draft-7"),
    pytest.param({"RateLimit": "limit=5, remaining=-1, reset=x"},
                 [p(None, 5, None, None, None, "draft-7")], id="draft-7 invalid members"),
    pytest.param({"RateLimit": "limit=5, remaining=0, reset="}, [], id="draft-7 unparsable"),
    pytest.param({"RateLimit-Limit": "5", "RateLimit-Remaining": "0", "RateLimit-Reset": "2",
                  "RateLimit-Policy": "5;w=2, 100;w=3600"},
                 [p(None, 5, 2, 0, 2, "draft-6"), p(None, 100, 3600, None, None, "draft-6")],
                 id="draft-6"),
    pytest.param({"RateLimit-Limit": "100, 100;w=60, 1000;w=3600", "RateLimit-Remaining": "9"},
                 [p(None, 100, None, 9, None, "draft-6")], id="draft-6 early limit list"),
    pytest.param([("RateLimit-Remaining", "1"), ("RateLimit-Remaining", "2"),
                  ("RateLimit-Limit", "5")],
                 [p(None, 5, None, None, None, "draft-6")], id="draft-6 repeats that disagree"),
    pytest.param({"X-RateLimit-Limit": "5000", "X-RateLimit-Remaining": "0",
                  "X-RateLimit-Reset": str(int(NOW) + 600), "X-RateLimit-Resource": "core",
                  "X-RateLimit-Used": "5000"},
                 [p("core", 5000, None, 0, 600, "legacy")], id="GitHub"),
    pytest.param({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(NOW) - 600)},
                 [p(None, None, None, 0, 0, "legacy")], id="legacy epoch in the past"),
    pytest.param({"X-RateLimit-Remaining": "3", "X-RateLimit-Reset": "42"},
                 [p(None, None, None, 3, 42, "legacy")], id="legacy reset in seconds"),
    pytest.param({"X-RateLimit-Reset": f"{int(NOW) + 1}.250"},
                 [p(None, None, None, None, 1.25, "legacy")], id="legacy epoch with a fraction"),
    pytest.param({"X-RateLimit-Limit": "lots", "X-RateLimit-Remaining": "-1",
                  "X-RateLimit-Reset": "soon"}, [], id="legacy garbage"),
    pytest.param({"RateLimit": '"a";r=0;t=5', "X-RateLimit-Remaining": "0",
                  "X-RateLimit-Reset": "5"},
                 [p("a", None, None, 0, 5), p(None, None, None, 0, 5, "legacy")],
                 id="two dialects at once"),
    pytest.param({"Content-Type": "text/plain"}, [], id="no rate-limit headers"),
]  # fmt: skip


@pytest.mark.parametrize(("headers", "expected"), DIALECTS)
def test_dialects(headers: Any, expected: list[Policy]) -> None:
    assert list(parse_rate_limit(headers, now=NOW)) == expected


PROBLEM = {
    "violated-policies": ["per-minute"],
    "retry_after": 17,
    "policies": [
        {"name": "per-minute", "quota": 5, "unit": "requests", "window": 60, "remaining": 0,
         "reset": 17},
    ],
}  # fmt: skip

BODIES = [
    pytest.param({}, json.dumps(PROBLEM).encode(), [p("per-minute", 5, 60, 0, 17, "problem")],
                 id="the body alone"),
    pytest.param({"RateLimit-Policy": '"per-minute";q=5;w=60'}, json.dumps(PROBLEM),
                 [p("per-minute", 5, 60, 0, 17)], id="the body fills in what headers leave out"),
    pytest.param({"RateLimit": '"per-minute";r=1;t=3'}, PROBLEM,
                 [p("per-minute", 5, 60, 1, 3)], id="the headers win where both speak"),
    pytest.param({"RateLimit": '"other";r=1;t=3'}, PROBLEM,
                 [p("other", None, None, 1, 3), p("per-minute", 5, 60, 0, 17, "problem")],
                 id="a policy only the body names is added"),
    pytest.param({}, {"policies": [{"name": 5}, "x", {"name": "n", "quota": -1, "reset": None,
                                                      "window": True}]},
                 [p("n", None, None, None, None, "problem")], id="hostile body policies"),
    pytest.param({}, b"not json", [], id="a body that is not JSON"),
]  # fmt: skip


@pytest.mark.parametrize(("headers", "body", "expected"), BODIES)
def test_problem_body(headers: dict[str, str], body: Any, expected: list[Policy]) -> None:
    assert list(parse_rate_limit(headers, body, now=NOW)) == expected


@pytest.mark.parametrize(
    ("remaining", "exhausted"),
    [pytest.param(0, True, id="0 left"), pytest.param(1, False, id="1 left"),
     pytest.param(None, False, id="not said")],
)  # fmt: skip
def test_exhausted(remaining: int | None, exhausted: bool) -> None:
    assert p("a", 5, 60, remaining, 3).exhausted is exhausted


# -- what ratemw's server side sends ----------------------------------------------------------


def _state(
    name: str, quota: int, window: int, remaining: int, reset: int, violated: bool
) -> PolicyState:
    return PolicyState(
        name=name, quota=quota, window=window, remaining=remaining, reset=reset,
        violated=violated, shadow=False, text=f"{quota} per {window} s", cost=1,
    )  # fmt: skip


REFUSED = Decision(
    allowed=False,
    policies=(
        _state("per-minute", 5, 60, 0, 17, violated=True),
        _state("per-hour", 100, 3600, 93, 2410, violated=False),
    ),
    retry_after=17,
)


@pytest.mark.parametrize("mode", [pytest.param(mode, id=mode) for mode in HEADER_MODES])
def test_reads_every_dialect_ratemw_writes(mode: str) -> None:
    headers = rate_limit_headers(REFUSED, mode, int(NOW))
    read = parse_rate_limit(headers, now=NOW)
    binding = read[0]
    assert (binding.remaining, binding.reset, binding.dialect) == (0, 17, mode)
    assert binding.quota == 5
    if mode == "draft-10":
        assert [(x.name, x.quota, x.window, x.remaining, x.reset) for x in read] == [
            ("per-minute", 5, 60, 0, 17),
            ("per-hour", 100, 3600, 93, 2410),
        ]


def test_reads_ratemw_s_problem_body() -> None:
    body = json.dumps(problem_body(REFUSED, "GET", "/search"))
    assert parse_rate_limit({}, body) == (p("per-minute", 5, 60, 0, 17, "problem"),)


@settings(max_examples=300, deadline=None)
@given(
    headers=st.lists(
        st.tuples(
            st.sampled_from(["RateLimit", "RateLimit-Policy", "RateLimit-Limit",
                             "RateLimit-Remaining", "RateLimit-Reset", "X-RateLimit-Limit",
                             "X-RateLimit-Remaining", "X-RateLimit-Reset"]),
            st.text(max_size=40),
        ),
        max_size=5,
    ),
    body=st.one_of(st.none(), st.binary(max_size=40), st.text(max_size=40)),
)  # fmt: skip
def test_never_raises(headers: list[tuple[str, str]], body: bytes | str | None) -> None:
    for policy in parse_rate_limit(headers, body):
        assert all(
            value is None or value >= 0
            for value in (policy.quota, policy.window, policy.remaining, policy.reset)
        )
