"""The client against a live ratemw service: uvicorn on a real socket of 127.0.0.1.

Thirty requests to a route limited "5 per 2 seconds" need five full windows after the first:
10 s at the least. A client with the transport takes about that and never shows a 429; the
server never even refuses one of its requests (it waits instead of being refused). Without
pacing and retries the same run is refused at its sixth request.

The three clients (httpx sync, httpx async, requests) run at once, as three callers of one
service, so the three cases cost the suite one 10 s run, not three.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests

from ratemw.client import AsyncRateLimitTransport, RateLimitAdapter, RateLimited, RateLimitTransport
from tests.redis_servers import find_free_port

ROOT = Path(__file__).resolve().parents[2]
REQUESTS = 30
QUOTA, WINDOW = 5, 2.0  # live_app.LIMIT
IDEAL = (REQUESTS / QUOTA - 1) * WINDOW  # the first request opens a window; five more follow
SLACK = 1.5
START_TIMEOUT = 30.0


@dataclass
class Run:
    """What one client saw: the statuses it got, how long it took, how it was refused."""

    statuses: list[int]
    elapsed: float
    refused: RateLimited | None = None


def run_httpx(url: str, caller: str, **options: Any) -> Run:
    transport = RateLimitTransport(**options)
    statuses: list[int] = []
    start = time.monotonic()
    with httpx.Client(transport=transport, headers={"X-Caller": caller}) as client:
        try:
            for _ in range(REQUESTS):
                statuses.append(client.get(url + "/limited").status_code)
        except RateLimited as refused:
            return Run(statuses, time.monotonic() - start, refused)
    return Run(statuses, time.monotonic() - start)


def run_httpx_async(url: str, caller: str, **options: Any) -> Run:
    async def run() -> Run:
        transport = AsyncRateLimitTransport(**options)
        statuses: list[int] = []
        start = time.monotonic()
        async with httpx.AsyncClient(transport=transport, headers={"X-Caller": caller}) as client:
            try:
                for _ in range(REQUESTS):
                    statuses.append((await client.get(url + "/limited")).status_code)
            except RateLimited as refused:
                return Run(statuses, time.monotonic() - start, refused)
        return Run(statuses, time.monotonic() - start)

    return asyncio.run(run())


def run_requests(url: str, caller: str, **options: Any) -> Run:
    statuses: list[int] = []
    start = time.monotonic()
    with requests.Session() as session:
        session.mount("http://", RateLimitAdapter(**options))
        session.headers["X-Caller"] = caller
        try:
            for _ in range(REQUESTS):
                statuses.append(session.get(url + "/limited", timeout=10).status_code)
        except RateLimited as refused:
            return Run(statuses, time.monotonic() - start, refused)
    return Run(statuses, time.monotonic() - start)


CLIENTS: dict[str, Callable[..., Run]] = {
    "httpx": run_httpx,
    "httpx-async": run_httpx_async,
    "requests": run_requests,
}
EACH_CLIENT = [
    pytest.param("httpx", id="httpx RateLimitTransport"),
    pytest.param("httpx-async", id="httpx AsyncRateLimitTransport"),
    pytest.param("requests", id="requests RateLimitAdapter"),
]


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def service() -> Iterator[str]:
    """``tests.client.live_app`` under uvicorn; yields its base URL."""
    port = find_free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "tests.client.live_app:app", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning"],
        cwd=ROOT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert process.poll() is None, f"uvicorn exited with {process.returncode}"
            try:
                urllib.request.urlopen(url + "/health", timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "uvicorn did not start"
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def paced_runs(service: str) -> Iterator[dict[str, Future[Run]]]:
    """The three clients' paced runs, started together; each test waits for its own."""
    with ThreadPoolExecutor(max_workers=len(CLIENTS)) as pool:
        yield {name: pool.submit(run, service, f"paced-{name}") for name, run in CLIENTS.items()}


@pytest.mark.parametrize("client", EACH_CLIENT)
def test_thirty_requests_are_paced_to_the_quota(
    client: str, service: str, paced_runs: dict[str, Future[Run]]
) -> None:
    run = paced_runs[client].result(timeout=IDEAL + 30)
    assert run.refused is None
    assert run.statuses == [200] * REQUESTS
    # Not faster than the quota allows (less 20 ms: the server counts whole milliseconds on
    # another clock), and at most SLACK slower.
    assert IDEAL - 0.02 <= run.elapsed <= IDEAL + SLACK, run.elapsed
    # Paced, not retried: the server refused none of this caller's requests.
    assert _get_json(service + "/refusals").get(f"paced-{client}", 0) == 0


@pytest.mark.parametrize("client", EACH_CLIENT)
def test_without_pacing_or_retries_the_same_run_is_refused(client: str, service: str) -> None:
    run = CLIENTS[client](service, f"unpaced-{client}", pace=False, max_retries=0)
    assert run.statuses == [200] * QUOTA
    refused = run.refused
    assert refused is not None
    assert refused.status_code == 429
    assert refused.retry_after is not None and 1 <= refused.retry_after <= WINDOW
    assert [p.name for p in refused.violated] == ["per-2-seconds"]
    assert refused.problem is not None and refused.problem["violated-policies"] == ["per-2-seconds"]
    assert refused.reason == "retries are off (max_retries=0)"
    assert str(refused).startswith(
        f"GET {service}/limited was refused with 429 Too Many Requests: Rate limit exceeded: "
        "5 requests per 2 seconds on GET /limited."
    )
    assert _get_json(service + "/refusals")[f"unpaced-{client}"] == 1
