"""One call's defect is not an outage: it never opens the circuit breaker.

A storage call can fail because of what one request brought with it, not because the
storage is unwell: here a caller's key holds a value of the wrong type (``WRONGTYPE``: a
corrupted or colliding key), so every one of its calls is refused by Redis. That caller
gets the failure mode; the breaker counts nothing, and every other caller is counted as
usual, on a real Redis, under ASGI and WSGI.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ratemw import Limiter
from tests._served import ADAPTERS, served
from tests.redis_servers import RedisServer

VICTIM = "198.51.100.1"
BROKEN = "203.0.113.7"


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize(("mode", "broken_status"), [("allow", 200), ("deny", 503)])
def test_a_call_refused_for_its_own_data_never_opens_the_breaker(
    redis_standalone_clean: RedisServer, adapter: str, mode: str, broken_status: int
) -> None:
    limiter = Limiter(
        storage=redis_standalone_clean.url,
        default_limits="3/minute",
        failure_mode=mode,
        storage_options={"socket_timeout": 5},
    )
    app = served(adapter, limiter)
    admin = redis_standalone_clean.client()
    try:
        assert app.get(client=BROKEN).status == 200  # its key exists now
        [key] = admin.keys("ratemw:*")
        admin.delete(key)
        admin.set(key, "not a hash")  # every call of this caller is refused: WRONGTYPE
        # Far more refused calls than it takes to open the breaker on an outage (3).
        assert app.statuses(10, client=BROKEN) == [broken_status] * 10
        breaker = limiter.breaker
        assert (breaker.failures, breaker.open_until, breaker.incident) == (0, 0.0, False)
        # Everyone else is counted, and refused at the limit, as if nothing happened.
        assert app.statuses(4, client=VICTIM) == [200, 200, 200, 429]
    finally:
        admin.close()
        _close(limiter)


def _close(limiter: Limiter) -> None:
    limiter.backends.sync.close()
    storage: Any = limiter.backends.async_

    async def close() -> None:
        await storage.aclose()

    asyncio.run(close())
