"""The decision in the endpoint's hands, under ASGI (Starlette) and WSGI (Flask).

- ``RateLimitExceeded`` raised by an endpoint (``limiter.ahit(..., raise_exceeded=True)``)
  becomes the standard 429: exact ``Retry-After``, problem+json, ``RateLimit`` headers;
- ``ratemw.current(request)`` tells the endpoint the numbers the response headers carry;
- ``block=False`` lets a request over the limit through, with the truth in the headers and in
  ``current(request).exceeded``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket

import ratemw
from ratemw import Decision, Limiter, RateLimitExceeded, RateLimitMiddleware
from ratemw.testing import FakeClock
from tests.conftest import parse_sf_list

ADAPTERS = ("starlette", "flask")


def standing(decision: Decision | None) -> Any:
    """What an endpoint tells of ``current(request)``, as JSON."""
    if decision is None:
        return None
    return {
        "allowed": decision.allowed,
        "exceeded": decision.exceeded,
        "policies": [
            {"name": p.name, "quota": p.quota, "remaining": p.remaining, "reset": p.reset}
            for p in decision.policies
        ],
    }


class App:
    """The same app in Starlette (ASGI) and Flask (WSGI), behind the middleware:

    - ``POST /login``: counts the form's username with ``hit(..., raise_exceeded=True)``;
    - ``/search``: ``5/minute;100/hour``, tells its standing;
    - ``/costly``: the same, with a cost callable (a plan that is not static);
    - ``/open``: no limit, tells its standing (none);
    - ``/soft``: ``2/minute`` with ``block=False``, under ``3/minute`` enforced.
    """

    def __init__(self, adapter: str, limiter: Limiter, **middleware: Any) -> None:
        self.limiter = limiter
        self.client = (self._starlette if adapter == "starlette" else self._flask)(**middleware)

    def _starlette(self, **middleware: Any) -> Any:
        limiter = self.limiter

        async def login(request: Request) -> Response:
            form = await request.json()
            username = form.get("username") if isinstance(form, dict) else None
            await limiter.ahit(
                username, "2/minute", scope="login", request=request, raise_exceeded=True
            )
            return PlainTextResponse("welcome")

        async def tell(request: Request) -> Response:
            return JSONResponse(standing(ratemw.current(request)))

        search = limiter.limit("5/minute;100/hour")(tell)
        costly = limiter.limit("5/minute;100/hour", cost=lambda request: 1)(_copy(tell))
        soft = limiter.limit("3/minute")(limiter.limit("2/minute", block=False)(_copy(tell)))
        app = Starlette(
            routes=[
                Route("/login", login, methods=["POST"]),
                Route("/search", search),
                Route("/costly", costly),
                Route("/open", _copy(tell)),
                Route("/soft", soft),
            ]
        )
        app.add_middleware(RateLimitMiddleware, limiter=limiter, **middleware)
        return TestClient(app)

    def _flask(self, **middleware: Any) -> Any:
        flask = pytest.importorskip("flask")
        from ratemw.contrib.flask import init_app

        limiter = self.limiter
        app = flask.Flask(__name__)

        @app.post("/login")
        def login() -> Any:
            form = flask.request.get_json(silent=True)
            username = form.get("username") if isinstance(form, dict) else None
            limiter.hit(
                username, "2/minute", scope="login", request=flask.request, raise_exceeded=True
            )
            return "welcome"

        def tell() -> Any:
            return flask.jsonify(standing(ratemw.current(flask.request)))

        app.add_url_rule("/search", "search", limiter.limit("5/minute;100/hour")(_copy(tell)))
        costly = limiter.limit("5/minute;100/hour", cost=lambda request: 1)(_copy(tell))
        app.add_url_rule("/costly", "costly", costly)
        app.add_url_rule("/open", "open", _copy(tell))
        soft = limiter.limit("3/minute")(limiter.limit("2/minute", block=False)(_copy(tell)))
        app.add_url_rule("/soft", "soft", soft)
        init_app(app, limiter, **middleware)
        return app.test_client()


def _copy(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A function of its own (limits are declared on the function object)."""
    if fn.__code__.co_flags & 0x80:  # a coroutine function

        async def copied_async(*args: Any, **kwargs: Any) -> Any:
            return await fn(*args, **kwargs)

        return copied_async

    def copied(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return copied


@pytest.fixture(params=ADAPTERS)
def adapter(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def header(response: Any, name: str) -> str | None:
    value = response.headers.get(name)
    return None if value is None else str(value)


def body(response: Any) -> Any:
    return json.loads(response.content if hasattr(response, "content") else response.data)


# -- raised from the endpoint ---------------------------------------------------------------


def test_raised_from_the_endpoint_is_the_standard_429(adapter: str, clock: FakeClock) -> None:
    client = App(adapter, Limiter(clock=clock)).client
    login = {"username": "alice", "password": "wrong"}
    assert [client.post("/login", json=login).status_code for _ in range(2)] == [200, 200]
    clock.advance(17)
    refused = client.post("/login", json=login)
    assert refused.status_code == 429
    assert header(refused, "Retry-After") == "43"
    assert header(refused, "Content-Type") == "application/problem+json"
    problem = body(refused)
    assert problem["status"] == 429
    assert problem["retry_after"] == 43
    assert "POST /login" in problem["detail"]
    assert [(p["name"], p["remaining"]) for p in problem["policies"]] == [("login-per-minute", 0)]
    assert header(refused, "RateLimit") == '"login-per-minute";r=0;t=43'
    assert header(refused, "RateLimit-Policy") == '"login-per-minute";q=2;w=60'
    # Another username has its own count.
    assert client.post("/login", json={"username": "bob"}).status_code == 200
    clock.advance(43)
    assert client.post("/login", json=login).status_code == 200


def test_raised_from_the_endpoint_goes_through_the_handler(adapter: str) -> None:
    def handler(request: Any, exc: RateLimitExceeded) -> Any:
        text = f"slow down, {exc.retry_after}"
        if adapter == "flask":
            import flask

            return flask.Response(text, status=429)
        return PlainTextResponse(text, status_code=429)

    client = App(adapter, Limiter(), handler=handler).client
    statuses = [client.post("/login", json={"username": "a"}) for _ in range(3)]
    assert [r.status_code for r in statuses] == [200, 200, 429]
    text = statuses[-1].content if adapter == "starlette" else statuses[-1].data
    assert text.startswith(b"slow down, ")


def test_a_username_that_names_nobody_cannot_escape(adapter: str) -> None:
    client = App(adapter, Limiter()).client
    # No username at all, an empty one: one shared bucket of "nobody", still limited.
    replies = [client.post("/login", json=data).status_code
               for data in ({}, {"username": ""}, [], {"username": None})]  # fmt: skip
    assert replies == [200, 200, 429, 429]


def test_raised_in_a_websocket_endpoint_refuses_the_handshake() -> None:
    limiter = Limiter()

    async def chat(websocket: WebSocket) -> None:
        await limiter.ahit("room", "1/minute", scope="chat", raise_exceeded=True)
        await websocket.accept()
        await websocket.close()

    app = Starlette(routes=[WebSocketRoute("/chat", chat)])
    app.add_middleware(RateLimitMiddleware, limiter=limiter)
    client = TestClient(app)
    with client.websocket_connect("/chat"):
        pass
    from starlette.testclient import WebSocketDenialResponse

    with pytest.raises(WebSocketDenialResponse) as denied, client.websocket_connect("/chat"):
        pass
    assert denied.value.status_code == 429
    assert denied.value.headers["retry-after"] == "60"


# -- the request's standing ----------------------------------------------------------------


@pytest.mark.parametrize("path", ["/search", "/costly"])
def test_current_tells_the_numbers_the_headers_carry(
    adapter: str, clock: FakeClock, path: str
) -> None:
    client = App(adapter, Limiter(clock=clock)).client
    for n in range(5):
        clock.advance(3)
        response = client.get(path)
        assert response.status_code == 200
        told = body(response)
        items = parse_sf_list(header(response, "RateLimit") or "")
        assert [(p["name"], p["remaining"], p["reset"]) for p in told["policies"]] == [
            (name, params["r"], params["t"]) for name, params in items
        ]
        assert [p["remaining"] for p in told["policies"]] == [4 - n, 99 - n]
        assert (told["allowed"], told["exceeded"]) == (True, False)
    assert client.get(path).status_code == 429


def test_current_is_none_where_no_limit_applied(adapter: str) -> None:
    client = App(adapter, Limiter()).client
    response = client.get("/open")
    assert response.status_code == 200
    assert body(response) is None
    assert header(response, "RateLimit") is None


def test_current_of_a_request_the_middleware_never_saw() -> None:
    assert ratemw.current({"type": "http"}) is None
    assert ratemw.current({}) is None
    assert ratemw.current(object()) is None
    assert ratemw.current(None) is None


# -- block=False ----------------------------------------------------------------------------


def test_block_false_lets_the_request_through_with_the_truth(
    adapter: str, clock: FakeClock
) -> None:
    client = App(adapter, Limiter(clock=clock)).client
    replies = [client.get("/soft") for _ in range(4)]
    assert [r.status_code for r in replies] == [200, 200, 200, 429]
    told = [body(r) for r in replies[:3]]
    assert [t["exceeded"] for t in told] == [False, False, True]
    assert all(t["allowed"] for t in told)
    # The third: over the soft limit, which the headers and the standing both say.
    third = told[2]["policies"]  # declared inside out: the soft limit first
    assert [(p["quota"], p["remaining"]) for p in third] == [(2, 0), (3, 0)]
    items = parse_sf_list(header(replies[2], "RateLimit") or "")
    assert [params["r"] for _, params in items] == [0, 0]
    assert header(replies[2], "Retry-After") is None
    # The fourth is refused by the enforced limit alone: its Retry-After is the enforced one.
    refused = body(replies[3])
    # Refused by the enforced limit: the body names it alone (the soft one refused nothing).
    assert [(p["quota"], p["remaining"]) for p in refused["policies"]] == [(3, 0)]
    assert refused["violated-policies"] == ["route-per-minute"]
    assert header(replies[3], "Retry-After") == "60"


def test_block_false_with_only_soft_limits_never_refuses(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock)
    app = Starlette(
        routes=[
            Route(
                "/",
                limiter.limit("1/minute", block=False)(
                    lambda request: JSONResponse(standing(ratemw.current(request)))
                ),
            )
        ]
    )
    app.add_middleware(RateLimitMiddleware, limiter=limiter)
    client = TestClient(app)
    replies = [client.get("/") for _ in range(5)]
    assert [r.status_code for r in replies] == [200] * 5
    assert [r.json()["exceeded"] for r in replies] == [False, True, True, True, True]
    # The soft limit does not count what it let through over the limit.
    clock.advance(60)
    assert client.get("/").json()["exceeded"] is False


def test_block_false_on_a_shared_limit_and_a_rule(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock, rules=[ratemw.Rule("/ruled", "1/minute", block=False)])

    @limiter.shared_limit("1/minute", scope="s", block=False)
    async def shared(request: Request) -> Response:
        return JSONResponse(standing(ratemw.current(request)))

    async def ruled(request: Request) -> Response:
        return JSONResponse(standing(ratemw.current(request)))

    app = Starlette(routes=[Route("/shared", shared), Route("/ruled", ruled)])
    app.add_middleware(RateLimitMiddleware, limiter=limiter)
    client = TestClient(app)
    for path in ("/shared", "/ruled"):
        replies = [client.get(path) for _ in range(3)]
        assert [r.status_code for r in replies] == [200, 200, 200], path
        assert [r.json()["exceeded"] for r in replies] == [False, True, True], path


@pytest.fixture
def toml_limiter(tmp_path: Any) -> Iterator[Limiter]:
    from ratemw.config import load

    config = tmp_path / "ratemw.toml"
    config.write_text('[[rules]]\npath = "/"\nlimit = "1/minute"\nblock = false\n')
    yield load(config, env={}).limiter


def test_block_false_from_a_config_file(toml_limiter: Limiter) -> None:
    app = Starlette(
        routes=[Route("/", lambda request: JSONResponse(standing(ratemw.current(request))))]
    )
    app.add_middleware(RateLimitMiddleware, limiter=toml_limiter)
    client = TestClient(app)
    replies = [client.get("/") for _ in range(2)]
    assert [r.status_code for r in replies] == [200, 200]
    assert replies[1].json()["exceeded"] is True


def test_block_must_be_a_bool() -> None:
    with pytest.raises(ratemw.ConfigurationError, match="block"):
        Limiter().limit("1/minute", block="no")  # type: ignore[arg-type]
    with pytest.raises(ratemw.ConfigurationError, match="block"):
        ratemw.Rule("/", "1/minute", block=0)  # type: ignore[arg-type]
