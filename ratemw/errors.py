"""Errors raised by ratemw.

The tree::

    RatemwError
    ├── ConfigurationError   bad configuration, raised at start-up, naming the bad value
    ├── StorageError         the storage backend failed (raised ``from`` the backend's error)
    │   └── StorageCallError the storage answered, but this one call was at fault
    └── RateLimitExceeded    a request went over quota; carries every number of the 429
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ratemw.policy.decision import Decision, PolicyState


class RatemwError(Exception):
    """Base class of every error ratemw raises."""


class ConfigurationError(RatemwError, ValueError):
    """A limit, rule, storage URI or option is invalid.

    Raised when the ``Limiter``, a ``Rule`` or a middleware is built, never while a request is
    being served. The message names the bad value and says what would be valid.
    """


class StorageError(RatemwError):
    """The storage backend could not answer (unreachable, timed out, or refused).

    An outage: it counts toward the circuit breaker.
    """


class StorageCallError(StorageError):
    """The storage answered, but not usefully for this call: the script refused the call's
    arguments, or the reply does not fit what was sent.

    A defect tied to one call's data, not an outage: the circuit breaker does not count it,
    so one request's bad data can never switch limiting off for other callers. The request
    itself gets the failure mode.
    """


class RateLimitExceeded(RatemwError):
    """A request was refused because at least one of its limits has no room.

    It carries everything the default 429 response shows, so a custom handler can build its
    own response from the same numbers:

    - ``retry_after``: whole seconds until the same request would be admitted, or ``None``
      when the request's cost can never fit its quota;
    - ``policies``: the state of every policy that applied (name, quota, window, remaining,
      reset, violated);
    - ``violated``: the policies that refused the request;
    - ``detail``: the human-readable sentence of the problem body;
    - ``headers``: the response headers ratemw would send (``Retry-After``, ``RateLimit``, ...);
    - ``body``: the problem+json document as a dict.
    """

    status_code = 429
    #: True when the refusal was only reported (a shadow limit), not enforced.
    shadow = False

    def __init__(
        self,
        decision: Decision,
        *,
        method: str,
        path: str,
        headers: list[tuple[str, str]],
        body: dict[str, Any],
    ) -> None:
        self.decision = decision
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body
        super().__init__(self.detail)

    @property
    def retry_after(self) -> int | None:
        return self.decision.retry_after

    @property
    def policies(self) -> tuple[PolicyState, ...]:
        return self.decision.policies

    @property
    def violated(self) -> tuple[PolicyState, ...]:
        return tuple(p for p in self.decision.policies if p.violated and p.enforced)

    @property
    def detail(self) -> str:
        return str(self.body["detail"])

    @property
    def rate_limit_headers(self) -> dict[str, str]:
        """The headers a custom 429 should carry: ``Retry-After`` (absent when the request can
        never be satisfied) and the ``RateLimit`` fields of the limiter's header modes.

        Example::

            def handler(request, exc):
                return JSONResponse({"error": exc.detail}, 429, headers=exc.rate_limit_headers)
        """
        return {
            name: value
            for name, value in self.headers
            if name.lower() not in ("content-type", "cache-control", "content-length")
        }


# Tracebacks and reprs name the public module users import these from.
for _error in (RatemwError, ConfigurationError, StorageError, StorageCallError, RateLimitExceeded):
    _error.__module__ = "ratemw"
del _error
