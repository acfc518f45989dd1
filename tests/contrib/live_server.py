"""Run an example app under a real gunicorn on 127.0.0.1, and talk to it over HTTP."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.redis_servers import find_free_port

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 20.0


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes


def get(port: int, path: str) -> Reply:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        headers = {name.lower(): value for name, value in response.getheaders()}
        return Reply(response.status, headers, response.read())
    finally:
        connection.close()


def _wait_until_listening(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {process.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(
        f"gunicorn is not listening on {port} after {START_TIMEOUT} s:\n" + log.read_text()
    )


@contextmanager
def gunicorn(app: str, *, env: dict[str, str] | None = None) -> Iterator[int]:
    """Serve ``app`` (``module:variable``) with one gunicorn worker; yields its port."""
    port = find_free_port()
    with tempfile.TemporaryDirectory(prefix="ratemw-gunicorn-") as tmp:
        log = Path(tmp) / "gunicorn.log"
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            app,
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "1",
            "--no-control-socket",
            "--graceful-timeout",
            "2",
        ]
        with log.open("wb") as output:
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                env={**os.environ, **(env or {})},
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        try:
            _wait_until_listening(port, process, log)
            yield port
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
