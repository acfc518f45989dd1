"""Shared helpers for in-process benchmarks: raw ASGI calls, interleaved timing, statistics.

Nothing here goes through a network, a test client or httpx: an app is called as
``await app(scope, receive, send)`` with a scope built once and shallow-copied per request
(Starlette writes into the scope, so each request needs its own dict).
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CLIENT = ("192.0.2.10", 50123)
SERVER = ("127.0.0.1", 8000)


def http_scope(
    path: str = "/ping",
    method: str = "GET",
    client: tuple[str, int] = CLIENT,
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> dict[str, Any]:
    """A complete HTTP scope, as uvicorn would build it, for one fixed request."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("ascii"),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"user-agent", b"ratemw-bench"),
            (b"accept", b"*/*"),
            *headers,
        ],
        "client": client,
        "server": SERVER,
        # No "state": Starlette creates it per request (scope.setdefault). A shared one would
        # leak request state between requests (slowapi's "_rate_limiting_complete" flag would
        # stick and it would stop counting after the first request).
    }


_REQUEST: Message = {"type": "http.request", "body": b"", "more_body": False}


async def receive() -> Message:
    """The request body: empty, in one message (fresh dict: apps may mutate it)."""
    return dict(_REQUEST)


class StatusCounter:
    """A ``send`` that swallows messages and counts responses by status.

    Cheap enough to sit in the timed loop (two calls per request, identical for every
    variant), so a benchmark can prove afterwards that no request was refused or failed.
    """

    __slots__ = ("statuses",)

    def __init__(self) -> None:
        self.statuses: dict[int, int] = {}

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            status = message["status"]
            self.statuses[status] = self.statuses.get(status, 0) + 1

    def total(self) -> int:
        return sum(self.statuses.values())

    def others_than(self, status: int) -> dict[int, int]:
        return {s: n for s, n in self.statuses.items() if s != status}


@dataclass
class Response:
    """One response captured whole (for sanity checks, not for timing)."""

    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        raw = name.lower().encode("latin-1")
        for key, value in self.headers:
            if key.lower() == raw:
                return value.decode("latin-1")
        return None


async def call(app: ASGIApp, scope: dict[str, Any]) -> Response:
    """Send one request through ``app`` and capture the response."""
    response = Response()

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            response.status = message["status"]
            response.headers = list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            response.body += message.get("body", b"")

    await app(dict(scope), receive, send)
    return response


async def time_batch(app: ASGIApp, scope: dict[str, Any], iterations: int, send: Send) -> float:
    """Seconds per request over ``iterations`` sequential requests through ``app``."""
    copy = scope.copy
    gc.collect()  # start every batch from the same heap state: no leftovers from the last one
    start = time.perf_counter()
    for _ in range(iterations):
        await app(copy(), receive, send)
    return (time.perf_counter() - start) / iterations


@dataclass
class Variant:
    name: str
    app: ASGIApp
    send: StatusCounter = field(default_factory=StatusCounter)
    per_request: list[float] = field(default_factory=list)  # seconds, one per round


async def interleaved(
    variants: Sequence[Variant],
    scope: dict[str, Any],
    *,
    iterations: int,
    rounds: int,
    progress: Callable[[int], None] | None = None,
    rotate: bool = False,
) -> None:
    """Time every variant once per round, in order (A B C D A B C D ...).

    ``rotate``: start each round one variant later (A B C D, B C D A, ...), so that no
    variant always runs right after the same other one.
    """
    for round_no in range(rounds):
        for variant in rotated(variants, round_no) if rotate else variants:
            variant.per_request.append(
                await time_batch(variant.app, scope, iterations, variant.send)
            )
        if progress is not None:
            progress(round_no + 1)


def rotated(items: Sequence[Any], round_no: int) -> list[Any]:
    """``items`` starting at ``round_no`` (modulo their number): A B C, B C A, C A B, ..."""
    start = round_no % len(items)
    return [*items[start:], *items[:start]]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def quartiles(values: Sequence[float]) -> tuple[float, float]:
    """The 25th and 75th percentiles (the ends of the interquartile range)."""
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def paired_overheads(variant: Variant, baseline: Variant) -> list[float]:
    """Per round: the variant's time per request minus the baseline's in the same round."""
    return [v - b for v, b in zip(variant.per_request, baseline.per_request, strict=True)]


def paired_ratios(variant: Variant, reference: Variant, baseline: Variant) -> list[float]:
    """Per round: the variant's overhead over the baseline divided by the reference's.

    Both overheads come from the same round, so a slow stretch of the machine that slows
    every variant alike cancels out of each ratio.
    """
    return [
        (v - b) / (r - b)
        for v, r, b in zip(
            variant.per_request, reference.per_request, baseline.per_request, strict=True
        )
    ]
