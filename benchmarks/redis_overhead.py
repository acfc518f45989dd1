"""What a rate limiter adds to every request when it counts in Redis (in-process, loopback).

ASGI (one event loop, ``await app(scope, receive, send)``; helpers from ``_harness``):

1. ``bare``: a Starlette app answering ``GET /ping``;
2. ``evalsha``: the floor: a pure-ASGI middleware that sends one ``EVALSHA`` of ratemw's
   ``acquire.lua`` (one hit) through the client ratemw itself uses for scripts (its pipelined
   connection, ``ratemw.storage.redis.apipe``), then calls the bare app: one round trip and nothing
   else;
   ``evalsha-redis-py``: the same through redis-py's async client (for reference: what a
   round trip costs through the usual client);
3. ``ratemw``: ``RateLimitMiddleware`` + ``@limiter.limit``, Redis storage, headers on;
4. ``slowapi``: as documented (``SlowAPIMiddleware``, decorator, ``headers_enabled=True``,
   ``storage_uri="redis://..."``).

WSGI (Flask, called as a WSGI server would; helpers from ``wsgi_overhead``): ``bare``,
``evalsha`` (the same floor through ratemw's sync script connection,
``ratemw.storage.redis.pipe``), ``evalsha-redis-py`` (through redis-py's sync client),
``ratemw`` (``WSGIRateLimitMiddleware`` through ``ratemw.contrib.flask.init_app``),
``flask-limiter`` (``storage_uri``, headers on).

The limit is never reached. Variants are timed interleaved, each round starting one variant
later (A B C D, B C D A, ...); a variant's overhead in a round is its time per request minus
the bare app's in that round, and the tables show medians over rounds. A ratio (ratemw's
overhead over a rival's or the floor's) is taken in each round, and its median over rounds
is held to the target. Redis round trips per request are counted from
``INFO stats`` ``total_reads_processed`` around a batch of requests. The benchmark starts its
own ``redis-server`` on a free port (``tests/redis_servers.RedisServer``).

Run from the repository root::

    python -m benchmarks.redis_overhead                 # defaults: about 30 s
    python -m benchmarks.redis_overhead --rounds 5 --iterations 300     # quick look
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import sys
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

from flask import Flask
from flask_limiter import Limiter as FlaskLimiter
from flask_limiter.util import get_remote_address
from slowapi import Limiter as SlowLimiter
from slowapi import _rate_limit_exceeded_handler
from slowapi.errors import RateLimitExceeded as SlowRateLimitExceeded
from slowapi.middleware import SlowAPIMiddleware
from slowapi.util import get_remote_address as slow_remote_address
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from benchmarks import wsgi_overhead
from benchmarks._harness import (
    ASGIApp,
    Receive,
    Scope,
    Send,
    Variant,
    call,
    http_scope,
    interleaved,
    median,
    paired_overheads,
    paired_ratios,
    quartiles,
    rotated,
    time_batch,
)
from ratemw import Limiter, RateLimitMiddleware
from ratemw.contrib.flask import init_app
from ratemw.storage.redis import SCRIPT, SCRIPT_SHA, AsyncRedisStorage, RedisStorage
from ratemw.storage.redis.apipe import AsyncPipe
from ratemw.storage.redis.pipe import Pipe
from tests.redis_servers import RedisServer

BIG_LIMIT = "1000000/minute"  # never reached: the cost of counting, not of refusing
PATH = "/ping"
SLOW_TARGET = 1 / 3  # ratemw's overhead over slowapi's / flask-limiter's, at most
FLOOR_TARGET = 1.2  # ratemw's overhead over one bare EVALSHA round trip, at most
FLOOR_ARGS = ("acquire 0", "fw 1000000 60000 1 1 0")  # one fixed-window hit
# redis-py sends the script's last argument, the call token ratemw's connections add
# themselves (the script echoes it, so that a reply is matched to its call).
REDIS_PY_ARGS = (*FLOOR_ARGS, "1000000000000000")


async def _pong(request: Request) -> PlainTextResponse:
    return PlainTextResponse("pong")


# -- ASGI variants -------------------------------------------------------------------------------


class EvalshaFloor:
    """One ``EVALSHA`` per request through ratemw's own script connection, then the app."""

    def __init__(self, app: ASGIApp, pipe: AsyncPipe) -> None:
        self.app = app
        self.pipe = pipe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.pipe.script(SCRIPT_SHA, SCRIPT, ["floor:{bench}:ping"], FLOOR_ARGS)
        await self.app(scope, receive, send)


class RedisPyFloor:
    """One ``EVALSHA`` per request through redis-py's async client, then the app."""

    def __init__(self, app: ASGIApp, client: Any) -> None:
        self.app = app
        self.client = client

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.client.evalsha(SCRIPT_SHA, 1, "floor:{bench}:ping-py", *REDIS_PY_ARGS)
        await self.app(scope, receive, send)


