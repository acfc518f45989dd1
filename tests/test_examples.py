"""The examples, served by a real uvicorn on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def serve() -> Iterator[object]:
    processes: list[subprocess.Popen[bytes]] = []

    def start(app: str) -> str:
        port = free_port()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                app,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
        )
        processes.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx2.get(url + "/health", timeout=1)
                return url
            except httpx2.TransportError:
                assert proc.poll() is None, f"uvicorn exited with {proc.returncode}"
                time.sleep(0.1)
        raise AssertionError(f"{app} did not start")

    yield start
    for proc in processes:
        proc.terminate()
        proc.wait(timeout=10)


def test_starlette_example(serve) -> None:  # type: ignore[no-untyped-def]
    url = serve("examples.starlette_app:app")
    with httpx2.Client(base_url=url) as client:
        codes = [client.get("/search").status_code for _ in range(6)]
        assert codes == [200] * 5 + [429]
        assert [client.get(f"/items/{i}").status_code for i in range(3)] == [200] * 3
        assert client.get("/items/1").headers["ratelimit"] == '"per-minute";r=16;t=60'
        with client.stream("GET", "/stream") as response:
            chunks = list(response.iter_text())
        assert "".join(chunks) == "".join(f"data: tick {n}\n\n" for n in range(3))
        assert all(client.get("/health").status_code == 200 for _ in range(30))


def test_fastapi_example(serve) -> None:  # type: ignore[no-untyped-def]
    url = serve("examples.fastapi_app:app")
    with httpx2.Client(base_url=url) as client:
        assert [client.get("/users/7").status_code for _ in range(4)] == [200] * 3 + [429]
        free = [
            client.get("/reports", headers={"X-API-Key": "free-1"}).status_code for _ in range(11)
        ]
        assert free == [200] * 10 + [429]
        assert client.get("/reports", headers={"X-API-Key": "pro-1"}).status_code == 200
        response = client.get("/search")
        assert response.status_code == 200
        assert response.headers["ratelimit-policy"] == (
            '"per-minute";q=5;w=60, "per-hour";q=100;w=3600, "app-per-minute";q=1000;w=60'
        )


def test_demo_runs_and_exits_zero() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "examples.demo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "HTTP/1.1 429 Too Many Requests" in result.stdout
    assert '"retry_after": 60' in result.stdout


def test_failed_logins_example(serve) -> None:  # type: ignore[no-untyped-def]
    url = serve("examples.failed_logins:app")

    def login(client: httpx2.Client, username: str, password: str) -> httpx2.Response:
        return client.post("/login", json={"username": username, "password": password})

    with httpx2.Client(base_url=url) as client:
        # Five wrong passwords for one username lock it out, right password or not.
        assert [login(client, "ada", "nope").status_code for _ in range(5)] == [401] * 5
        locked = login(client, "ada", "lovelace")
        assert locked.status_code == 429
        assert 899 <= int(locked.headers["retry-after"]) <= 900
        assert locked.headers["content-type"] == "application/problem+json"
        assert locked.json()["policies"][0]["name"] == "login-failures-per-15-minutes"
        # The username is locked, not the address: another user from it logs in.
        assert login(client, "grace", "hopper").status_code == 200
        # Right passwords are never counted against the lockout: after 10 of them, it still
        # takes 5 failures to lock.
        assert all(login(client, "grace", "hopper").status_code == 200 for _ in range(10))
        assert [login(client, "grace", "x").status_code for _ in range(6)] == [401] * 5 + [429]
        # Odd bodies are a failed login, never a 500.
        for body in (b"", b"[]", b'{"username": 5}', b"\xff"):
            assert client.post("/login", content=body).status_code in (401, 429)

    # A burst of 60 guesses at once for one username: at most 20 passwords are checked.
    async def burst() -> list[int]:
        async with httpx2.AsyncClient(base_url=url) as aclient:
            replies = await asyncio.gather(*(
                aclient.post("/login", json={"username": "linus", "password": f"guess{n}"})
                for n in range(60)
            ))  # fmt: skip
        return [reply.status_code for reply in replies]

    statuses = asyncio.run(burst())
    assert statuses.count(401) <= 20
    assert statuses.count(401) + statuses.count(429) == 60
