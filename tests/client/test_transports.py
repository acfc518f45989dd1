"""The transports (``ratemw/client/_httpx.py``, ``_requests.py``), each test run through every
client: httpx and httpx2, sync and async, and requests. No test sleeps: time is fake."""

from __future__ import annotations

import email.utils
import inspect
import json
import threading
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ratemw.client import AsyncRateLimitTransport, RateLimitAdapter, RateLimitTransport
from tests.client._drivers import EACH_DRIVER, URL, Call, FakeTime, Reply, Script, drive

OK = Reply(200, [("Content-Type", "text/plain")], b"ok")


def problem(retry_after: int = 2) -> dict[str, Any]:
    """ratemw's problem+json body for a 429 with this ``Retry-After``."""
    return {
        "type": "https://iana.org/assignments/http-problem-types#quota-exceeded",
        "title": "Request cannot be satisfied as assigned quota has been exceeded",
        "status": 429,
        "detail": "Rate limit exceeded: 5 requests per 1 minute on GET /search. "
                  f"Try again in {retry_after} seconds.",
        "instance": "/search",
        "violated-policies": ["per-minute"],
        "retry_after": retry_after,
        "policies": [
            {"name": "per-minute", "quota": 5, "unit": "requests", "window": 60,
             "remaining": 0, "reset": retry_after}
        ],
    }  # fmt: skip


def draft10(remaining: int, reset: int | str, name: str = "per-minute") -> list[tuple[str, str]]:
    return [
        ("RateLimit-Policy", f'"{name}";q=5;w=60, "per-hour";q=100;w=3600'),
        ("RateLimit", f'"{name}";r={remaining};t={reset}, "per-hour";r=90;t=3000'),
    ]


def refused(retry_after: Any = 2, *, headers: Any = None, body: Any = "problem") -> Reply:
    """A 429 as ratemw sends it: ``Retry-After`` (seconds, or a function giving a date), the
    draft-10 headers and the problem+json body, all agreeing (unless told otherwise)."""
    seconds = retry_after if isinstance(retry_after, int) else 2
    found: list[Any] = [("Content-Type", "application/problem+json" if body else "text/plain")]
    if retry_after is not None:
        found.append(("Retry-After", retry_after if callable(retry_after) else str(retry_after)))
    found += draft10(0, seconds) if headers is None else headers
    if body == "problem":
        body = problem(seconds)
    return Reply(429, found, json.dumps(body).encode() if body else b"Too Many Requests")


def later(seconds: float) -> Any:
    """An HTTP-date ``seconds`` from when the reply is sent."""
    return lambda: email.utils.formatdate(time.time() + seconds, usegmt=True)


def epoch_in(seconds: int) -> Any:
    """Epoch seconds, ``seconds`` from when the reply is sent (as GitHub sends a reset)."""
    return lambda: str(int(time.time()) + seconds)


