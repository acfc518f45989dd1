"""One scripted server, five clients: the transports' tests run one table through each.

A ``Script`` answers requests with canned ``Reply``s (the last one repeats) and records what
was sent. A driver sends one request (or several) through a client built on the transport
under test, with a fake clock and sleep, and returns an ``Outcome``. Drivers: httpx and httpx2
(sync and async, ``RateLimitTransport`` / ``AsyncRateLimitTransport`` over ``MockTransport``)
and requests (``RateLimitAdapter`` over a scripted adapter).
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import httpx2
import pytest
import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict

from ratemw.client import AsyncRateLimitTransport, RateLimitAdapter, RateLimited, RateLimitTransport

URL = "https://api.example/search?key=secret"


@dataclass(frozen=True)
class Reply:
    """A canned response. A header value may be a function, called when the reply is sent
    (for values relative to the time: an HTTP-date, an epoch)."""

    status: int = 200
    headers: Sequence[tuple[str, str | Callable[[], str]]] = ()
    body: bytes = b""

    def sent(self) -> Reply:
        headers = [(name, value if isinstance(value, str) else value())
                   for name, value in self.headers]  # fmt: skip
        return Reply(self.status, headers, self.body)


@dataclass(frozen=True)
class Sent:
    method: str
    url: str
    body: bytes


class Script:
    """Canned replies, in order; the last one answers every further request."""

    def __init__(self, replies: Sequence[Reply]) -> None:
        self.replies = list(replies)
        self.sent: list[Sent] = []

    def answer(self, method: str, url: str, body: bytes) -> Reply:
        self.sent.append(Sent(method, url, body))
        return self.replies[min(len(self.sent), len(self.replies)) - 1].sent()


class FakeTime:
    """A monotonic clock that moves only when slept on, and the sleeps it was asked for."""

    def __init__(self) -> None:
        self.now = 1_000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)


@dataclass
class Outcome:
    """What the client saw: the last status (``None`` if refused) and the error."""

    statuses: list[int] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    error: RateLimited | None = None
    sent: list[Sent] = field(default_factory=list)
    sleeps: list[float] = field(default_factory=list)

    @property
    def status(self) -> int | None:
        return None if self.error is not None else self.statuses[-1]


@dataclass(frozen=True)
class Call:
    """A request to send: method, URL, and a body (``bytes``, ``"stream"`` or ``None``)."""

    method: str = "GET"
    url: str = URL
    body: bytes | str | None = None


def _stream() -> Iterator[bytes]:
    yield b"streamed "
    yield b"body"


async def _astream() -> AsyncIterator[bytes]:
    yield b"streamed "
    yield b"body"


# -- httpx and httpx2 -------------------------------------------------------------------------


def _mock(library: Any, script: Script) -> Any:
    def handler(request: Any) -> Any:
        reply = script.answer(request.method, str(request.url), request.read())
        return library.Response(reply.status, headers=_raw(reply), content=reply.body)

    async def ahandler(request: Any) -> Any:
        reply = script.answer(request.method, str(request.url), await request.aread())
        return library.Response(reply.status, headers=_raw(reply), content=reply.body)

    return library.MockTransport(handler), library.MockTransport(ahandler)


def _raw(reply: Reply) -> list[tuple[bytes, bytes]]:
    """The reply's headers as bytes on the wire (UTF-8, which a server may send)."""
    return [(name.encode(), str(value).encode()) for name, value in reply.headers]


def _httpx_sync(library: Any) -> Callable[..., Outcome]:
    def drive(script: Script, calls: Sequence[Call], time: FakeTime, **options: Any) -> Outcome:
        mock, _ = _mock(library, script)
        transport = RateLimitTransport(mock, clock=time.clock, sleep=time.sleep, **options)
        outcome = Outcome(sent=script.sent, sleeps=time.sleeps)
        with library.Client(transport=transport) as client:
            for call in calls:
                content = _stream() if call.body == "stream" else call.body
                try:
                    response = client.request(call.method, call.url, content=content)
                except RateLimited as error:
                    outcome.error = error
                    break
                outcome.statuses.append(response.status_code)
                outcome.bodies.append(response.content)
        return outcome

    return drive


def _httpx_async(library: Any) -> Callable[..., Outcome]:
    def drive(script: Script, calls: Sequence[Call], time: FakeTime, **options: Any) -> Outcome:
        async def run() -> Outcome:
            _, mock = _mock(library, script)
            transport = AsyncRateLimitTransport(
                mock, clock=time.clock, sleep=time.asleep, **options
            )
            outcome = Outcome(sent=script.sent, sleeps=time.sleeps)
            async with library.AsyncClient(transport=transport) as client:
                for call in calls:
                    content = _astream() if call.body == "stream" else call.body
                    try:
                        response = await client.request(call.method, call.url, content=content)
                    except RateLimited as error:
                        outcome.error = error
                        break
                    outcome.statuses.append(response.status_code)
                    outcome.bodies.append(response.content)
            return outcome

        return asyncio.run(run())

    return drive


# -- requests ---------------------------------------------------------------------------------


class ScriptedAdapter(BaseAdapter):
    """A requests adapter answering from a ``Script``, joining repeated headers as urllib3
    does."""

    def __init__(self, script: Script) -> None:
        super().__init__()
        self.script = script

    def send(self, request: Any, *args: Any, **kwargs: Any) -> requests.Response:
        body = request.body
        if body is not None and not isinstance(body, (bytes, str)):
            body = b"".join(body)
        if isinstance(body, str):
            body = body.encode()
        reply = self.script.answer(request.method, request.url, body or b"")
        joined: dict[str, str] = {}
        for name, value in reply.headers:
            key = next((k for k in joined if k.lower() == name.lower()), name)
            joined[key] = f"{joined[key]}, {value}" if key in joined else value
        response = requests.Response()
        response.status_code = reply.status
        response.headers = CaseInsensitiveDict(joined)
        response.raw = io.BytesIO(reply.body)
        response.url = request.url
        response.request = request
        return response

    def close(self) -> None:
        pass


def _requests(script: Script, calls: Sequence[Call], time: FakeTime, **options: Any) -> Outcome:
    adapter = RateLimitAdapter(
        ScriptedAdapter(script), clock=time.clock, sleep=time.sleep, **options
    )
    outcome = Outcome(sent=script.sent, sleeps=time.sleeps)
    with requests.Session() as session:
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        for call in calls:
            data = _stream() if call.body == "stream" else call.body
            try:
                response = session.request(call.method, call.url, data=data)
            except RateLimited as error:
                outcome.error = error
                break
            outcome.statuses.append(response.status_code)
            outcome.bodies.append(response.content)
    return outcome


DRIVERS = {
    "httpx": _httpx_sync(httpx),
    "httpx-async": _httpx_async(httpx),
    "httpx2": _httpx_sync(httpx2),
    "httpx2-async": _httpx_async(httpx2),
    "requests": _requests,
}
EACH_DRIVER = [pytest.param(name, id=name) for name in DRIVERS]


def drive(
    driver: str, replies: Sequence[Reply], calls: Sequence[Call] = (Call(),), **options: Any
) -> Outcome:
    """Send ``calls`` through ``driver``'s client against ``replies``; no real sleeping."""
    options.setdefault("rand", lambda: 0.0)
    return DRIVERS[driver](Script(replies), calls, FakeTime(), **options)
