"""The client's one decision path, free of I/O: when to send, whether to retry, when to give up.

Every transport (httpx sync and async, requests) runs the same loop around it::

    attempt = Attempt(options, gates, method=..., origin=..., url=..., replayable=...)
    while True:
        sleep(attempt.pace())            # an origin known to be out of quota: wait for it
        response = send(request)
        step = attempt.after(status, headers, problem)   # problem: a 429's body, if JSON
        if isinstance(step, Retry): close(response); sleep(step.delay); continue
        if isinstance(step, GiveUp) and status == 429: raise attempt.refusal(step, ...)
        return response                                  # anything else, as it came

Pacing waits exactly as long as the server said (its numbers are already rounded up); retries
wait that long plus a jitter of up to ``jitter`` times the wait, at most 1 s, so clients refused
together do not return together. No wait ever goes past what is left of ``max_wait``: a retry
that would is not made, and pacing that would is skipped (the server decides).
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ratemw.client._exceptions import RateLimited, refusal
from ratemw.client._fields import Fields, HeadersLike, fields, retry_after
from ratemw.client._policies import HEADERS, Policy, policies_from
from ratemw.errors import ConfigurationError

__all__ = [
    "BODY_LIMIT",
    "DEFAULT_RETRY_METHODS",
    "RETURN",
    "Attempt",
    "Gates",
    "GiveUp",
    "Options",
    "Retry",
    "display_url",
]

DEFAULT_RETRY_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
"""Idempotent methods (RFC 9110 section 9.2.2): the ones retried unless told otherwise."""

RETRY_STATUSES = frozenset({429, 503})
BODY_LIMIT = 64 * 1024
"""At most this much of a refusal's body is read (a problem+json body is a few hundred bytes)."""

JITTER_CAP = 1.0
"""Seconds: the most a retry's jitter adds, however long the wait."""

_MAX_GATES = 1024  # origins remembered before expired gates are dropped

Origin = tuple[str, str, int]


def display_url(scheme: str, host: str, port: int | None, path: str) -> str:
    """A URL for messages: no credentials, no query string (it may hold an API key)."""
    default = {"http": 80, "https": 443}.get(scheme)
    where = host if port in (None, default) else f"{host}:{port}"
    return f"{scheme}://{where}{path}"


@dataclass(frozen=True, slots=True)
class Options:
    """A transport's settings, validated once (see ``RateLimitTransport`` for each)."""

    max_retries: int = 3
    max_wait: float = 60.0
    retry_methods: frozenset[str] = DEFAULT_RETRY_METHODS
    pace: bool = True
    jitter: float = 0.1
    clock: Callable[[], float] = time.monotonic
    rand: Callable[[], float] = random.random

    @classmethod
    def build(
        cls,
        *,
        max_retries: int,
        max_wait: float,
        retry_methods: Iterable[str] | None,
        pace: bool,
        jitter: float,
        clock: Callable[[], float] | None,
        rand: Callable[[], float] | None,
    ) -> Options:
        if type(max_retries) is not int or max_retries < 0:
            raise ConfigurationError(
                f"max_retries={max_retries!r}: expected a whole number, 0 or more"
            )
        if not _real(max_wait) or not 0 <= max_wait < math.inf:
            raise ConfigurationError(
                f"max_wait={max_wait!r}: expected a finite number of seconds, 0 or more"
            )
        if not _real(jitter) or not 0 <= jitter <= 1:
            raise ConfigurationError(f"jitter={jitter!r}: expected a fraction from 0 to 1")
        return cls(
            max_retries=max_retries,
            max_wait=float(max_wait),
            retry_methods=_methods(retry_methods),
            pace=bool(pace),
            jitter=float(jitter),
            clock=clock or time.monotonic,
            rand=rand or random.random,
        )


def _real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _methods(methods: Iterable[str] | None) -> frozenset[str]:
    if methods is None:
        return DEFAULT_RETRY_METHODS
    if isinstance(methods, str):
        raise ConfigurationError(
            f'retry_methods={methods!r}: expected a collection of methods, such as ["GET", "POST"]'
        )
    chosen = list(methods)
    for method in chosen:
        if not isinstance(method, str) or not method.isascii() or not method.isalpha():
            raise ConfigurationError(
                f"retry_methods: {method!r} is not an HTTP method such as 'GET' or 'POST'"
            )
    return frozenset(method.upper() for method in chosen)


class Gates:
    """Per origin, the time (on ``clock``) before which no request should be sent.

    Thread-safe, and task-safe without awaiting: no lock is held across an ``await``.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._until: dict[Origin, float] = {}

    def wait(self, origin: Origin) -> float:
        """Seconds until ``origin``'s gate opens; 0 when it is open."""
        with self._lock:
            until = self._until.get(origin)
            return 0.0 if until is None else max(until - self._clock(), 0.0)

    def close_for(self, origin: Origin, seconds: float) -> None:
        """Keep ``origin`` closed for at least ``seconds`` from now."""
        if not seconds > 0:
            return
        with self._lock:
            now = self._clock()
            until = now + seconds
            if until > self._until.get(origin, now):
                self._until[origin] = until
            if len(self._until) > _MAX_GATES:
                self._until = {o: t for o, t in self._until.items() if t > now}


