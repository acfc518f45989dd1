"""What a caller sees does not depend on the framework behind ratemw.

One route, ``/items/<id>`` limited by ``@limiter.limit("2/minute")``, on Starlette, FastAPI,
Flask and Django (its middleware under WSGI and under ASGI, and the whole Django app behind
``WSGIRateLimitMiddleware``). Every one must answer the same statuses with the same rate-limit
headers, and byte-identical 429 bodies.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from ratemw import Limiter
from ratemw.testing import FakeClock

SHOWN = ("content-type", "cache-control", "retry-after", "content-length")


@dataclass(frozen=True)
class Seen:
    """One response as the caller sees it: status, ratemw's headers and (for a 429) the body."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes | None


def seen(status: int, headers: Any, body: bytes) -> Seen:
    """Keep the headers ratemw decides (names case-insensitive, as HTTP has them)."""
    lowered = {name.lower(): value for name, value in headers.items()}
    names = sorted(n for n in lowered if n in SHOWN or "ratelimit" in n)
    if status != 429:  # a 200's content headers are the app's own business
        names = [n for n in names if n not in SHOWN or n == "retry-after"]
    return Seen(status, tuple((n, lowered[n]) for n in names), body if status == 429 else None)


Fetch = Callable[[str], Seen]
App = Callable[[Limiter], AbstractContextManager[Fetch]]


# -- the same route on every framework ------------------------------------------------------


@contextmanager
def starlette_app(limiter: Limiter) -> Iterator[Fetch]:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from ratemw import RateLimitMiddleware

    @limiter.limit("2/minute")
    async def item(request: Request) -> JSONResponse:
        return JSONResponse({"id": request.path_params["item_id"]})

    app = Starlette(routes=[Route("/items/{item_id:int}", item)])
    app.add_middleware(RateLimitMiddleware, limiter=limiter)
    with TestClient(app) as client:
        yield lambda path: _from_httpx(client.get(path))


@contextmanager
def fastapi_app(limiter: Limiter) -> Iterator[Fetch]:
    from fastapi import FastAPI
    from starlette.testclient import TestClient

    from ratemw import RateLimitMiddleware

    app = FastAPI()
    app.add_middleware(RateLimitMiddleware, limiter=limiter)

    @app.get("/items/{item_id}")
    @limiter.limit("2/minute")
    async def item(item_id: int) -> dict[str, int]:  # no request parameter
        return {"id": item_id}

    with TestClient(app) as client:
        yield lambda path: _from_httpx(client.get(path))


def _from_httpx(response: Any) -> Seen:
    return seen(response.status_code, response.headers, response.content)


@contextmanager
def flask_app(limiter: Limiter) -> Iterator[Fetch]:
    from flask import Flask

    from ratemw.contrib.flask import init_app

    app = Flask(__name__)
    init_app(app, limiter)

    @app.get("/items/<int:item_id>")
    @limiter.limit("2/minute")
    def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    client = app.test_client()
    yield lambda path: _from_werkzeug(client.get(path))


def _from_werkzeug(response: Any) -> Seen:
    return seen(response.status_code, response.headers, response.data)


@contextmanager
def _django_project(limiter: Limiter, middleware: list[str]) -> Iterator[None]:
    from tests.contrib.django_setup import configure_django

    configure_django()
    from django.http import JsonResponse
    from django.test import override_settings
    from django.urls import path

    @limiter.limit("2/minute")
    def item(request: Any, item_id: int) -> JsonResponse:
        return JsonResponse({"id": item_id})

    urlconf = types.ModuleType("urls")
    urlconf.urlpatterns = [path("items/<int:item_id>", item)]  # type: ignore[attr-defined]
    with override_settings(ROOT_URLCONF=urlconf, RATEMW_LIMITER=limiter, MIDDLEWARE=middleware):
        yield


DJANGO_MIDDLEWARE = ["ratemw.contrib.django.RateLimitMiddleware"]


@contextmanager
def django_app(limiter: Limiter) -> Iterator[Fetch]:
    with _django_project(limiter, DJANGO_MIDDLEWARE):
        from django.test import Client

        client = Client()
        yield lambda path: _from_django(client.get(path))


