"""Generated requests and generated callable results, through both adapters, on memory and
on a real Redis.

hypothesis draws a sequence of requests (methods, odd paths, header bytes, no client address,
IPv6 neighbours) and, for each, what every user callable does with it: return a valid value,
return anything at all (``None``, NaN, huge and negative numbers, strings, bytes, lists,
objects), raise, and each of those either directly or from a coroutine. A model that applies
the documented failure rules (see ``tests/engine/test_failures.py``) predicts exactly which requests
are admitted. For every sequence:

1. never a 500: every answer is the app's 200 or a 429 whose body is valid problem+json;
2. exactly the model's admissions, so never more than a limit allows, whatever was returned;
3. the circuit breaker never counts a failure: only the storage can open it, never data.

Deterministic (``derandomize``). Runs on ``memory://`` always and on a real ``redis-server``
(a fixture's own, on a free port).
"""

from __future__ import annotations

import asyncio
import json
import math
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from ratemw import Limiter, RateLimitMiddleware, WSGIRateLimitMiddleware
from ratemw.engine.hits import MAX_KEY_LENGTH
from ratemw.testing import FakeClock
from tests.redis_servers import RedisServer

FALLBACK = (2, 60)  # "2/minute": what a failing limit callable gives
VALID_LIMITS: dict[str, list[tuple[int, int]]] = {
    "3/minute": [(3, 60)],
    "3 per 1 minute": [(3, 60)],  # the same quota spelled otherwise: the same bucket
    "5/hour;2/minute": [(5, 3600), (2, 60)],
}

HYPOTHESIS = settings(
    max_examples=40,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


# -- what a callable does ------------------------------------------------------------------------


@dataclass(frozen=True)
class Raise:
    error: type[Exception]


@dataclass(frozen=True)
class Outcome:
    """What one callable does for one request: return ``value`` or raise, maybe async."""

    value: Any
    is_async: bool

    def run(self) -> Any:
        if self.is_async:
            return self._later()
        return self._now()

    def _now(self) -> Any:
        if isinstance(self.value, Raise):
            raise self.value.error("raised by a user callable")
        return self.value

    async def _later(self) -> Any:
        await asyncio.sleep(0)
        return self._now()


class Unstringable:
    def __str__(self) -> str:
        raise RuntimeError("no str for you")

    def __repr__(self) -> str:
        raise RuntimeError("no repr either")


anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.binary(max_size=10),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=1),
    st.sampled_from([object(), Unstringable(), uuid.UUID(int=7), math.nan, -math.inf]),
    st.sampled_from([ValueError, KeyError, TypeError, ZeroDivisionError, RecursionError]).map(
        Raise
    ),
)


def outcomes(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Outcome]:
    return st.builds(Outcome, st.one_of(valid, anything), st.booleans())


@dataclass(frozen=True)
class Sent:
    """One request, and what each callable does with it."""

    method: str
    path: str
    headers: tuple[tuple[bytes, bytes], ...]
    client: tuple[str, int] | None
    key: Outcome
    limit: Outcome
    cost: Outcome
    exempt: Outcome
    deduct: Outcome
    message: Outcome
    hook: Outcome


CLIENTS = [
    None, ("203.0.113.7", 1), ("198.51.100.2", 1), ("2001:db8::1", 1), ("2001:db8::2", 1),
    ("", 0), ("not-an-address", 5),
]  # fmt: skip
header_name = st.binary(min_size=1, max_size=12).filter(
    lambda b: b.lower() == b and b"\0" not in b and b != b"x-id"
)
requests_ = st.builds(
    Sent,
    method=st.sampled_from(["GET", "HEAD", "POST", "DELETE", "BREW"]),
    path=st.one_of(
        st.just("/"),
        # Any path the app's route matches (its "{rest:path}" stops at a newline).
        st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=40).map(
            lambda s: "/" + s.replace("\n", "")
        ),
        st.sampled_from(["/%2e%2e/admin", "//x", "/a\rb", "/" + "x" * 2000, "/é/ü"]),
    ),
    headers=st.lists(st.tuples(header_name, st.binary(max_size=40)), max_size=4).map(tuple),
    client=st.sampled_from(CLIENTS),
    key=outcomes(st.sampled_from(["alice", "bob", "203.0.113.7", 42, b"carol"])),
    limit=outcomes(st.sampled_from(list(VALID_LIMITS))),
    cost=outcomes(st.sampled_from([1, 2, 2.0, 10**12])),
    exempt=outcomes(st.booleans()),
    deduct=outcomes(st.booleans()),
    message=outcomes(st.sampled_from(["Slow down.", ""])),
    hook=outcomes(st.none()),
)


