"""Helpers the ASGI middleware's tests share."""

from __future__ import annotations

from typing import Any

from starlette.testclient import TestClient


def statuses(client: TestClient, path: str = "/", n: int = 1, **kwargs: Any) -> list[int]:
    """The statuses of ``n`` GET requests to ``path``."""
    return [client.get(path, **kwargs).status_code for _ in range(n)]
