"""Load through a Redis outage: what callers see before, during and after it.

The benchmark starts its own ``redis-server`` (``tests/redis_servers.RedisServer``) and a
``uvicorn`` process (one worker) serving a one-route Starlette app limited on that Redis
(``create_app`` below, configured through ``RATEMW_BENCH_*`` environment variables). A fixed
number of concurrent clients (keep-alive connections of a minimal HTTP/1.1 client) then send
``GET /ping`` for ``--duration`` seconds; Redis is killed (SIGKILL) at ``--kill-at`` and
started again, empty, on the same port at ``--restart-at``. With ``--fault hang`` it is
stopped (SIGSTOP: connections are accepted, nothing is answered) and continued (SIGCONT)
instead. This runs once per ``failure_mode`` (``allow``, then ``deny``).

The limit (``1000000/minute``) is never reached, so every status comes from the storage's
health and the failure policy: ``200`` with ``RateLimit`` headers (counted in Redis), ``200``
without them (let through by ``failure_mode="allow"``), ``503`` (``"deny"``). Each phase's
table row gives the requests served, their statuses, and latency percentiles measured at the
client (connection reuse, uvicorn, the app and ratemw included); a request counts in the phase
it started in, so the requests in flight when Redis dies count "before". ``recovery`` is the
time from the restart (the new server's start-up included) to the first request counted in
Redis again.

Everything runs on 127.0.0.1 on one machine: the load generator, uvicorn and Redis compete for
the same cores, so absolute numbers are the machine's; compare phases, not machines.

Run from the repository root::

    python -m benchmarks.load_failover                        # 2 x 40 s
    python -m benchmarks.load_failover --duration 12 --kill-at 3 --restart-at 7   # quick look
    python -m benchmarks.load_failover --modes deny --socket-timeout 0.05
    python -m benchmarks.load_failover --fault hang        # a hung Redis instead of a dead one
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import version
from pathlib import Path

import httpx2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from ratemw import Limiter, RateLimitMiddleware
from tests.redis_servers import HOST, RedisServer, find_free_port

ROOT = Path(__file__).resolve().parent.parent
LIMIT = "1000000/minute"  # never reached: statuses show the failure policy, not the limit
ENV_STORAGE = "RATEMW_BENCH_STORAGE"
ENV_MODE = "RATEMW_BENCH_FAILURE_MODE"
ENV_OPTIONS = "RATEMW_BENCH_STORAGE_OPTIONS"
START_TIMEOUT = 20.0


# -- the app (imported by uvicorn in its own process) ----------------------------------------


def create_app() -> Starlette:
    """The served app: ``/ping`` limited on the storage in ``RATEMW_BENCH_STORAGE``."""
    limiter = Limiter(
        storage=os.environ[ENV_STORAGE],
        failure_mode=os.environ.get(ENV_MODE, "allow"),
        storage_options=json.loads(os.environ.get(ENV_OPTIONS, "{}")),
    )

    @limiter.limit(LIMIT)
    async def ping(request: Request) -> PlainTextResponse:
        return PlainTextResponse("pong")

    @limiter.exempt
    async def health(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/ping", ping), Route("/health", health)])
    app.add_middleware(RateLimitMiddleware, limiter=limiter)
    return app


# -- measuring ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    started: float  # seconds since the load began
    latency: float  # seconds
    status: int  # 0: the request itself failed (connection error)
    counted: bool  # the response carried RateLimit headers: Redis counted it


@dataclass
class Phase:
    name: str
    start: float
    end: float
    samples: list[Sample] = field(default_factory=list)

    def row(self) -> list[str]:
        latencies = sorted(s.latency for s in self.samples)
        statuses = Counter(
            "200 counted"
            if s.status == 200 and s.counted
            else "200 not counted"
            if s.status == 200
            else str(s.status)
            for s in self.samples
        )
        seconds = self.end - self.start
        return [
            self.name,
            str(len(self.samples)),
            f"{len(self.samples) / seconds:.0f}",
            ", ".join(f"{n} x {status}" for status, n in sorted(statuses.items())),
            *(_ms(_percentile(latencies, p)) for p in (50, 95, 99)),
            _ms(latencies[-1] if latencies else float("nan")),
        ]


def _percentile(ordered: Sequence[float], p: float) -> float:
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))
    return ordered[index]


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


@dataclass
class Run:
    mode: str
    samples: list[Sample]
    chaos: Chaos
    duration: float

    def phases(self) -> list[Phase]:
        """Before the kill, from the kill to the restart, from the restart to the end."""
        phases = [
            Phase("before", 0.0, self.chaos.killed),
            Phase("during", self.chaos.killed, self.chaos.restarted),
            Phase("after", self.chaos.restarted, self.duration),
        ]
        for sample in self.samples:
            for phase in phases:
                if phase.start <= sample.started < phase.end:
                    phase.samples.append(sample)
        return phases

    def recovery(self) -> float | None:
        """Seconds from the restart (the new process's start included) until the first request
        counted in Redis again."""
        restarted = self.chaos.restarted
        counted = [s.started for s in self.samples if s.counted and s.started >= restarted]
        return min(counted) - restarted if counted else None


class _Connection:
    """A minimal keep-alive HTTP/1.1 client connection: a light load generator.

    A general-purpose client (httpx2 here) costs more CPU per request than the server it
    measures; on a 2-core machine it would measure itself.
    """

    REQUEST = b"GET /ping HTTP/1.1\r\nHost: bench\r\n\r\n"

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self) -> tuple[int, bool]:
        """One ``GET /ping``: its status and whether it carried ``RateLimit`` headers."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(self.REQUEST)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        await self.reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, "ratelimit" in headers

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


@dataclass
class Chaos:
    """When the server was killed and restarted (seconds into the load, as each began)."""

    killed: float
    restarted: float


def _signal(server: RedisServer, signum: int) -> None:
    assert server.pid is not None
    os.kill(server.pid, signum)


# --fault: how the server fails, and how it comes back
FAULTS: dict[str, tuple[Callable[[RedisServer], object], Callable[[RedisServer], object]]] = {
    "kill": (RedisServer.kill, RedisServer.start),  # a new, empty server on the same port
    "hang": (partial(_signal, signum=signal.SIGSTOP), partial(_signal, signum=signal.SIGCONT)),
}


async def _load(
    port: int,
    concurrency: int,
    duration: float,
    kill_at: float,
    restart_at: float,
    server: RedisServer,
    fault: str,
) -> tuple[list[Sample], Chaos]:
    samples: list[Sample] = []
    chaos = Chaos(kill_at, restart_at)
    began = time.perf_counter()

    async def worker() -> None:
        connection = _Connection(HOST, port)
        try:
            while (now := time.perf_counter()) - began < duration:
                try:
                    status, counted = await connection.get()
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    status, counted = 0, False
                    await connection.close()
                samples.append(Sample(now - began, time.perf_counter() - now, status, counted))
        finally:
            await connection.close()

    async def kill_and_restart() -> None:
        await asyncio.sleep(kill_at)
        fail, recover = FAULTS[fault]
        chaos.killed = time.perf_counter() - began
        await asyncio.to_thread(fail, server)
        await asyncio.sleep(max(0.0, restart_at - (time.perf_counter() - began)))
        chaos.restarted = time.perf_counter() - began
        await asyncio.to_thread(recover, server)

    await asyncio.gather(kill_and_restart(), *(worker() for _ in range(concurrency)))
    return samples, chaos


@contextlib.contextmanager
def _uvicorn(storage: str, mode: str, options: dict[str, object]) -> Iterator[int]:
    port = find_free_port()
    env = {**os.environ, ENV_STORAGE: storage, ENV_MODE: mode, ENV_OPTIONS: json.dumps(options)}
    command = [
        sys.executable, "-m", "uvicorn", "--factory", "benchmarks.load_failover:create_app",
        "--host", HOST, "--port", str(port), "--log-level", "error", "--no-access-log",
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)
    url = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            with contextlib.suppress(httpx2.TransportError):
                if httpx2.get(url + "/health", timeout=1).status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start (exit code {process.poll()})")
            time.sleep(0.05)
        yield port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def run_mode(mode: str, args: argparse.Namespace) -> Run:
    options: dict[str, object] = {}
    if args.socket_timeout is not None:
        options = {
            "socket_timeout": args.socket_timeout,
            "socket_connect_timeout": args.socket_timeout,
        }
    server = RedisServer(name=f"load-{mode}")
    server.start()
    try:
        with _uvicorn(server.url, mode, options) as port:
            samples, chaos = asyncio.run(
                _load(
                    port,
                    args.concurrency,
                    args.duration,
                    args.kill_at,
                    args.restart_at,
                    server,
                    args.fault,
                )
            )
    finally:
        server.stop()
    return Run(mode, samples, chaos, args.duration)


# -- reporting ---------------------------------------------------------------------------------

HEADER = ["phase", "requests", "req/s", "statuses", "p50 ms", "p95 ms", "p99 ms", "max ms"]


def table(run: Run) -> str:
    rows = [HEADER, ["---"] * 3 + ["---"] + ["---:"] * 4, *(p.row() for p in run.phases())]
    rows[1][1] = rows[1][2] = "---:"
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--modes", nargs="+", default=["allow", "deny"], choices=["allow", "deny", "fallback"]
    )
    parser.add_argument("--duration", type=float, default=40.0)
    parser.add_argument("--kill-at", type=float, default=10.0)
    parser.add_argument("--restart-at", type=float, default=25.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--fault",
        choices=sorted(FAULTS),
        default="kill",
        help="kill: SIGKILL, then a new server; hang: SIGSTOP, then SIGCONT",
    )
    parser.add_argument(
        "--socket-timeout",
        type=float,
        default=None,
        help="Redis socket timeout in seconds (default: the storage's own)",
    )
    args = parser.parse_args(argv)
    if not 0 < args.kill_at < args.restart_at < args.duration:
        parser.error("expected 0 < --kill-at < --restart-at < --duration")
    print(
        f"# load_failover: {args.concurrency} concurrent clients, {args.duration:g} s, Redis "
        f"{'killed' if args.fault == 'kill' else 'hung'} at {args.kill_at:g} s and "
        f"{'restarted' if args.fault == 'kill' else 'resumed'} at {args.restart_at:g} s\n"
        f"# {platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, uvicorn {version('uvicorn')} (1 worker), "
        f"redis-py {version('redis')}, socket_timeout="
        f"{args.socket_timeout if args.socket_timeout is not None else 'default'}\n"
    )
    for mode in args.modes:
        run = run_mode(mode, args)
        recovery = run.recovery()
        print(f'## failure_mode="{mode}"\n\n{table(run)}\n')
        print(
            "recovery: "
            + (
                f"{recovery:.2f} s after Redis came back"
                if recovery is not None
                else "none before the end of the run"
            )
            + "\n",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