# -- the model -----------------------------------------------------------------------------------


def address(client: tuple[str, int] | None) -> str:
    if client is None or not client[0]:
        return "unknown-client"
    if client[0].startswith("2001:db8::"):
        return "2001:db8::/64"
    return client[0]


def resolved(outcome: Outcome, check: Callable[[Any], Any]) -> Any:
    """What ratemw makes of an outcome: ``check(value)``, or ``None`` when it failed."""
    if isinstance(outcome.value, Raise):
        return None
    return check(outcome.value)


def identity_of(value: Any) -> str | None:
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("latin-1") if value.strip() else None
    if isinstance(value, uuid.UUID):
        return str(value)
    return None


def cost_of(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 1 else None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer() and value >= 1:
        return int(value)
    return None


def quotas_of(value: Any) -> list[tuple[int, int]] | None:
    return VALID_LIMITS.get(value) if isinstance(value, str) else None


def exactly(expected: bool) -> Callable[[Any], Any]:
    return lambda value: True if value is expected else None


@dataclass
class Model:
    used: dict[tuple[str, int, int], int] = field(default_factory=lambda: defaultdict(int))

    def admits(self, sent: Sent) -> bool:
        if resolved(sent.exempt, exactly(True)):
            return True
        identity = resolved(sent.key, identity_of) or address(sent.client)
        identity = identity[:MAX_KEY_LENGTH]
        quotas = resolved(sent.limit, quotas_of) or [FALLBACK]
        cost = resolved(sent.cost, cost_of) or 1
        buckets = [(identity, amount, window) for amount, window in quotas]
        pairs = zip(buckets, quotas, strict=True)
        if any(self.used[bucket] + cost > amount for bucket, (amount, _) in pairs):
            return False
        for bucket in buckets:
            self.used[bucket] += cost
        if resolved(sent.deduct, exactly(False)):  # refunded once the response is over
            for bucket in buckets:
                self.used[bucket] -= cost
        return True


# -- the app under attack ------------------------------------------------------------------------


class Script:
    """Hands each callable what it must do for the request being served."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []

    def of(self, request: Any) -> Sent:
        return self.sent[int(request.headers["x-id"])]

    def __call__(self, part: str) -> Callable[[Any], Any]:
        def callable_(request: Any, *more: Any) -> Any:
            return getattr(self.of(request), part).run()

        callable_.__name__ = part
        return callable_

    def deduct(self, response: Any) -> Any:
        return self.sent[int(dict(response.headers)["x-id"])].deduct.run()


def limiter_for(script: Script, storage: str) -> Limiter:
    limiter = Limiter(
        storage=storage,
        clock=FakeClock(),
        key=script("key"),
        on_breach=script("hook"),
        on_near_limit=script("hook"),
        on_storage_error=script("hook"),
        key_prefix=f"hostile-{uuid.uuid4().hex[:8]}",
        storage_options={"socket_timeout": 5} if storage != "memory://" else None,
    )
    return limiter


def endpoint_for(limiter: Limiter, script: Script) -> Any:
    async def endpoint(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok", headers={"x-id": request.headers["x-id"]})

    return limiter.limit(
        script("limit"),
        fallback="2/minute",
        cost=script("cost"),
        exempt_when=script("exempt"),
        deduct_when=script.deduct,
        error_message=script("message"),
    )(endpoint)


def with_id(sent: Sent, index: int) -> list[tuple[bytes, bytes]]:
    return [*sent.headers, (b"x-id", str(index).encode())]


async def asgi_replies(script: Script, storage: str) -> tuple[Limiter, list[tuple[int, bytes]]]:
    from starlette.applications import Starlette

    limiter = limiter_for(script, storage)
    methods = ["GET", "HEAD", "POST", "DELETE", "BREW"]
    app = Starlette(routes=[Route("/{rest:path}", endpoint_for(limiter, script), methods=methods)])
    wrapped = RateLimitMiddleware(app, limiter=limiter)
    replies = []
    for index, sent in enumerate(script.sent):
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": sent.method, "scheme": "http", "path": sent.path,
            "raw_path": sent.path.encode("utf-8", "surrogateescape"), "query_string": b"",
            "root_path": "", "headers": with_id(sent, index), "client": sent.client,
            "server": ("testserver", 80),
        }  # fmt: skip
        messages: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any], into: list[Any] = messages) -> None:
            into.append(message)

        try:
            await wrapped(scope, receive, send)
        except Exception:
            replies.append((500, b""))
            continue
        start = next(m for m in messages if m["type"] == "http.response.start")
        body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
        replies.append((start["status"], body))
    await limiter.backends.async_.aclose()
    return limiter, replies


def wsgi_replies(script: Script, storage: str) -> tuple[Limiter, list[tuple[int, bytes]]]:
    limiter = limiter_for(script, storage)
    endpoint = endpoint_for(limiter, script)

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("x-id", environ["HTTP_X_ID"])])
        return [b"ok"]

    wrapped = WSGIRateLimitMiddleware(app, limiter=limiter, routes=lambda environ: (endpoint, "/"))
    replies = []
    for index, sent in enumerate(script.sent):
        environ: dict[str, Any] = {
            "REQUEST_METHOD": sent.method, "SCRIPT_NAME": "", "QUERY_STRING": "",
            "PATH_INFO": sent.path.encode("utf-8", "surrogateescape").decode("latin-1"),
            "SERVER_NAME": "testserver", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.url_scheme": "http",
        }  # fmt: skip
        if sent.client is not None:
            environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = sent.client[0], str(sent.client[1])
        for name, value in with_id(sent, index):
            key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
            text = value.decode("latin-1")
            environ[key] = f"{environ[key]},{text}" if key in environ else text
        statuses: list[int] = []

        def start_response(
            status: str, headers: Any, exc_info: Any = None, into: list[int] = statuses
        ) -> Any:
            into.append(int(status[:3]))
            return lambda data: None

        try:
            result = wrapped(environ, start_response)
            body = b"".join(result)
            getattr(result, "close", lambda: None)()
        except Exception:
            replies.append((500, b""))
            continue
        replies.append((statuses[-1], body))
    limiter.backends.sync.close()
    return limiter, replies


def check(script: Script, limiter: Limiter, replies: list[tuple[int, bytes]]) -> None:
    model = Model()
    expected = [200 if model.admits(sent) else 429 for sent in script.sent]
    assert [status for status, _ in replies] == expected
    for (status, body), sent in zip(replies, script.sent, strict=True):
        if status == 429:
            problem = json.loads(body)
            assert problem["status"] == 429
            assert problem.get("retry_after", 1) >= 1
            message = resolved(sent.message, lambda v: v if isinstance(v, str) else None)
            if message is not None:
                assert problem["detail"] == message
    breaker = limiter.breaker
    assert (breaker.failures, breaker.open_until, breaker.incident) == (0, 0.0, False)


def scripted(sent: list[Sent]) -> Script:
    script = Script()
    script.sent = sent
    return script


# -- the properties ------------------------------------------------------------------------------

sequences = st.lists(requests_, min_size=1, max_size=12)


@pytest.fixture(params=["memory", "redis"])
def storage(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "memory":
        yield "memory://"
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    yield server.url


@HYPOTHESIS
@given(sent=sequences)
def test_asgi_callables_can_do_anything(storage: str, sent: list[Sent]) -> None:
    script = scripted(sent)
    limiter, replies = asyncio.run(asgi_replies(script, storage))
    check(script, limiter, replies)


@HYPOTHESIS
@given(sent=sequences)
def test_wsgi_callables_can_do_anything(storage: str, sent: list[Sent]) -> None:
    script = scripted(sent)
    limiter, replies = wsgi_replies(script, storage)
    check(script, limiter, replies)