def asgi_apps(url: str) -> tuple[dict[str, ASGIApp], Limiter]:
    limiter = Limiter(storage=url)

    @limiter.limit(BIG_LIMIT)
    async def ping(request: Request) -> PlainTextResponse:
        return PlainTextResponse("pong")

    ours = Starlette(routes=[Route(PATH, ping)])
    ours.add_middleware(RateLimitMiddleware, limiter=limiter)

    slow_limiter = SlowLimiter(key_func=slow_remote_address, headers_enabled=True, storage_uri=url)

    @slow_limiter.limit(BIG_LIMIT)
    async def slow_ping(request: Request) -> PlainTextResponse:
        return PlainTextResponse("pong")

    slow = Starlette(routes=[Route(PATH, slow_ping)])
    slow.state.limiter = slow_limiter
    slow.add_exception_handler(SlowRateLimitExceeded, _rate_limit_exceeded_handler)  # type: ignore[arg-type]
    slow.add_middleware(SlowAPIMiddleware)

    bare = Starlette(routes=[Route(PATH, _pong)])
    storage = limiter.backends.async_
    assert isinstance(storage, AsyncRedisStorage)
    host, port = storage.config.hosts[0]
    pipe = AsyncPipe((host, port), storage.config.options, tls=False)
    floor = EvalshaFloor(Starlette(routes=[Route(PATH, _pong)]), pipe)
    redis_py = RedisPyFloor(Starlette(routes=[Route(PATH, _pong)]), storage.client)
    apps: dict[str, ASGIApp] = {
        "bare": bare,
        "evalsha": floor,
        "evalsha-redis-py": redis_py,
        "ratemw": ours,
        "slowapi": slow,
    }
    return apps, limiter


# -- WSGI variants -------------------------------------------------------------------------------

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Any]


