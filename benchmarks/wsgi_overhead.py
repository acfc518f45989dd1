"""What a rate limiter adds to every Flask request, measured in-process (no network).

Three Flask apps answer the same ``GET /ping`` with ``"pong"``:

1. ``bare``: the app alone;
2. ``ratemw``: ``ratemw.contrib.flask.init_app`` + ``@limiter.limit``, memory storage,
   default headers (draft-10 ``RateLimit`` and ``RateLimit-Policy``);
3. ``flask-limiter``: flask-limiter as its documentation sets it up (``Limiter(app=...)``,
   the decorator, ``headers_enabled=True``), memory storage.

The limit is never reached: this measures what counting costs, not refusing. Each app is
called as a WSGI server would (``app(environ, start_response)``, the body iterated and
closed) with an environ built once and copied per request (Flask writes into it). Variants
are timed interleaved (A B C, A B C, ...) in one process; each round's overhead is the
variant's time per request minus the bare app's in the same round, and the medians over the
rounds are reported, with the ratio of ratemw's overhead to flask-limiter's. Times are the
process's CPU time, so other load on the machine does not skew them.

    python -m benchmarks.wsgi_overhead                    # the defaults: about 20 s
    python -m benchmarks.wsgi_overhead --rounds 5 --iterations 1000   # quick look
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from importlib.metadata import version
from typing import Any

from flask import Flask
from flask_limiter import Limiter as FlaskLimiter
from flask_limiter.util import get_remote_address
from werkzeug.test import EnvironBuilder

from ratemw import Limiter
from ratemw.contrib.flask import init_app

BIG_LIMIT = "1000000/minute"  # never reached
TINY_LIMIT = "2/minute"  # for the sanity checks: the third request must be refused
PATH = "/ping"
TARGET = 1 / 5  # ratemw's overhead over flask-limiter's, at most

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def bare_app(limit: str = BIG_LIMIT) -> WSGIApp:
    del limit  # no limiter
    app = Flask("bare")
    app.add_url_rule(PATH, "ping", lambda: "pong")
    return app


def ratemw_app(limit: str = BIG_LIMIT) -> WSGIApp:
    app = Flask("ratemw")
    limiter = Limiter(storage="memory://")
    init_app(app, limiter)
    app.add_url_rule(PATH, "ping", limiter.limit(limit)(lambda: "pong"))
    return app


def flask_limiter_app(limit: str = BIG_LIMIT) -> WSGIApp:
    app = Flask("flask_limiter")
    limiter = FlaskLimiter(
        get_remote_address, app=app, storage_uri="memory://", headers_enabled=True
    )
    app.add_url_rule(PATH, "ping", limiter.limit(limit)(lambda: "pong"))
    return app


FACTORIES: dict[str, Callable[[str], WSGIApp]] = {
    "bare": bare_app,
    "ratemw": ratemw_app,
    "flask-limiter": flask_limiter_app,
}


def base_environ() -> dict[str, Any]:
    environ = EnvironBuilder(path=PATH, environ_base={"REMOTE_ADDR": "192.0.2.10"}).get_environ()
    environ["HTTP_USER_AGENT"] = "ratemw-bench"
    environ["HTTP_ACCEPT"] = "*/*"
    return environ


class Recorder:
    """A ``start_response`` that keeps the last status and headers (cheap: one call each)."""

    __slots__ = ("headers", "status")

    def __init__(self) -> None:
        self.status = ""
        self.headers: list[tuple[str, str]] = []

    def __call__(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        self.status = status
        self.headers = headers
        return None


def call(app: WSGIApp, environ: dict[str, Any], start_response: Recorder) -> bytes:
    """One request, served the way a WSGI server serves it."""
    result = app(environ.copy(), start_response)
    try:
        return b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()


def time_batch(app: WSGIApp, environ: dict[str, Any], iterations: int) -> float:
    """Seconds per request over ``iterations`` sequential requests through ``app``."""
    recorder = Recorder()
    gc.collect()
    # CPU time of this process: on a shared machine other processes' load does not count.
    start = time.process_time()
    for _ in range(iterations):
        call(app, environ, recorder)
    elapsed = (time.process_time() - start) / iterations
    if not recorder.status.startswith("200"):
        raise AssertionError(f"a timed request was answered {recorder.status}")
    return elapsed


def sanity_check(environ: dict[str, Any]) -> None:
    """Both limiters must really count: headers on success, the third request refused."""
    for name in ("ratemw", "flask-limiter"):
        app = FACTORIES[name](TINY_LIMIT)
        recorder = Recorder()
        statuses = []
        for _ in range(3):
            call(app, environ, recorder)
            statuses.append(int(recorder.status.split()[0]))
        if statuses != [200, 200, 429]:
            raise AssertionError(f"{name}: expected [200, 200, 429], got {statuses}")
        call(FACTORIES[name](TINY_LIMIT), environ, recorder)
        names = {header.lower() for header, _ in recorder.headers}
        if not ({"ratelimit", "x-ratelimit-remaining"} & names):
            raise AssertionError(f"{name}: no rate-limit headers on success: {sorted(names)}")


def measure(rounds: int, iterations: int) -> dict[str, list[float]]:
    environ = base_environ()
    sanity_check(environ)
    apps = {name: factory(BIG_LIMIT) for name, factory in FACTORIES.items()}
    for app in apps.values():  # warm-up: first requests fill caches
        time_batch(app, environ, max(100, iterations // 10))
    per_request: dict[str, list[float]] = {name: [] for name in apps}
    for _ in range(rounds):
        for name, app in apps.items():
            per_request[name].append(time_batch(app, environ, iterations))
    return per_request


def report(per_request: dict[str, list[float]]) -> float:
    bare = per_request["bare"]
    print(f"{'variant':<14}{'µs/request':>12}{'overhead µs':>14}{'IQR':>18}")
    overheads: dict[str, float] = {}
    for name, times in per_request.items():
        extra = [t - b for t, b in zip(times, bare, strict=True)]
        q1, _, q3 = statistics.quantiles(extra, n=4, method="inclusive")
        overheads[name] = statistics.median(extra)
        print(
            f"{name:<14}{statistics.median(times) * 1e6:>12.1f}"
            f"{overheads[name] * 1e6:>14.1f}{f'{q1 * 1e6:.1f}..{q3 * 1e6:.1f}':>18}"
        )
    ratio = overheads["ratemw"] / overheads["flask-limiter"]
    print(f"\nratemw overhead / flask-limiter overhead = {ratio:.3f} (target <= {TARGET:.3f})")
    print(f"flask-limiter overhead / ratemw overhead = {1 / ratio:.1f}x")
    return ratio


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--iterations", type=int, default=3000)
    args = parser.parse_args(argv)
    print(
        f"Python {platform.python_version()}, Flask {version('flask')}, "
        f"flask-limiter {version('flask-limiter')}, ratemw {version('ratemw')}; "
        f"{args.rounds} interleaved rounds x {args.iterations} requests\n"
    )
    ratio = report(measure(args.rounds, args.iterations))
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