@dataclass(frozen=True, slots=True)
class Retry:
    """Close the response, sleep ``delay`` seconds, send the request again."""

    delay: float


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Do not retry: raise ``RateLimited`` for a 429, return the response otherwise."""

    reason: str
    told: float | None
    policies: tuple[Policy, ...]
    problem: dict[str, Any] | None


class _Return:
    """Hand the response to the caller."""

    __slots__ = ()


RETURN = _Return()
Step = _Return | Retry | GiveUp


class Attempt:
    """One request's way through pacing and retries.

    Args:
        options: the transport's settings.
        gates: the transport's per-origin gates.
        method: the request's method, upper-case.
        origin: ``(scheme, host, port)``.
        url: the request's URL, for messages (see ``display_url``).
        replayable: whether the request's body can be sent again.
        wall: the wall clock (epoch seconds), for HTTP-dates and epoch resets.
    """

    def __init__(
        self,
        options: Options,
        gates: Gates,
        *,
        method: str,
        origin: Origin,
        url: str,
        replayable: bool,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.options = options
        self.gates = gates
        self.method = method
        self.origin = origin
        self.url = url
        self.replayable = replayable
        self.retries = 0
        self.waited = 0.0
        self._wall = wall

    @property
    def budget(self) -> float:
        """Seconds of ``max_wait`` this request has not spent yet."""
        return max(self.options.max_wait - self.waited, 0.0)

    def pace(self) -> float:
        """Seconds to wait before sending (recorded as spent): 0 to send now."""
        if not self.options.pace:
            return 0.0
        wait = self.gates.wait(self.origin)
        if wait > self.budget:
            return 0.0  # pacing only saves a refusal; it never refuses by itself
        self.waited += wait
        return wait

    def after(
        self, status: int, headers: HeadersLike, problem: dict[str, Any] | None = None
    ) -> Step:
        """What to do with a response (``problem``: a 429's body, if it is JSON)."""
        retrying = status in RETRY_STATUSES
        if not retrying and not self.options.pace:
            return RETURN
        found = fields(headers, HEADERS)
        if not found and not retrying:
            return RETURN
        now = self._wall()
        policies = policies_from(found, problem, now)
        told = _told(found, problem, policies, now) if retrying else None
        if self.options.pace:
            exhausted = [p.reset for p in policies if p.exhausted and p.reset is not None]
            self.gates.close_for(self.origin, max([*exhausted, told or 0.0]))
        if not retrying:
            return RETURN
        if told is None:
            return GiveUp("the response does not say when to retry", told, policies, problem)
        reason = self._why_not(told)
        if reason is not None:
            return GiveUp(reason, told, policies, problem)
        delay = self._jittered(told)
        self.retries += 1
        self.waited += delay
        return Retry(delay)

    def _why_not(self, told: float) -> str | None:
        options = self.options
        if self.method not in options.retry_methods:
            return f"{self.method} requests are not retried (see retry_methods)"
        if not self.replayable:
            return "the request body is a stream, which cannot be sent again"
        if options.max_retries == 0:
            return "retries are off (max_retries=0)"
        if self.retries >= options.max_retries:
            times = "once" if self.retries == 1 else f"{self.retries} times"
            return f"it was retried {times} (max_retries={options.max_retries})"
        if told > self.budget:
            return (
                f"waiting {told:g} s would pass max_wait={options.max_wait:g} s "
                f"({self.budget:g} s left)"
            )
        return None

    def _jittered(self, told: float) -> float:
        spread = min(self.options.jitter * told, JITTER_CAP)
        return min(told + spread * self.options.rand(), max(self.budget, told))

    def refusal(self, step: GiveUp, *, status: int, response: Any) -> RateLimited:
        """The error for a refusal the client gives up on."""
        return refusal(
            method=self.method, url=self.url, status=status, policies=step.policies,
            problem=step.problem, retry_after=step.told, reason=step.reason, response=response,
        )  # fmt: skip


def _told(
    found: Fields, problem: Mapping[str, Any] | None, policies: tuple[Policy, ...], now: float
) -> float | None:
    """How long the server asked to wait: ``Retry-After``, the body, or the policies."""
    wait = retry_after(found.get("retry-after"), now)
    if wait is None and problem is not None and _real(problem.get("retry_after")):
        value = float(problem["retry_after"])
        wait = value if 0 <= value < math.inf else None
    if wait is None:
        wait = max((p.reset for p in policies if p.exhausted and p.reset is not None), default=None)
    return wait
