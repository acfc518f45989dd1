"""ratemw: rate-limiting middleware for ASGI and WSGI apps.

Callers over quota get a 429 with a problem+json body, IETF ``RateLimit`` headers and a
``Retry-After`` that is right to the second.

Example::

    from ratemw import Limiter, RateLimitMiddleware, keys

    limiter = Limiter(default_limits="100/minute", key=keys.client_ip())
    app.add_middleware(RateLimitMiddleware, limiter=limiter)
"""

from __future__ import annotations

from ratemw import keys
from ratemw.asgi import RateLimitMiddleware
from ratemw.errors import (
    ConfigurationError,
    RateLimitExceeded,
    RatemwError,
    StorageCallError,
    StorageError,
)
from ratemw.limiter import Limiter
from ratemw.policy.calendar import Calendar
from ratemw.policy.decision import Decision, PolicyState
from ratemw.policy.rules import Rule
from ratemw.standing import current
from ratemw.wsgi import WSGIRateLimitMiddleware

__version__ = "0.1.0.dev0"

__all__ = [
    "Calendar",
    "ConfigurationError",
    "Decision",
    "Limiter",
    "PolicyState",
    "RateLimitExceeded",
    "RateLimitMiddleware",
    "RatemwError",
    "Rule",
    "StorageCallError",
    "StorageError",
    "WSGIRateLimitMiddleware",
    "current",
    "keys",
]