@pytest.fixture(params=EACH_DRIVER)
def driver(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# -- retries ----------------------------------------------------------------------------------

RETRIES = [
    pytest.param([refused(2), OK], Call(), {}, [200], [2.0], id="429 Retry-After 2: wait, retry"),
    pytest.param([refused(2), OK], Call(), {"rand": lambda: 0.5}, [200], [2.1],
                 id="jitter adds up to 10% of the wait"),
    pytest.param([refused(later(30)), OK], Call(), {}, [200],
                 [pytest.approx(29.5, abs=0.6)], id="Retry-After as an HTTP-date"),
    pytest.param([refused(0), OK], Call(), {}, [200], [0.0],
                 id="Retry-After 0: retry now"),
    pytest.param([refused(2), refused(3), OK], Call(), {}, [200], [2.0, 3.0],
                 id="refused twice, then admitted"),
    pytest.param([Reply(503, [("Retry-After", "3")]), OK], Call(), {}, [200], [3.0],
                 id="503 with Retry-After is retried"),
    pytest.param([Reply(503), OK], Call(), {}, [503], [], id="503 without Retry-After is returned"),
    pytest.param([Reply(503, [("Retry-After", "999999999")]), OK], Call(), {}, [503], [],
                 id="503 asking too long a wait is returned at once"),
    pytest.param([refused(None, body={"retry_after": 3}, headers=[]), OK], Call(), {}, [200], [3.0],
                 id="no Retry-After: the problem body's retry_after"),
    pytest.param([refused(None, body=None, headers=draft10(0, 4)), OK], Call(), {}, [200],
                 [4.0], id="no Retry-After: draft-10 t of the exhausted policy"),
    pytest.param([refused(None, body=None,
                          headers=[("RateLimit", "limit=5, remaining=0, reset=4")]), OK],
                 Call(), {}, [200], [4.0], id="no Retry-After: draft-7 reset"),
    pytest.param([refused(None, body=None, headers=[
                     ("RateLimit-Limit", "5"), ("RateLimit-Remaining", "0"),
                     ("RateLimit-Reset", "4")]), OK],
                 Call(), {}, [200], [4.0], id="no Retry-After: draft-6 reset"),
    pytest.param([refused(None, body=None, headers=[
                     ("X-RateLimit-Limit", "5"), ("X-RateLimit-Remaining", "0"),
                     ("X-RateLimit-Reset", epoch_in(5))]), OK],
                 Call(), {}, [200], [pytest.approx(4.5, abs=0.51)],
                 id="no Retry-After: GitHub X-RateLimit-Reset (epoch)"),
    pytest.param([refused(2, headers=[*draft10(0, 2), ("Retry-After", "2")]), OK], Call(), {},
                 [200], [2.0],
                 id="a repeated Retry-After that agrees"),
    pytest.param([refused(1), OK], Call("POST", body=b"x"), {"retry_methods": ["GET", "POST"]},
                 [200], [1.0], id="POST is retried when retry_methods says so"),
    pytest.param([refused(1), OK], Call("PUT", body=b"same body"), {}, [200], [1.0],
                 id="PUT with a bytes body is retried"),
]  # fmt: skip


@pytest.mark.parametrize(("replies", "call", "options", "statuses", "sleeps"), RETRIES)
def test_retries(
    driver: str, replies: list[Reply], call: Call, options: dict[str, Any], statuses: list[int],
    sleeps: list[float],
) -> None:  # fmt: skip
    outcome = drive(driver, replies, [call], **options)
    assert outcome.error is None, outcome.error
    assert outcome.statuses == statuses
    assert outcome.sleeps == sleeps
    assert len(outcome.sent) == len(sleeps) + 1
    assert {sent.body for sent in outcome.sent} == {call.body or b""}  # replayed as it was


GIVING_UP = [
    pytest.param([refused(1)], Call("POST", body=b"x"), {}, 1, [],
                 "POST requests are not retried (see retry_methods)", id="POST is not retried"),
    pytest.param([refused(1)], Call("PATCH", body=b"x"), {}, 1, [],
                 "PATCH requests are not retried (see retry_methods)", id="PATCH is not retried"),
    pytest.param([refused(1)], Call("PUT", body="stream"), {}, 1, [],
                 "the request body is a stream, which cannot be sent again",
                 id="a streamed body is not retried"),
    pytest.param([refused(1)], Call("POST", body="stream"), {"retry_methods": ["POST"]}, 1, [],
                 "the request body is a stream, which cannot be sent again",
                 id="a streamed POST is not retried even when POST is"),
    pytest.param([refused(2)], Call(), {"max_retries": 2}, 3, [2.0, 2.0],
                 "it was retried 2 times (max_retries=2)", id="max_retries"),
    pytest.param([refused(2)], Call(), {"max_retries": 0}, 1, [],
                 "retries are off (max_retries=0)", id="max_retries=0"),
    pytest.param([refused(999999999)], Call(), {}, 1, [],
                 "waiting 1e+09 s would pass max_wait=60 s (60 s left)",
                 id="a hostile Retry-After raises at once"),
    pytest.param([refused(20)], Call(), {"max_wait": 50}, 3, [20.0, 20.0],
                 "waiting 20 s would pass max_wait=50 s (10 s left)",
                 id="max_wait is for all of a request's waits"),
    pytest.param([refused(5)], Call(), {"max_wait": 0}, 1, [],
                 "waiting 5 s would pass max_wait=0 s (0 s left)", id="max_wait=0"),
    pytest.param([refused(None, body=None, headers=[])], Call(), {}, 1, [],
                 "the response does not say when to retry", id="a 429 that says nothing"),
]  # fmt: skip


@pytest.mark.parametrize(("replies", "call", "options", "sent", "sleeps", "reason"), GIVING_UP)
def test_giving_up_raises_rate_limited(
    driver: str, replies: list[Reply], call: Call, options: dict[str, Any], sent: int,
    sleeps: list[float], reason: str,
) -> None:  # fmt: skip
    outcome = drive(driver, replies, [call], **options)
    assert outcome.error is not None
    assert outcome.error.reason == reason
    assert len(outcome.sent) == sent
    assert outcome.sleeps == sleeps


@pytest.mark.parametrize(
    "replies",
    [pytest.param([Reply(503, [("Retry-After", "9999")], b"down")], id="503 not retried"),
     pytest.param([Reply(503, [], b"x"), OK], id="503 without Retry-After"),
     pytest.param([refused(1), Reply(200, [], b"found")], id="200 after a retry")],
)  # fmt: skip
def test_responses_returned_are_untouched(driver: str, replies: list[Reply]) -> None:
    outcome = drive(driver, replies)
    assert outcome.bodies == [replies[-1].body if replies[0].status == 429 else replies[0].body]


def test_rate_limited_carries_the_problem(driver: str) -> None:
    error = drive(driver, [refused(2)], max_retries=0).error
    assert error is not None
    assert error.status_code == 429
    assert error.method == "GET"
    assert error.url == "https://api.example/search"  # no query string: it may hold a key
    assert error.retry_after == 2.0
    assert error.problem == problem(2)
    assert [(p.name, p.dialect) for p in error.policies] == [
        ("per-minute", "draft-10"),
        ("per-hour", "draft-10"),
    ]
    assert [(p.name, p.quota, p.window, p.remaining, p.reset) for p in error.violated] == [
        ("per-minute", 5, 60, 0, 2.0)
    ]
    assert error.response is not None and error.response.status_code == 429
    assert str(error) == (
        "GET https://api.example/search was refused with 429 Too Many Requests: "
        "Rate limit exceeded: 5 requests per 1 minute on GET /search. Try again in 2 seconds. "
        "Not retried: retries are off (max_retries=0)."
    )


def test_a_429_that_is_not_problem_json_still_explains_itself(driver: str) -> None:
    error = drive(driver, [refused(7, body=None)], max_retries=0).error
    assert error is not None
    assert error.problem is None
    assert [p.name for p in error.violated] == ["per-minute"]
    assert str(error) == (
        "GET https://api.example/search was refused with 429 Too Many Requests: over quota "
        "(policy 'per-minute', 5 per 60 s, 0 left). Retry after 7 s. "
        "Not retried: retries are off (max_retries=0)."
    )


# -- pacing -----------------------------------------------------------------------------------

OTHER_HOST = Call(url="https://other.example/search")
SAME_ORIGIN = Call(url="https://api.example/other/path")

PACING = [
    pytest.param(draft10(0, 5), Call(), {}, [5.0], id="draft-10 r=0: wait t"),
    pytest.param(draft10(1, 5), Call(), {}, [], id="draft-10 r=1: no wait"),
    pytest.param([("RateLimit-Policy", '"a";q=5;w=60, "b";q=50;w=600'),
                  ("RateLimit", '"a";r=0;t=3, "b";r=0;t=7')], Call(), {}, [7.0],
                 id="two exhausted policies: the longer wait"),
    pytest.param([("RateLimit", '"a";r=0;t=3'), ("RateLimit", '"b";r=0;t=7')], Call(), {}, [7.0],
                 id="a repeated RateLimit header is one list"),
    pytest.param([("RateLimit", "limit=5, remaining=0, reset=5")], Call(), {}, [5.0],
                 id="draft-7"),
    pytest.param([("RateLimit-Limit", "5"), ("RateLimit-Remaining", "0"),
                  ("RateLimit-Reset", "5")], Call(), {}, [5.0], id="draft-6"),
    pytest.param([("X-RateLimit-Limit", "5000"), ("X-RateLimit-Remaining", "0"),
                  ("X-RateLimit-Reset", epoch_in(5))], Call(), {},
                 [pytest.approx(4.5, abs=0.51)], id="GitHub X-RateLimit-Reset (epoch)"),
    pytest.param([("X-RateLimit-Remaining", "0"), ("X-RateLimit-Reset", "5")], Call(), {},
                 [5.0], id="X-RateLimit-Reset in seconds"),
    pytest.param(draft10(0, 5), SAME_ORIGIN, {}, [5.0], id="same origin, other path: wait"),
    pytest.param(draft10(0, 5), OTHER_HOST, {}, [], id="other host: no wait"),
    pytest.param(draft10(0, 5), Call(url="https://api.example:8443/search"), {}, [],
                 id="other port: no wait"),
    pytest.param(draft10(0, 5), Call(url="http://api.example/search"), {}, [],
                 id="other scheme: no wait"),
    pytest.param(draft10(0, 5), Call("POST", body=b"x"), {}, [5.0], id="POST is paced too"),
    pytest.param(draft10(0, 5), Call(), {"pace": False}, [], id="pace=False"),
    pytest.param(draft10(0, 999_999_999_999_999), Call(), {}, [],
                 id="a hostile t: pacing is skipped, the server decides"),
    pytest.param(draft10(0, 61), Call(), {}, [], id="a wait past max_wait is skipped"),
    pytest.param(draft10(0, 60), Call(), {}, [60.0], id="a wait of exactly max_wait is made"),
    pytest.param([("RateLimit", '"a";r=0;t=5, garbage(')], Call(), {}, [],
                 id="an invalid RateLimit is ignored whole"),
    pytest.param([("RateLimit", '"a";r=0;t=-5')], Call(), {}, [], id="a negative t is ignored"),
    pytest.param([("RateLimit", '"a";r=0;t=5.5')], Call(), {}, [], id="a decimal t is ignored"),
]  # fmt: skip


@pytest.mark.parametrize(("headers", "second", "options", "sleeps"), PACING)
def test_pacing(
    driver: str, headers: list[tuple[str, str]], second: Call, options: dict[str, Any],
    sleeps: list[float],
) -> None:  # fmt: skip
    outcome = drive(driver, [Reply(200, headers), OK], [Call(), second], **options)
    assert outcome.statuses == [200, 200]
    assert outcome.sleeps == sleeps


def test_a_refusal_paces_the_next_request_to_its_origin(driver: str) -> None:
    outcome = drive(driver, [refused(9), OK], [Call("POST", body=b"x"), Call()])
    assert outcome.error is not None  # the POST is not retried ...
    assert len(outcome.sent) == 1  # ... and the GET after it is never sent to be refused


# -- hostile values ---------------------------------------------------------------------------

HOSTILE_RETRY_AFTER = [
    pytest.param(value, id=label)
    for label, value in [
        ("negative", "-5"), ("NaN", "NaN"), ("infinity", "inf"), ("exponent", "1e3"),
        ("fraction", "1.5"), ("thirty digits", "9" * 30), ("empty", ""), ("word", "soon"),
        ("full-width digits", "\uff11\uff10"), ("underscore", "1_0"),
        ("no such date", "Wed, 31 Feb 2024 10:00:00 GMT"), ("half a date", "Wed, 21 Oct 2015"),
        ("disagreeing repeats", "1, 2"), ("a 5 kB number", "1" * 5000),
    ]
]  # fmt: skip


@pytest.mark.parametrize("value", HOSTILE_RETRY_AFTER)
def test_a_hostile_retry_after_is_ignored(driver: str, value: str) -> None:
    outcome = drive(driver, [refused(value, body=None, headers=[])])
    assert outcome.error is not None
    assert outcome.error.retry_after is None
    assert outcome.error.reason == "the response does not say when to retry"
    assert (outcome.sleeps, len(outcome.sent)) == ([], 1)


HOSTILE_BODIES = [
    pytest.param(b"{" * 100_000, id="nested past the recursion limit"),
    pytest.param(b"[" * 100_000 + b"]" * 100_000, id="deep JSON array"),
    pytest.param(b'{"retry_after": ' + b"9" * 5000 + b"}", id="a 5000-digit number"),
    pytest.param(b'{"retry_after": 1e999, "detail": 5, "policies": 3}', id="wrong types"),
    pytest.param(b'{"retry_after": -3, "violated-policies": "all"}', id="negative, not a list"),
    pytest.param(b'{"retry_after": true}', id="a boolean for a number"),
    pytest.param(b"\xff\xfe\x00garbage", id="not UTF-8"),
    pytest.param(b'{"detail": "' + b"x" * 2_000_000 + b'"}', id="2 MB"),
]


@pytest.mark.parametrize("body", HOSTILE_BODIES)
def test_a_hostile_problem_body_is_ignored(driver: str, body: bytes) -> None:
    reply = Reply(429, [("Content-Type", "application/problem+json")], body)
    outcome = drive(driver, [reply])
    assert outcome.error is not None
    assert outcome.error.retry_after is None
    assert outcome.error.reason == "the response does not say when to retry"
    assert len(str(outcome.error)) < 1000


HEADER_NAMES = st.sampled_from(
    ["Retry-After", "RateLimit", "RateLimit-Policy", "RateLimit-Limit", "RateLimit-Remaining",
     "RateLimit-Reset", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset",
     "X-RateLimit-Resource", "Content-Type"]
)  # fmt: skip
HEADER_VALUES = st.one_of(
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40),
    st.sampled_from(['"a";r=0;t=5', "limit=1, remaining=0, reset=3", "0", "3", "-1",
                     "999999999999999", "application/problem+json"]),
)  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    status=st.sampled_from([200, 429, 503]),
    headers=st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=6),
    body=st.one_of(st.binary(max_size=60), st.sampled_from([b'{"retry_after": 4}', b"{}"])),
)
def test_whatever_the_server_sends_the_client_returns_or_raises_rate_limited(
    status: int, headers: list[tuple[str, str]], body: bytes
) -> None:
    for name in ("httpx", "requests"):
        outcome = drive(name, [Reply(status, headers, body), OK], [Call(), Call()], max_wait=30)
        assert sum(outcome.sleeps) <= 2 * 30  # each request waits within max_wait
        assert all(0 <= s <= 30 for s in outcome.sleeps)
        assert outcome.error is not None or len(outcome.statuses) == 2


