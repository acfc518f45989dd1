"""ratemw.client: the callers' half. Pace requests to a rate-limited service, and retry its 429s.

A service behind ratemw (or any service sending ``RateLimit``, ``X-RateLimit-*`` or
``Retry-After`` headers) tells its callers how much quota is left and when to come back. The
transports here listen: before a request to an origin whose quota is used up they wait until
it has room, and a 429 or 503 that says when to come back is retried after that long (plus a
little jitter), within ``max_retries`` and ``max_wait``. A 429 they give up on raises
``RateLimited``, which says what the server said.

- ``RateLimitTransport`` / ``AsyncRateLimitTransport``: for ``httpx.Client`` /
  ``httpx.AsyncClient`` (``pip install "ratemw[httpx]"``; ``httpx2`` works too);
- ``RateLimitAdapter``: for a ``requests.Session`` (``pip install "ratemw[requests]"``);
- ``parse_rate_limit``: a response's headers (and body) to ``Policy`` values, on its own.

httpx and requests are imported only when their transport is first used.

Example::

    import httpx
    from ratemw.client import RateLimitTransport

    client = httpx.Client(transport=RateLimitTransport())
    client.get("https://api.example.com/search")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ratemw.client._exceptions import RateLimited
from ratemw.client._policies import Policy, parse_rate_limit

if TYPE_CHECKING:
    from ratemw.client._httpx import AsyncRateLimitTransport, RateLimitTransport
    from ratemw.client._requests import RateLimitAdapter

__all__ = [
    "AsyncRateLimitTransport",
    "Policy",
    "RateLimitAdapter",
    "RateLimitTransport",
    "RateLimited",
    "parse_rate_limit",
]

# Names whose module imports an optional HTTP library: loaded on first use.
_LAZY = {
    "AsyncRateLimitTransport": "ratemw.client._httpx",
    "RateLimitTransport": "ratemw.client._httpx",
    "RateLimitAdapter": "ratemw.client._requests",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
