"""httpx transports that pace requests and retry refusals: ``RateLimitTransport`` (sync) and
``AsyncRateLimitTransport``.

They wrap another transport (by default the HTTP transport of the library the request comes
from), so they work with ``httpx`` and with its fork ``httpx2``, whose transport interfaces are
the same. Importing this module needs one of the two installed (``pip install "ratemw[httpx]"``).
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from ratemw.client._fields import json_object
from ratemw.client._pacing import (
    BODY_LIMIT,
    Attempt,
    Gates,
    GiveUp,
    Options,
    Retry,
    display_url,
)

if TYPE_CHECKING:
    import httpx
    from httpx import AsyncBaseTransport as _AsyncBase
    from httpx import BaseTransport as _Base
else:
    try:
        import httpx as _library
    except ImportError:
        try:
            import httpx2 as _library
        except ImportError:
            raise ImportError(
                "ratemw's httpx transports need httpx: pip install 'ratemw[httpx]'"
            ) from None
    _Base, _AsyncBase = _library.BaseTransport, _library.AsyncBaseTransport

__all__ = ["AsyncRateLimitTransport", "RateLimitTransport"]

_LIBRARIES = ("httpx", "httpx2")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _library_of(request: httpx.Request) -> Any:
    """The module (``httpx`` or ``httpx2``) that made ``request``."""
    root = type(request).__module__.partition(".")[0]
    if root not in _LIBRARIES:  # a Request subclass from elsewhere: the library imported here
        root = _Base.__module__.partition(".")[0]
    return importlib.import_module(root)


def _attempt(request: httpx.Request, options: Options, gates: Gates) -> Attempt:
    url = request.url
    scheme, host, port = url.scheme, url.host, url.port
    return Attempt(
        options,
        gates,
        method=request.method.upper(),
        origin=(scheme, host, port or _DEFAULT_PORTS.get(scheme, 0)),
        url=display_url(scheme, host, port, url.path),
        replayable=_replayable(request),
    )


def _replayable(request: httpx.Request) -> bool:
    try:
        request.content  # noqa: B018 - raises for a body that is streamed, hence sent once
    except RuntimeError:  # httpx.RequestNotRead (a StreamError, a RuntimeError)
        return False
    return True


def _problem(response: httpx.Response, body: bytes) -> dict[str, Any] | None:
    content_type = response.headers.get("content-type", "")
    return json_object(body) if "json" in content_type.lower() else None


def _read_some(response: httpx.Response) -> bytes:
    """Up to ``BODY_LIMIT`` bytes of a refusal's body; the response is closed after."""
    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in response.iter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size >= BODY_LIMIT:
                break
    except Exception:  # a refusal's body is advice: failing to read it changes nothing
        chunks = []
    finally:
        response.close()
    return b"".join(chunks)[:BODY_LIMIT]


async def _aread_some(response: httpx.Response) -> bytes:
    """``_read_some`` for an async response."""
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in response.aiter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size >= BODY_LIMIT:
                break
    except Exception:  # as in _read_some
        chunks = []
    finally:
        await response.aclose()
    return b"".join(chunks)[:BODY_LIMIT]


def _default_async_sleep() -> Callable[[float], Awaitable[None]]:
    try:  # httpx runs on asyncio and trio through anyio; so does this
        import anyio
    except ImportError:  # pragma: no cover - httpx and httpx2 both depend on anyio
        import asyncio

        return asyncio.sleep
    return anyio.sleep