def wsgi_apps(url: str) -> tuple[dict[str, WSGIApp], Limiter]:
    bare = Flask("bare")
    bare.add_url_rule(PATH, "ping", lambda: "pong")

    floor_storage = RedisStorage(url)
    floor_client = floor_storage.client
    floor_client.script_load(SCRIPT)
    host, port = floor_storage.config.hosts[0]
    floor_pipe = Pipe((host, port), floor_storage.config.options, tls=False)

    def floor_app(name: str, round_trip: Callable[[], Any]) -> Flask:
        app = Flask(name)
        app.add_url_rule(PATH, "ping", lambda: "pong")
        inner = app.wsgi_app

        def floor(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            round_trip()
            return inner(environ, start_response)

        app.wsgi_app = floor  # type: ignore[method-assign]
        return app

    floor_flask = floor_app(
        "floor",
        lambda: floor_pipe.script(SCRIPT_SHA, SCRIPT, ["floor:{bench}:ping-wsgi"], FLOOR_ARGS),
    )
    redis_py_flask = floor_app(
        "floor-redis-py",
        lambda: floor_client.evalsha(SCRIPT_SHA, 1, "floor:{bench}:ping-wsgi-py", *REDIS_PY_ARGS),
    )

    ours = Flask("ratemw")
    limiter = Limiter(storage=url)
    init_app(ours, limiter)
    ours.add_url_rule(PATH, "ping", limiter.limit(BIG_LIMIT)(lambda: "pong"))

    theirs = Flask("flask_limiter")
    flask_limiter = FlaskLimiter(
        get_remote_address, app=theirs, storage_uri=url, headers_enabled=True
    )
    theirs.add_url_rule(PATH, "ping", flask_limiter.limit(BIG_LIMIT)(lambda: "pong"))
    apps: dict[str, WSGIApp] = {
        "bare": bare,
        "evalsha": floor_flask,
        "evalsha-redis-py": redis_py_flask,
        "ratemw": ours,
        "flask-limiter": theirs,
    }
    return apps, limiter


# -- measuring -----------------------------------------------------------------------------------


def round_trips(server: RedisServer, run: Callable[[], Any], requests: int) -> float:
    before = server.reads_processed()
    run()
    return (server.reads_processed() - before) / requests


async def measure_asgi(
    server: RedisServer, rounds: int, iterations: int
) -> tuple[dict[str, list[float]], dict[str, float]]:
    apps, limiter = asgi_apps(server.url)
    redis_py = apps["evalsha-redis-py"]
    assert isinstance(redis_py, RedisPyFloor)
    await redis_py.client.script_load(SCRIPT)
    scope = http_scope(PATH)
    variants = [Variant(name, app) for name, app in apps.items()]
    for variant in variants:  # warm-up: connections, scripts, caches
        response = await call(variant.app, scope)
        assert response.status == 200, (variant.name, response.status)
        await time_batch(variant.app, scope, max(100, iterations // 5), variant.send)
    trips: dict[str, float] = {}
    for variant in variants:
        before = server.reads_processed()
        await time_batch(variant.app, scope, 200, variant.send)
        trips[variant.name] = (server.reads_processed() - before) / 200
    await interleaved(variants, scope, iterations=iterations, rounds=rounds, rotate=True)
    for variant in variants:
        others = variant.send.others_than(200)
        assert not others, f"{variant.name}: non-200 responses while timing: {others}"
    floor = apps["evalsha"]
    assert isinstance(floor, EvalshaFloor)
    await floor.pipe.aclose()
    await limiter.backends.async_.aclose()
    return {v.name: v.per_request for v in variants}, trips


def measure_wsgi(
    server: RedisServer, rounds: int, iterations: int
) -> tuple[dict[str, list[float]], dict[str, float]]:
    apps, limiter = wsgi_apps(server.url)
    environ = wsgi_overhead.base_environ()
    for app in apps.values():
        wsgi_overhead.time_batch(app, environ, max(100, iterations // 5))
    trips = {
        name: round_trips(server, lambda app=app: wsgi_overhead.time_batch(app, environ, 200), 200)
        for name, app in apps.items()
    }
    per_request: dict[str, list[float]] = {name: [] for name in apps}
    for round_no in range(rounds):
        for name in rotated(list(apps), round_no):
            per_request[name].append(wsgi_overhead.time_batch(apps[name], environ, iterations))
    limiter.backends.sync.close()
    return per_request, trips


# -- reporting -----------------------------------------------------------------------------------


def table(
    title: str, per_request: dict[str, list[float]], trips: dict[str, float]
) -> dict[str, float]:
    bare = Variant("bare", None, per_request=per_request["bare"])  # type: ignore[arg-type]
    print(f"\n{title}\n")
    print("| variant | µs/request | overhead µs (median) | overhead IQR µs | round trips/request |")
    print("|---|---:|---:|---:|---:|")
    overheads: dict[str, float] = {}
    for name, times in per_request.items():
        per = median(times) * 1e6
        if name == "bare":
            print(f"| {name} | {per:.1f} | — | — | {trips[name]:.2f} |")
            continue
        extra = paired_overheads(Variant(name, None, per_request=times), bare)  # type: ignore[arg-type]
        overheads[name] = median(extra)
        low, high = (q * 1e6 for q in quartiles(extra))
        print(
            f"| {name} | {per:.1f} | {overheads[name] * 1e6:+.1f} | {low:.1f} to {high:.1f} "
            f"| {trips[name]:.2f} |"
        )
    return overheads


def verdicts(label: str, per_request: dict[str, list[float]], rival: str) -> bool:
    """Print the ratios and whether they meet their targets (under ASGI and WSGI alike).

    Each ratio is taken per round (both overheads measured in that round), then the median
    over rounds is compared with its target; the interquartile range shows the spread.
    """
    variants = {
        name: Variant(name, None, per_request=times)  # type: ignore[arg-type]
        for name, times in per_request.items()
    }
    ours, bare = variants["ratemw"], variants["bare"]

    def ratio(reference: str) -> tuple[float, str]:
        ratios = paired_ratios(ours, variants[reference], bare)
        low, high = quartiles(ratios)
        return median(ratios), f"IQR {low:.3f} to {high:.3f}"

    versus_rival, rival_spread = ratio(rival)
    versus_floor, floor_spread = ratio("evalsha")
    met_rival, met_floor = versus_rival <= SLOW_TARGET, versus_floor <= FLOOR_TARGET
    print()
    print(
        f"{label}: ratemw / {rival} overhead = {versus_rival:.3f} ({rival_spread}; "
        f"target <= 0.333: {'met' if met_rival else 'MISSED'}); "
        f"{rival} costs {1 / versus_rival:.1f}x ratemw"
    )
    print(
        f"{label}: ratemw / bare EVALSHA round trip = {versus_floor:.3f} ({floor_spread}; "
        f"target <= {FLOOR_TARGET}: {'met' if met_floor else 'MISSED'})"
    )
    if "evalsha-redis-py" in per_request:
        versus_redis_py, spread = ratio("evalsha-redis-py")
        print(
            f"{label}: ratemw / bare EVALSHA through redis-py's client = "
            f"{versus_redis_py:.3f} ({spread}; information)"
        )
    return met_rival and met_floor


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20, help="interleaved rounds (20)")
    parser.add_argument(
        "--iterations", type=int, default=750, help="requests per variant per round (750)"
    )
    args = parser.parse_args(argv)
    server = RedisServer(name="bench").start()
    try:
        names = ("ratemw", "starlette", "slowapi", "flask", "flask-limiter", "limits", "redis")
        print(
            f"Python {platform.python_version()} on {platform.machine()}, "
            + ", ".join(f"{n} {version(n)}" for n in names)
            + f", redis-server {server.info('server')['redis_version']}"
        )
        print(
            f"{args.rounds} interleaved rounds x {args.iterations} requests per variant, "
            "each round starting one variant later; medians over rounds"
        )
        asgi, asgi_trips = asyncio.run(measure_asgi(server, args.rounds, args.iterations))
        table("ASGI (Starlette), Redis storage", asgi, asgi_trips)
        ok = verdicts("ASGI", asgi, "slowapi")
        wsgi, wsgi_trips = measure_wsgi(server, args.rounds, args.iterations)
        table("WSGI (Flask), Redis storage", wsgi, wsgi_trips)
        ok = verdicts("WSGI", wsgi, "flask-limiter") and ok
    finally:
        server.stop()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
