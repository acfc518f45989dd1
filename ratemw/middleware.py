"""The ASGI middleware's old home: ``from ratemw.middleware import RateLimitMiddleware`` keeps
working. New code imports it from ``ratemw`` (or ``ratemw.asgi``)."""

from __future__ import annotations

from ratemw.asgi import ExceededHandler, RateLimitMiddleware

__all__ = ["ExceededHandler", "RateLimitMiddleware"]
