"""Storage faults seen through the middlewares: real ``redis-server`` processes killed,
restarted, put to sleep, paused, cut off behind a TCP proxy, failed over by a Sentinel.

What a caller may see is fixed by ``failure_mode`` and nothing else: never a 500. What an
unhealthy storage may cost a request is one socket timeout while the circuit is closed, and
nothing while it is open. Limiting resumes by itself once the storage answers again, and an
incident is logged twice (when it starts, when it ends), however many requests it touches.

Requests are driven concurrently in-process (``httpx2.ASGITransport`` for ASGI, threads
calling the WSGI app), each timed. Timings are asserted only where they are the promise (the
latency bound), with margins meant for a loaded 2-core machine.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread
import httpx2
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocket

from ratemw import ConfigurationError, Limiter, RateLimitMiddleware, Rule, StorageError
from ratemw.engine.breaker import CircuitBreaker, CircuitOpen
from ratemw.storage.redis import DEFAULT_OPTIONS, SCRIPT_SHA
from ratemw.wsgi import WSGIRateLimitMiddleware
from tests._tcp_proxy import TCPProxy
from tests.conftest import call, websocket_handshake
from tests.redis_servers import (
    RedisCluster,
    RedisSentinel,
    RedisServer,
    find_free_port,
    require_redis_binaries,
)

pytestmark = pytest.mark.anyio

NEVER_REACHED = "1000000/minute"
UNAVAILABLE = "https://iana.org/assignments/http-problem-types#temporary-reduced-capacity"
# The promise: a request waits on an unhealthy storage for one socket timeout at most. The
# margin covers the work around it; on a busy machine, twice the worst scheduling delay
# measured during the test is added (a timeout fires late, then its request resumes late).
# On a quiet machine the bound stays well below a second timeout, so a request that waited for
# two (a retry, a wait for a connection and then a timeout) fails the test.
TIMEOUT = 0.5
MARGIN = 0.2
# Where the timeout is not what a test is about (a killed server refuses connections at once):
# generous, so that a busy machine cannot fail a healthy request.
PATIENT = {"socket_timeout": 2, "socket_connect_timeout": 2}
CONCURRENCY = 24  # more than the storage's 16 connections: some requests queue for one
# Threads contend for the GIL (and, on a busy machine, for cores): fewer of them, and fewer
# connections, so that requests still queue for one.
WSGI_THREADS, WSGI_CONNECTIONS = 8, 4


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A fresh server of this test's own (``DEBUG`` allowed), to kill, restart or pause."""
    require_redis_binaries("redis-server")
    with RedisServer(name="faults", config_lines=["enable-debug-command yes"]) as running:
        yield running


@pytest.fixture
def proxy(server: RedisServer) -> Iterator[TCPProxy]:
    with TCPProxy(server.address) as running:
        yield running


@pytest.fixture
def dead_url() -> str:
    """A Redis URL nothing listens on: every connection is refused at once."""
    return f"redis://127.0.0.1:{find_free_port()}"


# -- apps and load ---------------------------------------------------------------------------------


