"""What a rate limiter adds to every ASGI request, measured in-process (no network).

Four Starlette apps answer the same ``GET /ping`` with a small ``PlainTextResponse``:

1. ``bare``: the app alone;
2. ``ratemw``: ``RateLimitMiddleware`` + ``@limiter.limit``, memory storage, default headers
   (draft-10 ``RateLimit`` and ``RateLimit-Policy``);
3. ``slowapi``: slowapi as its documentation sets it up (``SlowAPIMiddleware``, the decorator,
   ``headers_enabled=True``), memory storage;
4. ``floor``: the least a limiter with headers can do: a minimal pure-ASGI middleware calling
   ``limits.aio`` (fixed window, memory) ``hit`` + ``get_window_stats``.

Each app is called as ``await app(scope, receive, send)`` in a tight loop on one event loop.
Variants are timed interleaved (A B C D, A B C D, ...) in one process; each round's overhead
is the variant's time per request minus the bare app's in the same round, and the table shows
medians over rounds. Before timing, every limiter is shown to refuse a request over a tiny
limit, and the benchmarked instances to send headers whose counters move.

Run from the repository root::

    python -m benchmarks.asgi_overhead                 # the defaults: about 30-60 s
    python -m benchmarks.asgi_overhead --rounds 10 --iterations 1000   # quick look
    python -m benchmarks.asgi_overhead --profile       # cProfile of the ratemw variant
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import math
import os
import platform
import pstats
import subprocess
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import limits
import limits.aio.storage
import limits.aio.strategies
from slowapi import Limiter as SlowLimiter
from slowapi import _rate_limit_exceeded_handler
from slowapi.errors import RateLimitExceeded as SlowRateLimitExceeded
from slowapi.middleware import SlowAPIMiddleware
from slowapi.util import get_remote_address
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import ratemw
from benchmarks._harness import (
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
    Variant,
    call,
    http_scope,
    interleaved,
    median,
    paired_overheads,
    quartiles,
    receive,
    time_batch,
)
from ratemw import Limiter, RateLimitMiddleware

BIG_LIMIT = "1000000/minute"  # never reached: we measure the cost of counting, not of refusing
TINY_LIMIT = "2/minute"  # for the sanity checks: the third request must be refused
PATH = "/ping"
SLOWAPI_TARGET = 1 / 15  # ratemw's overhead over slowapi's, at most
FLOOR_TARGET = 1.5  # ratemw's overhead over the floor's, at most

AppFactory = Callable[[str], ASGIApp]


async def _pong(request: Request) -> PlainTextResponse:
    return PlainTextResponse("pong")


# -- the variants ----------------------------------------------------------------------------


def bare_app(limit: str = BIG_LIMIT) -> ASGIApp:
    del limit  # no limiter
    return Starlette(routes=[Route(PATH, _pong)])


def ratemw_app(limit: str = BIG_LIMIT) -> ASGIApp:
    limiter = Limiter(storage="memory://")

    @limiter.limit(limit)
    async def ping(request: Request) -> PlainTextResponse:
        return PlainTextResponse("pong")

    app = Starlette(routes=[Route(PATH, ping)])
    app.add_middleware(RateLimitMiddleware, limiter=limiter)
    return app


def slowapi_app(limit: str = BIG_LIMIT) -> ASGIApp:
    limiter = SlowLimiter(key_func=get_remote_address, headers_enabled=True)  # memory://

    @limiter.limit(limit)
    async def ping(request: Request) -> PlainTextResponse:
        return PlainTextResponse("pong")

    app = Starlette(routes=[Route(PATH, ping)])
    app.state.limiter = limiter
    app.add_exception_handler(SlowRateLimitExceeded, _rate_limit_exceeded_handler)  # type: ignore[arg-type]
    app.add_middleware(SlowAPIMiddleware)
    return app


class FloorMiddleware:
    """The floor: a minimal pure-ASGI limiter on ``limits.aio``, with ``RateLimit`` headers.

    One fixed-window limit keyed by client host; ``hit`` then ``get_window_stats`` (for the
    remaining count and the reset), headers added to ``http.response.start`` by wrapping
    ``send``. No routing, no configuration, no problem+json: the least any limiter with
    headers has to do.
    """

    def __init__(self, app: ASGIApp, limit: str = BIG_LIMIT) -> None:
        self.app = app
        self.item = limits.parse(limit)
        self.strategy = limits.aio.strategies.FixedWindowRateLimiter(
            limits.aio.storage.MemoryStorage()
        )
        self.name = f'"per-{self.item.GRANULARITY.name}"'
        self.policy = f"{self.name};q={self.item.amount};w={self.item.get_expiry()}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        key = client[0] if client else "unknown"
        allowed = await self.strategy.hit(self.item, key)
        stats = await self.strategy.get_window_stats(self.item, key)
        reset = max(0, math.ceil(stats.reset_time - time.time()))
        state = f"{self.name};r={stats.remaining};t={reset}".encode()
        extra = [(b"ratelimit-policy", self.policy), (b"ratelimit", state)]
        if not allowed:
            body = b"rate limit exceeded"
            await send(
                {
                    "type": "http.response.start",
                    "status": 429,
                    "headers": [
                        (b"content-type", b"text/plain"),
                        (b"content-length", str(len(body)).encode()),
                        (b"retry-after", str(max(1, reset)).encode()),
                        *extra,
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def floor_app(limit: str = BIG_LIMIT) -> ASGIApp:
    app = Starlette(routes=[Route(PATH, _pong)])
    app.add_middleware(FloorMiddleware, limit=limit)
    return app


FACTORIES: dict[str, AppFactory] = {
    "bare": bare_app,
    "ratemw": ratemw_app,
    "slowapi": slowapi_app,
    "floor": floor_app,
}
# The header each limiter sends on success and the parameter/header holding "remaining".
REMAINING: dict[str, tuple[str, Callable[[str], int]]] = {
    "ratemw": ("RateLimit", lambda v: int(v.split(";r=")[1].split(";")[0])),
    "slowapi": ("X-RateLimit-Remaining", int),
    "floor": ("RateLimit", lambda v: int(v.split(";r=")[1].split(";")[0])),
}


# -- sanity checks ---------------------------------------------------------------------------


class SanityError(AssertionError):
    pass


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise SanityError(message)


async def check_refuses(name: str, factory: AppFactory, scope: dict[str, Any]) -> None:
    """A fresh app with a tiny limit admits two requests and refuses the third."""
    app = factory(TINY_LIMIT)
    statuses = [(await call(app, scope)).status for _ in range(3)]
    _check(statuses == [200, 200, 429], f"{name} with {TINY_LIMIT!r}: got {statuses}")
    refused = await call(app, scope)
    retry_after = refused.header("Retry-After")
    _check(
        refused.status == 429 and retry_after is not None and int(retry_after) >= 1,
        f"{name}: a refused request must carry Retry-After >= 1, got {retry_after!r}",
    )


async def check_counts(variant: Variant, scope: dict[str, Any]) -> None:
    """The instance about to be timed answers 200 with headers whose counter goes down."""
    header, parse = REMAINING[variant.name]
    first, second = await call(variant.app, scope), await call(variant.app, scope)
    for response in (first, second):
        _check(
            response.status == 200 and response.body == b"pong",
            f"{variant.name}: expected 200 pong, got {response.status} {response.body!r}",
        )
        _check(
            response.header(header) is not None,
            f"{variant.name}: no {header} header on success: {response.headers}",
        )
    before = parse(first.header(header) or "")
    after = parse(second.header(header) or "")
    _check(
        after == before - 1,
        f"{variant.name}: remaining went {before} -> {after}; the limiter is not counting",
    )
    if variant.name == "ratemw":
        _check(first.header("RateLimit-Policy") is not None, "ratemw: no RateLimit-Policy")


async def sanity(variants: list[Variant], scope: dict[str, Any]) -> None:
    bare = await call(variants[0].app, scope)
    _check(bare.status == 200 and bare.body == b"pong", f"bare: {bare.status} {bare.body!r}")
    for variant in variants[1:]:
        await check_refuses(variant.name, FACTORIES[variant.name], scope)
        await check_counts(variant, scope)


# -- running ---------------------------------------------------------------------------------


def _versions() -> str:
    names = ("starlette", "limits", "slowapi")
    return ", ".join(f"{n} {version(n)}" for n in names)


def _ratemw_source() -> str:
    """Where the measured ratemw comes from, with its git commit when there is one."""
    package = Path(ratemw.__file__).resolve().parent
    where = f"ratemw {ratemw.__version__} from {package.parent}"
    try:
        git = ["git", "-C", str(package.parent)]
        commit = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", str(package)],
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return where
    return f"{where} (git {commit}{', uncommitted changes' if dirty.strip() else ''})"


def report(variants: list[Variant], iterations: int, rounds: int, source: str) -> None:
    bare = variants[0]
    by_name = {v.name: v for v in variants}
    overheads = {v.name: paired_overheads(v, bare) for v in variants}
    best_bare = min(bare.per_request)
    print()
    print(
        f"Python {platform.python_version()} on {platform.machine()}, "
        f"{os.cpu_count()} CPUs, {_versions()}"
    )
    print(source)
    print(f"{rounds} rounds x {iterations} requests per variant, interleaved; µs per request")
    print()
    print(
        "| variant | median | overhead (median of paired) | overhead IQR | best round "
        "| overhead (best rounds) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for variant in variants:
        per = median(variant.per_request) * 1e6
        best = min(variant.per_request) * 1e6
        if variant is bare:
            print(f"| {variant.name} | {per:.1f} | — | — | {best:.1f} | — |")
            continue
        over = median(overheads[variant.name]) * 1e6
        low, high = (q * 1e6 for q in quartiles(overheads[variant.name]))
        best_over = best - best_bare * 1e6
        print(
            f"| {variant.name} | {per:.1f} | {over:+.1f} | {low:.1f} to {high:.1f} "
            f"| {best:.1f} | {best_over:+.1f} |"
        )
    print()
    names = ("ratemw", "slowapi", "floor")
    for label, picked in (
        ("median", [median(overheads[name]) for name in names]),
        ("best rounds", [min(by_name[name].per_request) - best_bare for name in names]),
    ):
        ours, slow, floor = picked
        for what, ratio, target, shown in (
            ("ratemw / slowapi overhead", ours / slow, SLOWAPI_TARGET, "1/15 = 0.067"),
            ("ratemw / floor overhead", ours / floor, FLOOR_TARGET, "1.5"),
        ):
            verdict = "met" if ratio <= target else "MISSED"
            print(f"{what:<26} ({label:<11}) {ratio:6.3f}  target <= {shown}: {verdict}")
    refused = {v.name: v.send.others_than(200) for v in variants if v.send.others_than(200)}
    _check(not refused, f"non-200 responses while timing: {refused}")


async def benchmark(iterations: int, rounds: int, warmup: int) -> None:
    source = _ratemw_source()  # now: the code was imported at start-up, not at the end
    scope = http_scope(PATH)
    variants = [Variant(name, factory(BIG_LIMIT)) for name, factory in FACTORIES.items()]
    await sanity(variants, scope)
    total = (warmup + iterations * rounds) + 2
    _check(
        total < limits.parse(BIG_LIMIT).amount,
        f"{total} requests per variant could reach {BIG_LIMIT}; use fewer",
    )
    for variant in variants:
        await time_batch(variant.app, scope, warmup, variant.send)
    started = time.perf_counter()

    def progress(done: int) -> None:
        elapsed = time.perf_counter() - started
        print(f"\rround {done}/{rounds}  ({elapsed:.0f} s)", end="", file=sys.stderr, flush=True)

    await interleaved(variants, scope, iterations=iterations, rounds=rounds, progress=progress)
    print(file=sys.stderr)
    for variant in variants:
        expected = warmup + iterations * rounds
        _check(
            variant.send.total() == expected,
            f"{variant.name}: {variant.send.total()} responses for {expected} requests",
        )
    report(variants, iterations, rounds, source)


async def profile(requests: int, warmup: int, top: int = 25) -> None:
    """cProfile of the ratemw variant alone (the app under it included), top functions."""
    source = _ratemw_source()
    scope = http_scope(PATH)
    variant = Variant("ratemw", ratemw_app())
    await check_refuses("ratemw", ratemw_app, scope)
    await check_counts(variant, scope)
    await time_batch(variant.app, scope, warmup, variant.send)
    app, send, copy = variant.app, variant.send, scope.copy
    gc.collect()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(requests):
        await app(copy(), receive, send)
    profiler.disable()
    _check(not variant.send.others_than(200), f"ratemw refused: {variant.send.statuses}")
    print(f"cProfile of the ratemw variant, {requests} requests (app + middleware)")
    print(source)
    print("Note: pstats keeps one entry per (file, line, name), so the generated __init__ of")
    print("every dataclass shows up as a single '<string>:2(__init__)' row, under-counted.")
    stats = pstats.Stats(profiler)
    stats.sort_stats(pstats.SortKey.TIME).print_stats(top)
    print("Only ratemw's own functions:")
    stats.sort_stats(pstats.SortKey.TIME).print_stats("/ratemw/", top)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--iterations", type=int, default=500, help="requests per variant per round (default 500)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=100,
        help="interleaved rounds; the table shows medians over them (default 100)",
    )
    parser.add_argument(
        "--warmup", type=int, default=1000, help="untimed requests per variant first (default 1000)"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile the ratemw variant only (20 x --iterations requests); "
        "print the top 25 functions by tottime",
    )
    args = parser.parse_args(argv)
    if args.iterations < 1 or args.rounds < 1 or args.warmup < 0:
        parser.error("--iterations and --rounds must be >= 1, --warmup >= 0")
    if args.profile:
        asyncio.run(profile(args.iterations * 20, args.warmup))
    else:
        asyncio.run(benchmark(args.iterations, args.rounds, args.warmup))


if __name__ == "__main__":
    main()