# -- shared state -----------------------------------------------------------------------------


def test_pacing_is_shared_by_the_threads_of_a_sync_transport() -> None:
    import httpx

    script, clock = Script([Reply(200, draft10(0, 5)), OK]), FakeTime()

    def handler(request: httpx.Request) -> httpx.Response:
        reply = script.answer(request.method, str(request.url), b"")
        return httpx.Response(reply.status, headers=list(reply.headers))

    transport = RateLimitTransport(
        httpx.MockTransport(handler), clock=clock.clock, sleep=clock.sleep
    )
    with httpx.Client(transport=transport) as client:
        for _ in range(2):
            thread = threading.Thread(target=client.get, args=(URL,))
            thread.start()
            thread.join()
    assert clock.sleeps == [5.0]


def test_pacing_is_shared_by_the_tasks_of_an_async_transport() -> None:
    import asyncio

    import httpx

    script, clock = Script([Reply(200, draft10(0, 5)), OK]), FakeTime()

    def handler(request: httpx.Request) -> httpx.Response:
        reply = script.answer(request.method, str(request.url), b"")
        return httpx.Response(reply.status, headers=list(reply.headers))

    async def main() -> None:
        transport = AsyncRateLimitTransport(
            httpx.MockTransport(handler), clock=clock.clock, sleep=clock.asleep
        )
        async with httpx.AsyncClient(transport=transport) as client:
            await asyncio.gather(client.get(URL), client.get(URL))

    asyncio.run(main())
    assert clock.sleeps == [5.0]