def endpoint() -> Callable[[Request], Awaitable[PlainTextResponse]]:
    """A new endpoint function (limits declared on one are all its own)."""

    async def answer(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return answer


def asgi_app(limiter: Limiter, limit: str, **middleware: Any) -> Starlette:
    """``/`` limited by ``limit``; every caller shares one key (the test client's address)."""
    app = Starlette(routes=[Route("/", limiter.limit(limit)(endpoint()))])
    app.add_middleware(RateLimitMiddleware, limiter=limiter, **middleware)
    return app


def asgi_client(app: Any) -> httpx2.AsyncClient:
    # An exception escaping the app becomes a 500 response, so it is counted, not raised.
    transport = httpx2.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx2.AsyncClient(transport=transport, base_url="http://test")


def hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def wsgi_app(limiter: Limiter, limit: str) -> WSGIRateLimitMiddleware:
    """A plain WSGI app limited by a rule on every path (one bucket, one shared key)."""
    return WSGIRateLimitMiddleware(hello, limiter=limiter, rules=[Rule("/*", limit)])


class Lag:
    """The worst scheduling delay seen while requests ran: how late a short sleep woke up."""

    TICK = 0.005

    def __init__(self) -> None:
        self.worst = 0.0

    async def meter_async(self, running: Callable[[], bool]) -> None:
        while running():
            started = time.monotonic()
            await anyio.sleep(self.TICK)
            self.worst = max(self.worst, time.monotonic() - started - self.TICK)

    def meter_sync(self, running: threading.Event) -> None:
        while running.is_set():
            started = time.monotonic()
            time.sleep(self.TICK)
            self.worst = max(self.worst, time.monotonic() - started - self.TICK)


@dataclass(frozen=True)
class Sample:
    """One request: when it started and ended (monotonic seconds) and what it got."""

    started: float
    ended: float
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def latency(self) -> float:
        return self.ended - self.started

    @property
    def counted(self) -> bool:
        """Counted by the storage: only then does a response carry ``RateLimit``."""
        return "ratelimit" in self.headers


async def asgi_get(client: httpx2.AsyncClient, path: str = "/") -> Sample:
    started = time.monotonic()
    response = await client.get(path)
    headers = {k.lower(): v for k, v in response.headers.items()}
    return Sample(started, time.monotonic(), response.status_code, headers, response.content)


def wsgi_get(app: Any, path: str = "/") -> Sample:
    """One request, served the way a WSGI server serves it, timed."""
    started = time.monotonic()
    result = call(app, path)
    headers = {name.lower(): value for name, value in result.headers}
    return Sample(started, time.monotonic(), result.status, headers, result.body)


async def asgi_load(
    client: httpx2.AsyncClient,
    concurrency: int,
    scenario: Callable[[], Awaitable[None]],
    lag: Lag | None = None,
    samples: list[Sample] | None = None,
) -> list[Sample]:
    """Requests from ``concurrency`` tasks, back to back, while ``scenario`` runs (and
    ``lag`` measures how late the event loop runs what is due). Each request is appended to
    ``samples`` as it ends."""
    samples = [] if samples is None else samples
    running = True

    async def worker() -> None:
        while running:
            samples.append(await asgi_get(client))
            # A request refused by the open circuit never suspends: without this, one worker
            # would keep the event loop (and the scenario's timers) to itself.
            await anyio.sleep(0)

    async with anyio.create_task_group() as group:
        for _ in range(concurrency):
            group.start_soon(worker)
        if lag is not None:
            group.start_soon(lag.meter_async, lambda: running)
        try:
            await scenario()
        finally:
            running = False
    return samples


def wsgi_load(
    app: Any,
    concurrency: int,
    scenario: Callable[[], None],
    lag: Lag | None = None,
    samples: list[Sample] | None = None,
) -> list[Sample]:
    """Requests from ``concurrency`` threads, back to back, while ``scenario`` runs (and
    ``lag`` measures how late a thread wakes up). Each request is appended to ``samples`` as
    it ends."""
    samples = [] if samples is None else samples
    running = threading.Event()
    running.set()

    def worker() -> None:
        while running.is_set():
            samples.append(wsgi_get(app))
            # A server thread waits on its client between requests; threads that never wait
            # would measure how long each waits for the GIL behind the others.
            time.sleep(0.001)

    with ThreadPoolExecutor(concurrency + 1) as pool:
        futures = [pool.submit(worker) for _ in range(concurrency)]
        if lag is not None:
            futures.append(pool.submit(lag.meter_sync, running))
        try:
            scenario()
        finally:
            running.clear()
        for future in futures:
            future.result()
    return samples


# Phases end when enough has happened, not after a fixed time: a busy machine serves fewer
# requests in a second than a quiet one.
PATIENCE = 10.0


async def until(done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + PATIENCE
    while not done() and time.monotonic() < deadline:
        await anyio.sleep(0.01)


def wait_until(done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + PATIENCE
    while not done() and time.monotonic() < deadline:
        time.sleep(0.01)


def statuses(samples: Iterable[Sample]) -> set[int]:
    return {s.status for s in samples}


def started_between(samples: Iterable[Sample], start: float, end: float) -> list[Sample]:
    return [s for s in samples if start <= s.started < end]


def assert_unavailable(sample: Sample, path: str = "/") -> None:
    """A 503 as ``failure_mode="deny"`` promises it: problem+json, Retry-After."""
    assert sample.status == 503
    assert sample.headers["content-type"] == "application/problem+json"
    assert sample.headers["retry-after"] == "1"
    body = json.loads(sample.body)
    assert body["type"] == UNAVAILABLE and body["status"] == 503 and body["instance"] == path


async def close_async(limiter: Limiter) -> None:
    await limiter.backends.async_.aclose()


def close_sync(limiter: Limiter) -> None:
    limiter.backends.sync.close()


def summary(name: str, samples: list[Sample]) -> str:
    """Latency percentiles, for ``pytest -s`` (the numbers in docs/failure-modes.md)."""
    ordered = sorted(s.latency * 1000 for s in samples)
    if not ordered:
        return f"{name}: no requests"
    pick = [ordered[min(len(ordered) - 1, int(len(ordered) * q))] for q in (0.5, 0.99)]
    return (
        f"{name}: {len(ordered)} requests, p50 {pick[0]:.1f} ms, p99 {pick[1]:.1f} ms, "
        f"max {ordered[-1]:.1f} ms"
    )


# -- Redis killed under load -----------------------------------------------------------------------

# failure_mode, the limit, what requests that started once Redis was dead may get
KILL_CASES = [
    pytest.param("allow", NEVER_REACHED, {200}, id="allow"),
    pytest.param("deny", NEVER_REACHED, {503}, id="deny"),
    pytest.param("fallback", "20/minute", {200, 429}, id="fallback"),
]


def check_killed(
    mode: str, expected: set[int], samples: list[Sample], kill_started: float, killed: float
) -> None:
    """``kill_started``: just before SIGKILL; ``killed``: once the process is gone."""
    assert statuses(samples) <= {200, 429, 503}, "only the policy's statuses, never a 500"
    assert any(s.counted for s in samples if s.ended < kill_started)  # Redis counted, before
    outage = [s for s in samples if s.started >= killed]
    assert len(outage) >= 200
    assert statuses(outage) <= expected
    if mode == "allow":
        assert not any(s.counted for s in outage)  # let through, not counted
    elif mode == "deny":
        for sample in outage:
            assert_unavailable(sample)
    else:
        # Redis had refused the caller before the kill (its quota of 20 was long used up), so
        # every admission since is the fallback's, counted in this process's memory: exactly
        # its quota, then 429s.
        assert any(s.status == 429 and s.counted for s in samples if s.ended < kill_started)
        admitted = [s for s in samples if s.ended >= kill_started and s.status == 200]
        assert len(admitted) == 20
        assert 429 in statuses(outage) and all(s.counted for s in outage)


@pytest.mark.parametrize(("mode", "limit", "expected"), KILL_CASES)
async def test_redis_killed_under_load_asgi(
    server: RedisServer, mode: str, limit: str, expected: set[int]
) -> None:
    # The local memory of refused callers is off, so that every request asks the storage.
    limiter = Limiter(
        storage=server.url, failure_mode=mode,
        storage_options={**PATIENT, "blocked_cache_size": 0},
    )  # fmt: skip
    marks: dict[str, float] = {}
    samples: list[Sample] = []

    async def scenario() -> None:
        await until(lambda: len(samples) >= 100)
        marks["kill"] = time.monotonic()
        await anyio.to_thread.run_sync(server.kill)
        marks["killed"] = time.monotonic()
        await until(lambda: sum(s.started >= marks["killed"] for s in samples) >= 200)

    try:
        async with asgi_client(asgi_app(limiter, limit)) as client:
            await asgi_load(client, CONCURRENCY, scenario, samples=samples)
    finally:
        await close_async(limiter)
    check_killed(mode, expected, samples, marks["kill"], marks["killed"])


@pytest.mark.parametrize(("mode", "limit", "expected"), KILL_CASES)
def test_redis_killed_under_load_wsgi(
    server: RedisServer, mode: str, limit: str, expected: set[int]
) -> None:
    limiter = Limiter(
        storage=server.url, failure_mode=mode,
        storage_options={**PATIENT, "blocked_cache_size": 0},
    )  # fmt: skip
    marks: dict[str, float] = {}
    samples: list[Sample] = []

    def scenario() -> None:
        wait_until(lambda: len(samples) >= 100)
        marks["kill"] = time.monotonic()
        server.kill()
        marks["killed"] = time.monotonic()
        wait_until(lambda: sum(s.started >= marks["killed"] for s in samples) >= 200)

    try:
        wsgi_load(wsgi_app(limiter, limit), 8, scenario, samples=samples)
    finally:
        close_sync(limiter)
    check_killed(mode, expected, samples, marks["kill"], marks["killed"])


# -- Redis restarted: limiting resumes -------------------------------------------------------------


def storage_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records
        if r.name == "ratemw" and r.getMessage().startswith("storage ")
    ]  # fmt: skip


def check_recovery(
    server: RedisServer,
    caplog: pytest.LogCaptureFixture,
    errors: list[BaseException],
    outage: list[Sample],
    recovery: list[Sample],
    after: list[Sample],
) -> None:
    # During the outage: let through, not counted; the hook saw every one of them.
    assert statuses(outage) == {200} and not any(s.counted for s in outage)
    failed = [s for s in outage + recovery if not s.counted]
    assert len(errors) == len(failed)
    assert all(isinstance(e, StorageError) for e in errors)
    # Back: counts start again on the empty server, and the limit (5) is enforced.
    assert recovery[-1].counted and ";r=4;" in recovery[-1].headers["ratelimit"]
    assert [s.status for s in after] == [200, 200, 200, 200, 429, 429]
    # The script was loaded again (EVALSHA met NOSCRIPT and fell back to EVAL, silently).
    with server.client() as admin:
        assert admin.script_exists(SCRIPT_SHA) == [True]
    records = storage_records(caplog)
    assert [r.levelno for r in records] == [logging.ERROR, logging.WARNING]
    assert "failed" in records[0].getMessage()
    assert "answering again" in records[1].getMessage()


async def test_limiting_resumes_after_a_restart_asgi(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    errors: list[BaseException] = []
    limiter = Limiter(
        storage=server.url, storage_options=PATIENT, on_storage_error=lambda r, e: errors.append(e)
    )
    caplog.set_level(logging.INFO, logger="ratemw")
    try:
        async with asgi_client(asgi_app(limiter, "5/minute")) as client:
            assert (await asgi_get(client)).counted
            server.kill()
            deadline = time.monotonic() + 0.8
            outage = []
            while time.monotonic() < deadline:
                outage.append(await asgi_get(client))
            await anyio.to_thread.run_sync(server.start)
            restarted = time.monotonic()
            recovery = [await asgi_get(client)]
            while not recovery[-1].counted and time.monotonic() < restarted + 5:
                await anyio.sleep(0.01)
                recovery.append(await asgi_get(client))
            recovered_after = recovery[-1].started - restarted
            after = [await asgi_get(client) for _ in range(6)]
    finally:
        await close_async(limiter)
    print(
        f"\nASGI: {len(outage)} requests in the outage; counted again {recovered_after:.2f} s "
        "after the restart"
    )
    check_recovery(server, caplog, errors, outage, recovery, after)
    # The breaker probes again after its backoff: at most max_backoff (2 s) once Redis is back.
    assert recovered_after < 3.0


def test_limiting_resumes_after_a_restart_wsgi(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    errors: list[BaseException] = []
    limiter = Limiter(
        storage=server.url, storage_options=PATIENT, on_storage_error=lambda r, e: errors.append(e)
    )
    app = wsgi_app(limiter, "5/minute")
    caplog.set_level(logging.INFO, logger="ratemw")
    try:
        assert wsgi_get(app).counted
        server.kill()
        deadline = time.monotonic() + 0.8
        outage = []
        while time.monotonic() < deadline:
            outage.append(wsgi_get(app))
        server.start()
        restarted = time.monotonic()
        recovery = [wsgi_get(app)]
        while not recovery[-1].counted and time.monotonic() < restarted + 5:
            time.sleep(0.01)
            recovery.append(wsgi_get(app))
        recovered_after = recovery[-1].started - restarted
        after = [wsgi_get(app) for _ in range(6)]
    finally:
        close_sync(limiter)
    print(
        f"\nWSGI: {len(outage)} requests in the outage; counted again {recovered_after:.2f} s "
        "after the restart"
    )
    check_recovery(server, caplog, errors, outage, recovery, after)
    assert recovered_after < 3.0


async def test_limiting_resumes_soon_after_an_outage_under_load(
    proxy: TCPProxy, caplog: pytest.LogCaptureFixture
) -> None:
    timeouts = {"socket_timeout": 0.3, "socket_connect_timeout": 0.3}
    limiter = Limiter(storage=proxy.url, storage_options=timeouts)
    breaker = limiter.breaker
    caplog.set_level(logging.INFO, logger="ratemw")
    marks: dict[str, float] = {}
    samples: list[Sample] = []
    lag = Lag()

    def counted_again() -> bool:
        return any(s.counted and s.started > marks["forward"] for s in samples)

    async def scenario() -> None:
        await until(lambda: len(samples) >= 50)
        proxy.blackhole()  # every request in flight times out at once, then the circuit opens
        await until(lambda: breaker.is_open)
        await anyio.sleep(0.05)  # the last of them fail too
        marks["backoff"] = breaker.backoff
        proxy.forward()
        marks["forward"] = time.monotonic()
        await until(counted_again)

    try:
        async with asgi_client(asgi_app(limiter, NEVER_REACHED)) as client:
            await asgi_load(client, CONCURRENCY, scenario, lag, samples)
    finally:
        await close_async(limiter)
    # 24 requests failed at once, and the circuit opened once, for its first backoff: the
    # requests that were already waiting did not lengthen it.
    assert marks["backoff"] == 0.5
    assert counted_again(), f"still not counted {PATIENCE} s after the storage came back"
    recovered = min(s.started for s in samples if s.counted and s.started > marks["forward"])
    assert recovered - marks["forward"] < 0.5 + 0.3 + 2 * lag.worst + MARGIN
    assert [r.levelno for r in storage_records(caplog)] == [logging.ERROR, logging.WARNING]


class Clock:
    """Monotonic seconds that move only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_limiting_resumes_within_two_seconds_however_long_the_outage() -> None:
    clock = Clock()
    breaker = CircuitBreaker(clock=clock)  # the defaults every Limiter gets
    asked: list[float] = []

    def request(healthy: bool) -> None:
        try:
            breaker.before()
        except CircuitOpen:
            return
        asked.append(clock.now)
        if healthy:
            breaker.success()
        else:
            breaker.failure(ConnectionError("down"))

    while clock.now < 1046:  # 46 s down, a request every 10 ms
        request(healthy=False)
        clock.now += 0.01
    asked.clear()
    while breaker.failures:  # back: the next probe closes the circuit
        request(healthy=True)
        clock.now += 0.01
    assert asked and asked[0] - 1046 <= 2.0 + 0.01


def test_one_request_probes_at_a_time() -> None:
    clock = Clock()
    breaker = CircuitBreaker(clock=clock)
    for _ in range(breaker.threshold):
        breaker.before()
        breaker.failure(ConnectionError("down"))
    clock.now += breaker.backoff
    breaker.before()  # the probe, still waiting on the storage
    with pytest.raises(CircuitOpen):
        breaker.before()  # the others do not wait with it
    breaker.success()
    breaker.before()


# -- Redis slow or unreachable: the latency it adds ------------------------------------------------


class Fault:
    """Something wrong with the storage for a while: ``begin()``, then ``end()``."""

    def __init__(self, server: RedisServer, proxy: TCPProxy, kind: str) -> None:
        self.server = server
        self.proxy = proxy
        self.kind = kind
        self.sleeper: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Where the limiter should connect (the proxy only for the blackhole)."""
        return self.proxy.url if self.kind == "blackhole" else self.server.url

    def begin(self, seconds: float) -> None:
        if self.kind == "blackhole":
            self.proxy.blackhole()
        elif self.kind == "client-pause":
            self.server.pause(seconds)  # every client is held until the pause ends
        else:  # the server's one thread busy: nothing is read, nothing answered
            self.sleeper = threading.Thread(target=self._sleep, args=(seconds,))
            self.sleeper.start()
            time.sleep(0.02)  # until the server is asleep

    def _sleep(self, seconds: float) -> None:
        with self.server.client(socket_timeout=seconds + 10) as client:
            client.execute_command("DEBUG", "SLEEP", seconds)

    def end(self) -> None:
        if self.kind == "blackhole":
            self.proxy.forward()
        elif self.sleeper is not None:
            self.sleeper.join()


FAULTS = ["blackhole", "debug-sleep", "client-pause"]
FAULT_SECONDS = 1.5  # the first wave's timeout, a backoff, one probe's timeout


def check_latency(
    name: str,
    samples: list[Sample],
    errors: list[tuple[float, BaseException]],
    marks: dict[str, float],
    concurrency: int,
    lag: Lag,
) -> None:
    healthy = [s for s in samples if s.ended < marks["began"]]
    touched = [s for s in samples if s.ended >= marks["began"] and s.started < marks["ended"]]
    print(
        f"\n{name}: "
        + summary("healthy", healthy)
        + "; "
        + summary("unhealthy", touched)
        + f"; worst scheduling delay {lag.worst * 1000:.0f} ms"
    )
    assert statuses(touched) == {200}, "failure_mode='allow': let through"
    # At most one socket timeout per request, never two in a row (counted from the fault's
    # start for the requests already under way: what came before is the machine's load).
    worst = max(s.ended - max(s.started, marks["began"]) for s in touched)
    # One deadline per storage call covers a new connection's handshake and the command
    # (redis-py's connections could wait twice under CLIENT PAUSE, once for each).
    bound = TIMEOUT + MARGIN + 2 * lag.worst
    assert worst < bound, f"a request waited {worst:.3f} s (bound {bound:.3f} s)"
    # Who waited is counted, not timed: a request refused by the open circuit was not let near
    # the storage (CircuitOpen is raised before it is asked). Only the first wave (each
    # worker's request, in flight or sent before the circuit opened) and the breaker's probes
    # (one per backoff of 0.5 s at most) asked the unhealthy storage.
    during = [e for t, e in errors if t >= marks["began"]]
    asked = [e for e in during if not isinstance(e, CircuitOpen)]
    spared = [e for e in during if isinstance(e, CircuitOpen)]
    assert len(asked) <= concurrency + FAULT_SECONDS / 0.5 + 1, len(asked)
    assert len(spared) > 3 * len(asked), (len(spared), len(asked))


async def run_asgi_fault(
    limiter: Limiter, fault: Fault, lag: Lag
) -> tuple[list[Sample], dict[str, float]]:
    marks: dict[str, float] = {}

    async def scenario() -> None:
        await anyio.sleep(0.3)
        marks["began"] = time.monotonic()
        await anyio.to_thread.run_sync(fault.begin, FAULT_SECONDS)
        await anyio.sleep(FAULT_SECONDS)
        marks["ended"] = time.monotonic()
        await anyio.to_thread.run_sync(fault.end)

    try:
        async with asgi_client(asgi_app(limiter, NEVER_REACHED)) as client:
            assert (await asgi_get(client)).counted  # Redis counts, before the fault
            samples = await asgi_load(client, CONCURRENCY, scenario, lag)
    finally:
        await close_async(limiter)
    return samples, marks


@pytest.mark.parametrize("kind", FAULTS)
async def test_an_unhealthy_server_costs_at_most_one_timeout_asgi(
    server: RedisServer, proxy: TCPProxy, kind: str
) -> None:
    fault = Fault(server, proxy, kind)
    errors: list[tuple[float, BaseException]] = []
    limiter = Limiter(
        storage=fault.url,
        storage_options={"socket_timeout": TIMEOUT, "socket_connect_timeout": TIMEOUT},
        on_storage_error=lambda request, error: errors.append((time.monotonic(), error)),
    )
    lag = Lag()
    samples, marks = await run_asgi_fault(limiter, fault, lag)
    check_latency(f"ASGI {kind}", samples, errors, marks, CONCURRENCY, lag)


@pytest.mark.parametrize("kind", FAULTS)
def test_an_unhealthy_server_costs_at_most_one_timeout_wsgi(
    server: RedisServer, proxy: TCPProxy, kind: str
) -> None:
    fault = Fault(server, proxy, kind)
    errors: list[tuple[float, BaseException]] = []
    limiter = Limiter(
        storage=fault.url,
        storage_options={
            "socket_timeout": TIMEOUT, "socket_connect_timeout": TIMEOUT,
            "max_connections": WSGI_CONNECTIONS,
        },
        on_storage_error=lambda request, error: errors.append((time.monotonic(), error)),
    )  # fmt: skip
    marks: dict[str, float] = {}

    def scenario() -> None:
        time.sleep(0.3)
        marks["began"] = time.monotonic()
        fault.begin(FAULT_SECONDS)
        time.sleep(FAULT_SECONDS)
        marks["ended"] = time.monotonic()
        fault.end()

    app = wsgi_app(limiter, NEVER_REACHED)
    lag = Lag()
    try:
        assert wsgi_get(app).counted  # Redis counts, before the fault
        samples = wsgi_load(app, WSGI_THREADS, scenario, lag)
    finally:
        close_sync(limiter)
    check_latency(f"WSGI {kind}", samples, errors, marks, WSGI_THREADS, lag)


def test_more_threads_than_connections_never_starve_on_a_healthy_server(
    server: RedisServer,
) -> None:
    # Threads that wait for one of the storage's connections are served in turn: none is
    # passed over until pool_timeout while others take the connections again and again.
    # Socket timeouts are generous: twelve threads sharing the GIL on a loaded machine can
    # leave a reply unread for longer than the 0.1 s default, which is not what this is about.
    errors: list[BaseException] = []
    limiter = Limiter(
        storage=server.url,
        storage_options={**PATIENT, "max_connections": 4, "pool_timeout": 0.5},
        on_storage_error=lambda r, e: errors.append(e),
    )
    app = wsgi_app(limiter, NEVER_REACHED)
    running = threading.Event()
    running.set()

    def hammer() -> int:  # back to back, without a pause: the worst case for fairness
        done = 0
        while running.is_set():
            assert wsgi_get(app).counted
            done += 1
        return done

    try:
        with ThreadPoolExecutor(12) as pool:
            futures = [pool.submit(hammer) for _ in range(12)]
            time.sleep(1.5)
            running.clear()
            served = [future.result() for future in futures]
    finally:
        close_sync(limiter)
    assert errors == [] and min(served) > 0


def test_the_default_timeouts_are_tens_of_milliseconds() -> None:
    # The latency bound above, in the defaults: what an unhealthy Redis may add to a request.
    assert DEFAULT_OPTIONS["socket_timeout"] == DEFAULT_OPTIONS["socket_connect_timeout"] == 0.1


async def test_a_blackholed_server_costs_one_default_timeout(proxy: TCPProxy) -> None:
    # The default socket timeout (0.1 s); a backoff longer than the test: no probe.
    errors: list[BaseException] = []
    limiter = Limiter(
        storage=proxy.url,
        breaker={"backoff": 60, "max_backoff": 60},
        on_storage_error=lambda request, error: errors.append(error),
    )
    lag = Lag()
    samples: list[Sample] = []
    try:
        async with asgi_client(asgi_app(limiter, NEVER_REACHED)) as client:
            assert (await asgi_get(client)).counted
            proxy.blackhole()
            async with anyio.create_task_group() as group:
                group.start_soon(lag.meter_async, lambda: len(samples) < 200)
                while len(samples) < 200:
                    samples.append(await asgi_get(client))
                    await anyio.sleep(0)
    finally:
        await close_async(limiter)
    print("\n" + summary("ASGI, default timeout, blackholed", samples))
    assert statuses(samples) == {200}
    # The breaker's threshold (3) asked and waited, each for one default timeout; the other
    # 197 were refused by the open circuit without asking.
    assert [isinstance(e, CircuitOpen) for e in errors] == [False] * 3 + [True] * 197
    assert all(0.1 <= s.latency < 0.1 + MARGIN + 2 * lag.worst for s in samples[:3])


# -- Sentinel failover -----------------------------------------------------------------------------


async def until_refused(get: Callable[..., Awaitable[Sample]], *args: Any) -> list[Sample]:
    """Requests until two 429s (at most 20)."""
    samples: list[Sample] = []
    while sum(s.status == 429 for s in samples) < 2 and len(samples) < 20:
        samples.append(await get(*args))
    return samples


async def test_limiting_resumes_on_the_new_master_after_a_failover(
    redis_sentinel_clean: RedisSentinel,
) -> None:
    sentinel = redis_sentinel_clean
    # deny: no request is let through uncounted, so the admissions can be counted exactly.
    limiter = Limiter(storage=sentinel.url, failure_mode="deny", storage_options=PATIENT)
    wsgi = wsgi_app(limiter, "10/minute")
    try:
        async with asgi_client(asgi_app(limiter, "10/minute", rules=[])) as client:
            # ASGI and WSGI count in two buckets (a route, a rule) on one Redis.
            before = [await asgi_get(client) for _ in range(3)]
            before += [wsgi_get(wsgi) for _ in range(3)]
            assert statuses(before) == {200}
            promoted = await anyio.to_thread.run_sync(sentinel.failover)
            asgi_after = await until_refused(lambda: asgi_get(client))
            wsgi_after = await until_refused(anyio.to_thread.run_sync, wsgi_get, wsgi)
    finally:
        await close_async(limiter)
        close_sync(limiter)
    for after in (asgi_after, wsgi_after):
        assert statuses(after) <= {200, 429, 503}
        # A request may meet the demoted master and be refused (deny); then the counts go on
        # on the new one, where they were replicated: 3 taken before, 7 left, then 429.
        assert sum(s.status == 503 for s in after) <= 2
        assert [s.status for s in after if s.status != 503] == [200] * 7 + [429] * 2
        assert all(s.counted for s in after if s.status != 503)
    with promoted.client() as direct:
        assert len(direct.keys("ratemw:*")) == 2  # both buckets live on the new master


# -- a Redis Cluster node dies ---------------------------------------------------------------------


@pytest.fixture
def cluster() -> Iterator[RedisCluster]:
    """A 3-master cluster of this test's own, to kill a node of (1 s node timeout)."""
    require_redis_binaries("redis-server", "redis-cli")
    with RedisCluster(node_timeout_ms=1000) as running:
        yield running


def holder(cluster: RedisCluster) -> RedisServer:
    """The node holding the (one) caller's keys."""
    (node,) = [n for n in cluster.nodes if n.client().keys("ratemw:*")]
    return node


async def test_a_dead_cluster_node_gets_the_failure_mode_then_limiting_resumes(
    cluster: RedisCluster,
) -> None:
    # The node holding the caller's keys is killed. Its slots fail at once (connection
    # refused); a second later the other nodes mark it failed and the whole cluster answers
    # CLUSTERDOWN. Every request meanwhile gets failure_mode="deny" (503, never a 500), within
    # one socket timeout; once the node is back and the cluster is whole, counting resumes,
    # ASGI and WSGI alike (the node kept nothing: counts start again).
    errors: list[BaseException] = []
    limiter = Limiter(
        storage=cluster.url, failure_mode="deny", storage_options=PATIENT,
        on_storage_error=lambda request, error: errors.append(error),
    )  # fmt: skip
    wsgi = wsgi_app(limiter, "5/minute")
    try:
        async with asgi_client(asgi_app(limiter, "5/minute", rules=[])) as client:
            assert (await asgi_get(client)).counted and wsgi_get(wsgi).counted
            dead = holder(cluster)
            dead.kill()
            outage: list[Sample] = []
            deadline = time.monotonic() + 2.0  # past the node timeout: CLUSTERDOWN too
            while time.monotonic() < deadline:
                outage.append(await asgi_get(client))
                outage.append(await anyio.to_thread.run_sync(wsgi_get, wsgi))
            await anyio.to_thread.run_sync(dead.start)
            await anyio.to_thread.run_sync(cluster.wait_ready)
            back = time.monotonic()
            recovery: list[Sample] = []
            while time.monotonic() < back + 10:
                recovery.append(await asgi_get(client))
                recovery.append(await anyio.to_thread.run_sync(wsgi_get, wsgi))
                if recovery[-1].counted and recovery[-2].counted:
                    break
                await anyio.sleep(0.05)
            counted_after = time.monotonic() - back
            asgi_after = await until_refused(lambda: asgi_get(client))
            wsgi_after = await until_refused(anyio.to_thread.run_sync, wsgi_get, wsgi)
    finally:
        await close_async(limiter)
        close_sync(limiter)
    print(
        f"\ncluster: {len(outage)} requests while a node was dead, worst "
        f"{max(s.latency for s in outage) * 1000:.0f} ms; counted again "
        f"{counted_after:.2f} s after the cluster was whole"
    )
    assert len(outage) >= 20
    for sample in outage:
        assert_unavailable(sample)
        assert sample.latency < PATIENT["socket_timeout"] + 1.0
    assert errors and all(isinstance(e, StorageError) for e in errors)
    assert recovery[-1].counted and recovery[-2].counted, recovery[-4:]
    assert counted_after < 5.0  # the breaker's longest backoff is 2 s
    for after in (asgi_after, wsgi_after):
        # Requests may have been counted during the recovery: the quota left is what remains.
        assert statuses(after) <= {200, 429} and [s.status for s in after][-2:] == [429, 429]
        assert all(s.counted for s in after)


# -- WebSocket handshakes when the storage fails ---------------------------------------------------


@pytest.mark.parametrize("mode", ["allow", "deny", "fallback"])
def test_websocket_handshakes_get_the_failure_mode(dead_url: str, mode: str) -> None:
    # allow: the handshake goes through uncounted; deny: refused as unavailable, by the
    # denial-response extension (503 problem+json) where the server has it, else by closing
    # with 1008; fallback: counted in this process's memory (1 per minute: then a 429).
    limiter = Limiter(storage=dead_url, failure_mode=mode)

    @limiter.limit("1/minute")
    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("hi")
        await websocket.close()

    app = Starlette(routes=[WebSocketRoute("/ws", echo)])
    app.add_middleware(RateLimitMiddleware, limiter=limiter)
    with TestClient(app) as client:
        if mode == "deny":
            for _ in range(2):
                with (
                    pytest.raises(WebSocketDenialResponse) as refused,
                    client.websocket_connect("/ws"),
                ):
                    pass  # pragma: no cover - the handshake is refused
                assert refused.value.status_code == 503
                assert refused.value.headers["retry-after"] == "1"
                assert json.loads(refused.value.content)["type"] == UNAVAILABLE
        else:
            with client.websocket_connect("/ws") as ws:
                assert ws.receive_text() == "hi"
            if mode == "allow":
                with client.websocket_connect("/ws") as ws:
                    assert ws.receive_text() == "hi"
            else:
                with (
                    pytest.raises(WebSocketDenialResponse) as refused,
                    client.websocket_connect("/ws"),
                ):
                    pass  # pragma: no cover - the handshake is refused
                assert refused.value.status_code == 429
    if mode == "deny":  # a server without the extension: the handshake is closed with 1008
        sent = anyio.run(websocket_handshake, app)
        assert sent == [
            {"type": "websocket.close", "code": 1008, "reason": "rate limits unavailable"}
        ]


# -- logging once per incident, the hook per request -----------------------------------------------


@pytest.mark.parametrize("adapter", ["asgi", "wsgi"])
async def test_an_outage_is_logged_once_and_every_request_reaches_the_hook(
    dead_url: str, caplog: pytest.LogCaptureFixture, adapter: str
) -> None:
    errors: list[tuple[Any, BaseException]] = []
    limiter = Limiter(storage=dead_url, on_storage_error=lambda r, e: errors.append((r, e)))
    caplog.set_level(logging.DEBUG, logger="ratemw")
    try:
        if adapter == "asgi":
            async with asgi_client(asgi_app(limiter, "5/minute")) as client:
                samples = [await asgi_get(client) for _ in range(100)]
        else:
            wsgi = wsgi_app(limiter, "5/minute")
            samples = [wsgi_get(wsgi) for _ in range(100)]
    finally:
        await close_async(limiter)
        close_sync(limiter)
    assert statuses(samples) == {200}
    records = [r for r in caplog.records if r.name == "ratemw"]
    assert [(r.levelno, r.getMessage().split(" failed")[0]) for r in records] == [
        (logging.ERROR, f"storage {dead_url}")
    ]
    assert len(errors) == 100
    assert all(isinstance(e, StorageError) and r is not None for r, e in errors)


# -- failure_mode per limit ------------------------------------------------------------------------


def two_routes(limiter: Limiter, strict: Callable[[Any], Any]) -> Starlette:
    app = Starlette(routes=[
        Route("/strict", strict(endpoint())),
        Route("/lenient", limiter.limit("5/minute")(endpoint())),
    ])  # fmt: skip
    app.add_middleware(RateLimitMiddleware, limiter=limiter)
    return app


async def test_a_limit_can_refuse_while_the_limiter_lets_through(dead_url: str) -> None:
    limiter = Limiter(storage=dead_url, failure_mode="allow")
    strict = limiter.limit("5/minute", failure_mode="deny")
    try:
        async with asgi_client(two_routes(limiter, strict)) as client:
            assert_unavailable(await asgi_get(client, "/strict"), "/strict")
            assert (await asgi_get(client, "/lenient")).status == 200
    finally:
        await close_async(limiter)


async def test_a_shared_limit_can_fall_back_while_the_limiter_refuses(dead_url: str) -> None:
    limiter = Limiter(storage=dead_url, failure_mode="deny")
    strict = limiter.shared_limit("2/minute", scope="s", failure_mode="fallback")
    try:
        async with asgi_client(two_routes(limiter, strict)) as client:
            assert [(await asgi_get(client, "/strict")).status for _ in range(3)] == [200, 200, 429]
            assert_unavailable(await asgi_get(client, "/lenient"), "/lenient")
    finally:
        await close_async(limiter)


def test_a_rule_chooses_its_failure_mode_under_wsgi(dead_url: str) -> None:
    limiter = Limiter(storage=dead_url, failure_mode="allow")
    app = WSGIRateLimitMiddleware(hello, limiter=limiter, rules=[
        Rule("/admin/*", "5/minute", failure_mode="deny"),
        Rule("/*", "5/minute"),
    ])  # fmt: skip
    try:
        assert_unavailable(wsgi_get(app, "/admin/users"), "/admin/users")
        assert wsgi_get(app, "/public").status == 200
    finally:
        close_sync(limiter)


async def test_the_strictest_failure_mode_of_a_request_wins(dead_url: str) -> None:
    limiter = Limiter(storage=dead_url, failure_mode="allow", application_limits="100/minute")
    app = Starlette(routes=[
        Route("/deny", limiter.limit("5/minute", failure_mode="deny")(endpoint())),
        Route("/fallback", limiter.limit("1/minute", failure_mode="fallback")(endpoint())),
    ])  # fmt: skip
    app.add_middleware(
        RateLimitMiddleware, limiter=limiter,
        rules=[Rule("/fallback", "5/minute", failure_mode="deny", methods=["POST"])],
    )  # fmt: skip
    try:
        async with asgi_client(app) as client:
            # deny beats the application limit's allow
            assert (await asgi_get(client, "/deny")).status == 503
            # fallback beats allow (the POST-only deny rule does not apply to GET)
            assert [(await asgi_get(client, "/fallback")).status for _ in range(2)] == [200, 429]
            assert (await client.post("/fallback")).status_code == 503
    finally:
        await close_async(limiter)


async def test_a_shadow_limit_never_refuses_when_storage_fails(dead_url: str) -> None:
    limiter = Limiter(storage=dead_url, application_limits="100/minute")
    shadow = limiter.limit("5/minute", failure_mode="deny", shadow=True)
    try:
        async with asgi_client(two_routes(limiter, shadow)) as client:
            assert (await asgi_get(client, "/strict")).status == 200
    finally:
        await close_async(limiter)


@pytest.mark.parametrize(
    "declare",
    [
        pytest.param(lambda lim: lim.limit("1/minute", failure_mode="dney"), id="limit"),
        pytest.param(
            lambda lim: lim.shared_limit("1/minute", scope="s", failure_mode="dney"),
            id="shared_limit",
        ),
        pytest.param(lambda lim: Rule("/a", "1/minute", failure_mode="dney"), id="rule"),
    ],
)
def test_an_unknown_failure_mode_is_refused_at_start_up(declare: Callable[[Any], Any]) -> None:
    with pytest.raises(ConfigurationError, match=r"failure_mode 'dney'.*'allow', 'deny'"):
        declare(Limiter())
