"""End to end on Redis: exact counts across worker processes, and one round trip per request.

1. ``uvicorn --workers 4`` serves ``tests/apps/redis_app.py`` on 127.0.0.1, counting in a real
   Redis (standalone, then Cluster); 200 concurrent requests against 50/minute must give
   exactly 50 x 200 and 150 x 429, whatever worker each request lands on.
2. In-process, through ``RateLimitMiddleware``: a route with three limits costs at most one
   round trip per request, and a caller who is blocked costs none.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from ratemw import Limiter, RateLimitMiddleware
from tests.redis_servers import HOST, find_free_port

ROOT = Path(__file__).resolve().parent.parent
REQUESTS = 200
LIMIT = 50
WORKERS = 4


@pytest.fixture(params=["redis", "cluster"])
def redis_any(request: pytest.FixtureRequest) -> Any:
    name = "redis_standalone_clean" if request.param == "redis" else "redis_cluster_clean"
    return request.getfixturevalue(name)


@pytest.fixture
def uvicorn_app(redis_any: Any) -> Iterator[str]:
    """``uvicorn --workers 4`` serving the Redis-limited app; yields its base URL."""
    port = find_free_port()
    env = {**os.environ, "RATEMW_TEST_STORAGE": redis_any.url}
    env["RATEMW_TEST_LIMIT"] = f"{LIMIT}/minute"
    command = [
        sys.executable, "-m", "uvicorn", "tests.apps.redis_app:app",
        "--host", HOST, "--port", str(port), "--workers", str(WORKERS),
        "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    base = f"http://{HOST}:{port}"
    try:
        _wait_ready(process, base)
        yield base
    finally:
        _stop(process)


def _wait_ready(process: subprocess.Popen[bytes], base: str, timeout: float = 30.0) -> None:
    """Wait until every worker answers (at least two: the test is about several processes)."""
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    limits = httpx2.Limits(max_keepalive_connections=0)
    with httpx2.Client(timeout=2.0, limits=limits) as client, ThreadPoolExecutor(8) as pool:

        def probe(_: int) -> str | None:
            try:
                response = client.get(f"{base}/health")
            except httpx2.TransportError:
                return None
            return response.text if response.status_code == 200 else None

        while time.monotonic() < deadline:
            if process.poll() is not None:
                output = process.stdout.read().decode(errors="replace") if process.stdout else ""
                pytest.fail(f"uvicorn exited with {process.returncode}:\n{output}")
            seen.update(pid for pid in pool.map(probe, range(8)) if pid)
            if len(seen) >= WORKERS:
                return
            time.sleep(0.05)
    if len(seen) < 2:
        pytest.fail(f"uvicorn on {base}: {len(seen)} worker(s) answered within {timeout} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)  # the master and its workers: our own group
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
    if process.stdout is not None:
        process.stdout.close()


def test_exact_admissions_across_four_worker_processes(uvicorn_app: str) -> None:
    # No keep-alive: every request opens its own connection, so requests spread over workers.
    limits = httpx2.Limits(max_connections=32, max_keepalive_connections=0)
    with httpx2.Client(timeout=20.0, limits=limits) as client:

        def one(_: int) -> tuple[int, str | None, str | None]:
            response = client.get(f"{uvicorn_app}/limited")
            headers = response.headers
            return response.status_code, headers.get("X-Worker"), headers.get("Retry-After")

        with ThreadPoolExecutor(max_workers=32) as pool:
            results = list(pool.map(one, range(REQUESTS)))
    statuses = Counter(status for status, _, _ in results)
    assert statuses == {200: LIMIT, 429: REQUESTS - LIMIT}
    # Which worker admitted or refused: one process may serve all 50 admissions on a busy
    # machine, but the decisions must have been taken in several, on one shared count.
    workers = {worker for _, worker, _ in results}
    assert None not in workers
    assert len(workers) >= 2, "every request was served by one worker"
    retry_after = [int(value) for status, _, value in results if status == 429 and value]
    assert len(retry_after) == REQUESTS - LIMIT
    assert all(1 <= value <= 60 for value in retry_after)


# -- in-process, through the middleware ----------------------------------------------------------


def _app(limiter: Limiter) -> Starlette:
    @limiter.limit("1000/minute;10000/hour;100000/day")
    async def roomy(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    @limiter.limit("2/minute;5/hour;10/day")
    async def tight(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/roomy", roomy), Route("/tight", tight)])
    app.add_middleware(RateLimitMiddleware, limiter=limiter)
    return app


def test_three_limits_cost_one_round_trip_and_blocked_callers_none(redis_any: Any) -> None:
    limiter = Limiter(
        storage=redis_any.url, storage_options={"socket_timeout": 5, "socket_connect_timeout": 5}
    )
    app = _app(limiter)

    async def main() -> dict[str, Any]:
        found: dict[str, Any] = {}
        transport = httpx2.ASGITransport(app=app)
        try:
            async with httpx2.AsyncClient(transport=transport, base_url="http://test") as client:
                first = await client.get("/roomy")  # connect and load the script first
                found["policy"] = first.headers.get("RateLimit-Policy")
                before = redis_any.reads_processed()
                roomy = [await client.get("/roomy") for _ in range(30)]
                found["roomy_reads"] = redis_any.reads_processed() - before
                found["roomy"] = Counter(r.status_code for r in roomy)
                found["remaining"] = roomy[-1].headers.get("RateLimit")
                before = redis_any.reads_processed()
                tight = [await client.get("/tight") for _ in range(3)]
                found["tight_reads"] = redis_any.reads_processed() - before
                found["tight"] = [r.status_code for r in tight]
                before = redis_any.reads_processed()
                blocked = [await client.get("/tight") for _ in range(20)]
                found["blocked_reads"] = redis_any.reads_processed() - before
                found["blocked"] = Counter(r.status_code for r in blocked)
                found["retry_after"] = {r.headers.get("Retry-After") for r in blocked}
        finally:
            await limiter.backends.async_.aclose()
        return found

    found = asyncio.run(main())
    assert found["policy"] is not None and found["policy"].count(";q=") == 3
    assert found["roomy"] == {200: 30}
    assert found["roomy_reads"] <= 30
    assert ";r=969;" in found["remaining"]  # 1 + 30 requests counted on the per-minute limit
    assert found["tight"] == [200, 200, 429]
    assert found["tight_reads"] <= 3
    assert found["blocked"] == {429: 20}
    assert found["blocked_reads"] == 0
    assert all(value is not None and int(value) >= 1 for value in found["retry_after"])
