"""The Flask integration: views found before Flask routes them, the extension, the example."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Blueprint, Flask, Response
from flask.views import MethodView
from werkzeug.test import EnvironBuilder

from ratemw import ConfigurationError, Limiter, RateLimitExceeded, Rule
from ratemw.contrib.flask import FlaskRoutes, RateMW, init_app
from ratemw.testing import FakeClock
from ratemw.wsgi import WSGIRateLimitMiddleware
from tests.contrib._helpers import assert_third_item_refused, codes, recorded_lines
from tests.contrib.live_server import get, gunicorn


def make_app(limiter: Limiter, **options: Any) -> Flask:
    app = Flask(__name__)
    init_app(app, limiter, **options)
    return app


# -- finding the view -----------------------------------------------------------------------


def _routes_app() -> Flask:
    app = Flask(__name__)
    app.add_url_rule("/items/<int:item_id>", "item", lambda item_id: "item")
    app.add_url_rule("/dir/", "dir", lambda: "dir")
    app.add_url_rule("/only-get", "only_get", lambda: "get")
    api = Blueprint("api", __name__, url_prefix="/api")
    api.add_url_rule("/things/<name>", "thing", lambda name: "thing")
    app.register_blueprint(api)
    return app


@pytest.mark.parametrize(
    ("path", "method", "endpoint", "template"),
    [
        pytest.param("/items/7", "GET", "item", "/items/<int:item_id>", id="URL rule"),
        pytest.param("/items/7", "HEAD", "item", "/items/<int:item_id>", id="HEAD as GET"),
        pytest.param(
            "/api/things/x",
            "GET",
            "api.thing",
            "/api/things/<name>",
            id="blueprint rule with its prefix",
        ),
        pytest.param("/items/x", "GET", None, None, id="converter refuses: 404"),
        pytest.param("/only-get", "POST", None, None, id="405"),
        pytest.param("/dir", "GET", None, None, id="redirect to the slash"),
        pytest.param("/nowhere", "GET", None, None, id="404"),
    ],
)
def test_flask_routes_finds_the_view_flask_will_call(
    path: str, method: str, endpoint: str | None, template: str | None
) -> None:
    app = _routes_app()
    environ = EnvironBuilder(path=path, method=method).get_environ()
    view, rule = FlaskRoutes(app)(environ)
    assert view is (app.view_functions[endpoint] if endpoint else None)
    assert rule == template


def test_wrapping_wsgi_app_directly_finds_flask_views(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock, default_limits="100/minute")
    app = Flask(__name__)
    app.wsgi_app = WSGIRateLimitMiddleware(app.wsgi_app, limiter=limiter)  # type: ignore[method-assign]
    app.add_url_rule("/items/<int:item_id>", "item", limiter.limit("1/minute")(lambda item_id: ""))
    assert isinstance(app.wsgi_app.routes, FlaskRoutes)  # type: ignore[attr-defined]
    assert codes(app.test_client(), "/items/1", "/items/2") == [200, 429]


def test_every_item_id_is_one_bucket(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock)
    app = make_app(limiter)

    @app.get("/items/<int:item_id>")
    @limiter.limit("2/minute")
    def item(item_id: int) -> str:
        return "item"

    @app.get("/other/<int:item_id>")
    @limiter.limit("2/minute")
    def other(item_id: int) -> str:
        return "other"

    client = app.test_client()
    assert codes(client, "/items/1", "/items/2", "/items/3") == [200, 200, 429]
    assert codes(client, "/other/1") == [200]


class _Decorated(MethodView):
    def get(self) -> str:
        return "get"

    def post(self) -> str:
        return "post"


def _limit_get(limiter: Limiter) -> type[MethodView]:
    class View(_Decorated):
        @limiter.limit("1/minute")
        def get(self) -> str:
            return "get"

    return View


def _limit_class(limiter: Limiter) -> type[MethodView]:
    return limiter.limit("1/minute")(type("View", (_Decorated,), {}))


def _limit_in_decorators(limiter: Limiter) -> type[MethodView]:
    return type("View", (_Decorated,), {"decorators": [limiter.limit("1/minute")]})


@pytest.mark.parametrize(
    ("make_view", "post"),
    [
        pytest.param(_limit_get, 200, id="on the get method: POST free"),
        pytest.param(_limit_class, 429, id="on the class"),
        pytest.param(_limit_in_decorators, 429, id="in MethodView.decorators"),
    ],
)
def test_method_views(
    clock: FakeClock, make_view: Callable[[Limiter], type[MethodView]], post: int
) -> None:
    limiter = Limiter(clock=clock, default_limits="100/minute")
    app = make_app(limiter)
    app.add_url_rule("/view", view_func=make_view(limiter).as_view("view"))
    client = app.test_client()
    assert codes(client, "/view", "/view") == [200, 429]
    assert codes(client, "/view", method="POST") == [post]


def test_blueprint_views(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock)
    api = Blueprint("api", __name__, url_prefix="/api")

    @api.get("/things/<name>")
    @limiter.limit("1/minute")
    def thing(name: str) -> str:
        return name

    app = make_app(limiter)
    app.register_blueprint(api)
    client = app.test_client()
    assert codes(client, "/api/things/a", "/api/things/b") == [200, 429]


def test_exempt_and_shared_limits(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock, default_limits="1/minute")
    app = make_app(limiter)
    search = limiter.shared_limit("2/minute", scope="search")

    @app.get("/health")
    @limiter.exempt
    def health() -> str:
        return "ok"

    @app.get("/books")
    @search
    def books() -> str:
        return "books"

    @app.get("/films")
    @search
    def films() -> str:
        return "films"

    client = app.test_client()
    assert codes(client, "/health", "/health", "/health") == [200, 200, 200]
    assert "RateLimit" not in client.get("/health").headers
    assert codes(client, "/books", "/films", "/books") == [200, 200, 429]


def test_unrouted_requests_get_the_defaults(clock: FakeClock) -> None:
    app = make_app(Limiter(clock=clock, default_limits="1/minute"))
    client = app.test_client()
    response = client.get("/nowhere")
    assert response.status_code == 404
    assert response.headers["RateLimit"] == '"per-minute";r=0;t=60'
    assert codes(client, "/elsewhere") == [429]


def test_routes_that_differ_by_host_are_told_apart(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock, default_limits="100/minute")
    app = Flask(__name__, host_matching=True, static_folder=None)
    init_app(app, limiter)
    app.add_url_rule("/", "a", limiter.limit("1/minute")(lambda: "a"), host="a.example")
    app.add_url_rule("/", "b", lambda: "b", host="b.example")
    client = app.test_client()
    assert codes(client, "http://a.example/", "http://a.example/") == [200, 429]
    assert codes(client, "http://b.example/", "http://b.example/") == [200, 200]


# -- what the caller sees -------------------------------------------------------------------


def test_429_and_success_headers(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock)
    app = make_app(limiter)
    app.add_url_rule("/", "index", limiter.limit("1/minute")(lambda: "ok"))
    client = app.test_client()
    ok = client.get("/")
    assert ok.headers["RateLimit-Policy"] == '"per-minute";q=1;w=60'
    assert ok.headers["RateLimit"] == '"per-minute";r=0;t=60'
    assert "Retry-After" not in ok.headers
    clock.advance(30)
    refused = client.get("/")
    assert refused.status == "429 Too Many Requests"
    assert refused.headers["Content-Type"] == "application/problem+json"
    assert refused.headers["Retry-After"] == "30"
    assert refused.json is not None and refused.json["retry_after"] == 30


def test_streamed_response_keeps_streaming(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock, default_limits="5/minute")
    app = make_app(limiter)
    produced: list[int] = []

    @app.get("/stream")
    def stream() -> Response:
        return Response(recorded_lines(produced), mimetype="text/plain")

    response = app.test_client().get("/stream", buffered=False)
    assert response.headers["RateLimit"] == '"per-minute";r=4;t=60'
    # The client reads one chunk to learn the status; the rest is still to be produced.
    assert produced == [0]
    assert b"".join(response.response) == b"line 0\nline 1\nline 2\n"  # type: ignore[arg-type]
    response.close()


def test_handler_returns_a_werkzeug_response(clock: FakeClock) -> None:
    def handler(request: Any, exc: RateLimitExceeded) -> Response:
        return Response(f"wait {exc.retry_after}s", status=429, headers=dict(exc.headers))

    limiter = Limiter(clock=clock, default_limits="1/minute")
    client = make_app(limiter, handler=handler).test_client()
    client.get("/")
    refused = client.get("/")
    assert (refused.status_code, refused.data) == (429, b"wait 60s")
    assert refused.headers["Retry-After"] == "60"


def test_rules_from_init_app(clock: FakeClock) -> None:
    app = make_app(Limiter(clock=clock), rules=[Rule("/static/*", "1/minute")])
    assert codes(app.test_client(), "/static/a.css", "/static/b.css") == [404, 429]


# -- the extension --------------------------------------------------------------------------


def test_init_app_installs_the_middleware_once() -> None:
    limiter = Limiter()
    app = Flask(__name__)
    middleware = init_app(app, limiter)
    assert app.wsgi_app is middleware
    assert app.extensions["ratemw"] is middleware
    assert isinstance(middleware, WSGIRateLimitMiddleware)
    assert isinstance(middleware.routes, FlaskRoutes)
    with pytest.raises(ConfigurationError, match="already installed"):
        init_app(app, limiter)


def test_extension_pattern(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock, default_limits="1/minute")
    extension = RateMW(limiter=limiter)

    def create_app() -> Flask:
        app = Flask(__name__)
        extension.init_app(app)
        return app

    first, second = create_app(), create_app()
    assert codes(first.test_client(), "/", "/") == [404, 429]
    assert first.extensions["ratemw"] is not second.extensions["ratemw"]
    eager = Flask(__name__)
    RateMW(eager, limiter=limiter)
    assert isinstance(eager.extensions["ratemw"], WSGIRateLimitMiddleware)


# -- the example ----------------------------------------------------------------------------


@pytest.fixture
def example() -> Any:
    from examples import flask_app

    flask_app.limiter.reset()
    return flask_app


def test_example_with_the_test_client(example: Any) -> None:
    client = example.app.test_client()
    assert codes(client, "/items/1", "/items/2", "/items/3") == [200, 200, 429]
    assert codes(client, "/search", "/search") == [200, 200]
    assert client.get("/stream").data == b"tick 0\ntick 1\ntick 2\n"
    health = client.get("/health")
    assert health.status_code == 200 and "RateLimit" not in health.headers


def test_example_under_gunicorn() -> None:
    with gunicorn("examples.flask_app:app") as port:
        replies = [get(port, f"/items/{n}") for n in (1, 2, 3)]
        stream = get(port, "/stream")
        health = get(port, "/health")
    assert_third_item_refused(replies, "/items/3")
    assert stream.body == b"tick 0\ntick 1\ntick 2\n"
    assert stream.headers["ratelimit-policy"] == '"per-minute";q=20;w=60'
    assert health.status == 200 and "ratelimit" not in health.headers