@contextmanager
def django_asgi_app(limiter: Limiter) -> Iterator[Fetch]:
    with _django_project(limiter, DJANGO_MIDDLEWARE):
        from django.test import AsyncClient

        client = AsyncClient()
        yield lambda path: _from_django(asyncio.run(client.get(path)))


def _from_django(response: Any) -> Seen:
    return seen(response.status_code, response.headers, response.content)


@contextmanager
def django_wsgi_app(limiter: Limiter) -> Iterator[Fetch]:
    with _django_project(limiter, []):
        from django.core.handlers.wsgi import WSGIHandler
        from werkzeug.test import Client

        from ratemw.contrib.django import DjangoRoutes
        from ratemw.wsgi import WSGIRateLimitMiddleware

        app = WSGIRateLimitMiddleware(WSGIHandler(), limiter=limiter, routes=DjangoRoutes())
        client = Client(app)
        yield lambda path: _from_werkzeug(client.get(path))


APPS = [
    pytest.param(starlette_app, id="starlette"),
    pytest.param(fastapi_app, id="fastapi"),
    pytest.param(flask_app, id="flask"),
    pytest.param(django_app, id="django"),
    pytest.param(django_asgi_app, id="django-asgi"),
    pytest.param(django_wsgi_app, id="django-behind-WSGIRateLimitMiddleware"),
]


# -- what every one of them must answer -----------------------------------------------------

POLICY = ("ratelimit-policy", '"per-minute";q=2;w=60')


def _refused(item: int) -> Seen:
    body = (
        '{"type":"https://iana.org/assignments/http-problem-types#quota-exceeded",'
        '"title":"Request cannot be satisfied as assigned quota has been exceeded",'
        '"status":429,'
        f'"detail":"Rate limit exceeded: 2 requests per 1 minute on GET /items/{item}. '
        'Try again in 17 seconds.",'
        f'"instance":"/items/{item}",'
        '"violated-policies":["per-minute"],'
        '"retry_after":17,'
        '"policies":[{"name":"per-minute","quota":2,"unit":"requests","window":60,'
        '"remaining":0,"reset":17}]}'
    ).encode()
    headers = (
        ("cache-control", "no-store"),
        ("content-length", str(len(body))),
        ("content-type", "application/problem+json"),
        ("ratelimit", '"per-minute";r=0;t=17'),
        POLICY,
        ("retry-after", "17"),
    )
    return Seen(429, headers, body)


EXPECTED = [
    Seen(200, (("ratelimit", '"per-minute";r=1;t=60'), POLICY), None),
    Seen(200, (("ratelimit", '"per-minute";r=0;t=60'), POLICY), None),
    _refused(3),
    _refused(4),
]


def conversation(app: App, limiter: Limiter, clock: FakeClock) -> list[Seen]:
    """Two requests, 43 s of waiting, two more: each on another item of the one route."""
    with app(limiter) as fetch:
        first = [fetch("/items/1"), fetch("/items/2")]
        clock.advance(43)
        return [*first, fetch("/items/3"), fetch("/items/4")]


@pytest.mark.parametrize("app", APPS)
def test_every_framework_answers_alike(app: App, clock: FakeClock) -> None:
    assert conversation(app, Limiter(clock=clock), clock) == EXPECTED


@pytest.mark.parametrize("app", APPS)
@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        pytest.param(
            "legacy",
            [
                ("x-ratelimit-limit", "2"),
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", "1800000060"),
            ],
            id="legacy",
        ),
        pytest.param(
            "draft-7",
            [("ratelimit", "limit=2, remaining=0, reset=17"), ("ratelimit-policy", "2;w=60")],
            id="draft-7",
        ),
    ],
)
def test_header_modes_answer_alike(
    app: App, clock: FakeClock, mode: str, expected: list[tuple[str, str]]
) -> None:
    refused = conversation(app, Limiter(clock=clock, headers=mode), clock)[-1]
    assert refused.status == 429
    assert [h for h in refused.headers if "ratelimit" in h[0]] == expected