# -- the twins' surface -----------------------------------------------------------------------

SYNC_TO_ASYNC = {"handle_request": "handle_async_request", "close": "aclose"}


def public_methods(cls: type) -> set[str]:
    return {name for name, _ in inspect.getmembers(cls, inspect.isfunction)
            if not name.startswith("_")}  # fmt: skip


def test_the_async_transport_mirrors_the_sync_one() -> None:
    renamed = {SYNC_TO_ASYNC.get(name, name) for name in public_methods(RateLimitTransport)}
    assert renamed == public_methods(AsyncRateLimitTransport)
    sync = inspect.signature(RateLimitTransport).parameters
    assert list(sync) == list(inspect.signature(AsyncRateLimitTransport).parameters)


@pytest.mark.parametrize(
    "cls",
    [pytest.param(RateLimitTransport, id="RateLimitTransport"),
     pytest.param(AsyncRateLimitTransport, id="AsyncRateLimitTransport"),
     pytest.param(RateLimitAdapter, id="RateLimitAdapter")],
)  # fmt: skip
def test_constructor_takes_the_inner_transport_first_and_options_by_keyword(cls: type) -> None:
    parameters = list(inspect.signature(cls).parameters.values())
    assert parameters[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert parameters[0].default is None
    options = {p.name: p.default for p in parameters[1:]}
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in parameters[1:])
    assert (options["max_retries"], options["max_wait"]) == (3, 60.0)


def test_the_default_inner_transport_matches_the_request_s_library() -> None:
    import httpx
    import httpx2

    for library in (httpx, httpx2):
        transport = RateLimitTransport()
        transport._inner(library.Request("GET", URL))
        assert type(transport._transport) is library.HTTPTransport
        transport.close()


def test_the_requests_adapter_closes_its_inner_adapter() -> None:
    closed: list[bool] = []

    class Inner(RateLimitAdapter):  # any adapter will do
        def close(self) -> None:
            closed.append(True)

    RateLimitAdapter(Inner()).close()
    assert closed == [True]
