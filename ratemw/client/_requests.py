"""A requests transport adapter that paces requests and retries refusals: ``RateLimitAdapter``.

Importing this module needs requests (``pip install "ratemw[requests]"``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

try:
    from requests import PreparedRequest, Response
    from requests.adapters import BaseAdapter, HTTPAdapter
except ImportError:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "ratemw's RateLimitAdapter needs requests: pip install 'ratemw[requests]'"
    ) from None

from ratemw.client._fields import json_object
from ratemw.client._pacing import BODY_LIMIT, Attempt, Gates, GiveUp, Options, Retry, display_url

__all__ = ["RateLimitAdapter"]

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _attempt(request: PreparedRequest, options: Options, gates: Gates) -> Attempt:
    parts = urlsplit(request.url or "")
    scheme, host = parts.scheme.lower(), (parts.hostname or "")
    try:
        port = parts.port
    except ValueError:  # requests refuses such a URL before it reaches an adapter
        port = None
    body = request.body
    return Attempt(
        options,
        gates,
        method=(request.method or "GET").upper(),
        origin=(scheme, host, port or _DEFAULT_PORTS.get(scheme, 0)),
        url=display_url(scheme, host, port, parts.path or "/"),
        # Bytes and text can be sent again; a file or a generator is read once.
        replayable=body is None or isinstance(body, (bytes, str)),
    )


def _read_some(response: Response) -> bytes:
    """Up to ``BODY_LIMIT`` bytes of a refusal's body; the response is closed after."""
    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in response.iter_content(BODY_LIMIT):
            chunks.append(chunk)
            size += len(chunk)
            if size >= BODY_LIMIT:
                break
    except Exception:  # a refusal's body is advice: failing to read it changes nothing
        chunks = []
    finally:
        response.close()
    return b"".join(chunks)[:BODY_LIMIT]


def _problem(response: Response, body: bytes) -> dict[str, Any] | None:
    content_type = response.headers.get("content-type", "")
    return json_object(body) if "json" in content_type.lower() else None


class RateLimitAdapter(BaseAdapter):
    """A requests adapter that keeps its session within the server's rate limits.

    It behaves as ``RateLimitTransport`` does for httpx: it waits before sending to an origin
    whose last response said a quota was used up, retries a 429 or 503 after the time told
    (plus up to ``jitter`` of it, at most 1 s), raises ``RateLimited`` for a 429 it cannot or
    may not retry, and returns a 503 it does not retry as it came.

    Args:
        adapter: the adapter that sends the requests (default: ``HTTPAdapter()``; pass your
            own for pool sizes or urllib3 retries of connection errors).
        max_retries: retries of one request, at most (429s and 503s only; connection errors
            are the inner adapter's business).
        max_wait: seconds one request may spend waiting, in all. A wait that would pass it
            is not made: the retry raises ``RateLimited`` at once, the pacing is skipped.
        retry_methods: the methods retried (default: the idempotent ``GET``, ``HEAD``,
            ``OPTIONS``, ``TRACE``, ``PUT``, ``DELETE``).
        pace: wait before sending to an origin known to be out of quota.
        jitter: a retry waits the time told plus up to this fraction of it (at most 1 s).
        clock: a monotonic clock in seconds (for tests).
        sleep: how to wait, ``time.sleep`` by default (for tests).
        rand: a source of floats in [0, 1) for the jitter (for tests).

    Example::

        import requests
        from ratemw.client import RateLimitAdapter

        session = requests.Session()
        session.mount("https://", RateLimitAdapter(max_wait=30))
        session.get("https://api.example.com/search")   # paced, and retried after a 429
    """

    def __init__(
        self,
        adapter: BaseAdapter | None = None,
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
        super().__init__()
        self._options = Options.build(
            max_retries=max_retries, max_wait=max_wait, retry_methods=retry_methods,
            pace=pace, jitter=jitter, clock=clock, rand=rand,
        )  # fmt: skip
        self._gates = Gates(self._options.clock)
        self._adapter = adapter if adapter is not None else HTTPAdapter()
        self._sleep = sleep or time.sleep

    def send(
        self,
        request: PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: Any = True,
        cert: Any = None,
        proxies: Any = None,
    ) -> Response:
        """Send ``request`` through the inner adapter, paced and retried."""
        attempt = _attempt(request, self._options, self._gates)
        while True:
            delay = attempt.pace()
            if delay > 0:
                self._sleep(delay)
            response = self._adapter.send(
                request, stream=stream, timeout=timeout, verify=verify, cert=cert,
                proxies=proxies,
            )  # fmt: skip
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
        """Close the inner adapter."""
        self._adapter.close()