class RateLimitTransport(_Base):
    """An httpx transport that keeps its client within the server's rate limits.

    Before each request to an origin whose last response said a quota was used up
    (``RateLimit: "per-minute";r=0;t=17``, or draft-7, draft-6, ``X-RateLimit-*``), it waits
    until the quota has room. On a 429 or 503 that says when to come back (``Retry-After``,
    the problem+json ``retry_after``, or the headers' reset) it waits that long, plus up to
    ``jitter`` of the wait (at most 1 s), and sends the request again. A 429 it cannot or may
    not retry raises ``RateLimited``; a 503 it does not retry is returned as it came.

    Args:
        transport: the transport that sends the requests (default: ``httpx.HTTPTransport()``,
            or ``httpx2``'s for a request from ``httpx2``).
        max_retries: retries of one request, at most.
        max_wait: seconds one request may spend waiting, in all. A wait that would pass it
            is not made: the retry raises ``RateLimited`` at once, the pacing is skipped.
        retry_methods: the methods retried (default: the idempotent ``GET``, ``HEAD``,
            ``OPTIONS``, ``TRACE``, ``PUT``, ``DELETE``). Add ``"POST"`` only for requests
            that are safe to send twice.
        pace: wait before sending to an origin known to be out of quota.
        jitter: a retry waits the time told plus up to this fraction of it (at most 1 s).
        clock: a monotonic clock in seconds (for tests).
        sleep: how to wait, ``time.sleep`` by default (for tests).
        rand: a source of floats in [0, 1) for the jitter (for tests).

    Example::

        import httpx
        from ratemw.client import RateLimitTransport

        client = httpx.Client(transport=RateLimitTransport(max_wait=30))
        client.get("https://api.example.com/search")   # paced, and retried after a 429
    """

    def __init__(
        self,
        transport: httpx.BaseTransport | None = None,
        *,
        max_retries: int = 3,
        max_wait: float = 60.0,
        retry_methods: Iterable[str] | None = None,
        pace: bool = True,
        jitter: float = 0.1,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], None] | None = None,
        rand: Callable[[], float] | None = None,
    ) -> None:
        self._options = Options.build(
            max_retries=max_retries, max_wait=max_wait, retry_methods=retry_methods,
            pace=pace, jitter=jitter, clock=clock, rand=rand,
        )  # fmt: skip
        self._gates = Gates(self._options.clock)
        self._transport = transport
        self._sleep = sleep or time.sleep
        self._lock = threading.Lock()

    def _inner(self, request: httpx.Request) -> httpx.BaseTransport:
        with self._lock:
            if self._transport is None:
                self._transport = _library_of(request).HTTPTransport()
            return self._transport

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` through the inner transport, paced and retried."""
        attempt = _attempt(request, self._options, self._gates)
        inner = self._inner(request)
        while True:
            delay = attempt.pace()
            if delay > 0:
                self._sleep(delay)
            response = inner.handle_request(request)
            status = response.status_code
            problem = _problem(response, _read_some(response)) if status == 429 else None
            step = attempt.after(status, response.headers, problem)
            if isinstance(step, Retry):
                if status != 429:  # read a 429 already
                    _read_some(response)
                self._sleep(step.delay)
                continue
            if isinstance(step, GiveUp) and status == 429:
                raise attempt.refusal(step, status=status, response=response)
            return response

    def close(self) -> None:
        """Close the inner transport."""
        with self._lock:
            transport = self._transport
        if transport is not None:
            transport.close()


class AsyncRateLimitTransport(_AsyncBase):
    """The async twin of ``RateLimitTransport``, for ``httpx.AsyncClient``.

    Takes the same arguments, except that ``transport`` is an async transport (default:
    ``httpx.AsyncHTTPTransport()``) and ``sleep`` is a coroutine function (default:
    ``anyio.sleep``, so it runs under asyncio and trio). Waiting for an origin's quota holds
    no lock: other tasks go on meanwhile.

    Example::

        import httpx
        from ratemw.client import AsyncRateLimitTransport

        async with httpx.AsyncClient(transport=AsyncRateLimitTransport()) as client:
            await client.get("https://api.example.com/search")
    """

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        max_retries: int = 3,
        max_wait: float = 60.0,
        retry_methods: Iterable[str] | None = None,
        pace: bool = True,
        jitter: float = 0.1,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        rand: Callable[[], float] | None = None,
    ) -> None:
        self._options = Options.build(
            max_retries=max_retries, max_wait=max_wait, retry_methods=retry_methods,
            pace=pace, jitter=jitter, clock=clock, rand=rand,
        )  # fmt: skip
        self._gates = Gates(self._options.clock)
        self._transport = transport
        self._sleep = sleep or _default_async_sleep()
        self._lock = threading.Lock()

    def _inner(self, request: httpx.Request) -> httpx.AsyncBaseTransport:
        with self._lock:
            if self._transport is None:
                self._transport = _library_of(request).AsyncHTTPTransport()
            return self._transport

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` through the inner transport, paced and retried."""
        attempt = _attempt(request, self._options, self._gates)
        inner = self._inner(request)
        while True:
            delay = attempt.pace()
            if delay > 0:
                await self._sleep(delay)
            response = await inner.handle_async_request(request)
            status = response.status_code
            problem = _problem(response, await _aread_some(response)) if status == 429 else None
            step = attempt.after(status, response.headers, problem)
            if isinstance(step, Retry):
                if status != 429:  # read a 429 already
                    await _aread_some(response)
                await self._sleep(step.delay)
                continue
            if isinstance(step, GiveUp) and status == 429:
                raise attempt.refusal(step, status=status, response=response)
            return response

    async def aclose(self) -> None:
        """Close the inner transport."""
        with self._lock:
            transport = self._transport
        if transport is not None:
            await transport.aclose()
