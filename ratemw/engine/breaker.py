"""A circuit breaker in front of the storage.

After ``threshold`` consecutive failures the circuit opens: for ``backoff`` seconds no request
waits on the storage (the limiter's ``failure_mode`` applies at once). Then requests are let
through again; the first success closes the circuit, a failure opens it for twice as long (up
to ``max_backoff``). Each incident is logged twice, when it starts and when it ends, however
many requests it touches.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ratemw.errors import ConfigurationError, StorageError

logger = logging.getLogger("ratemw")


class CircuitOpen(StorageError):
    """The storage is not asked while the circuit is open."""


class CircuitBreaker:
    """Counts storage failures and decides whether to ask the storage at all.

    Closed, it lets every request through and counts consecutive failures; at ``threshold``
    it opens for ``backoff`` seconds. Then one request at a time probes: a success closes the
    circuit, a failure reopens it for twice as long (up to ``max_backoff``). Failures of
    requests that were already waiting when the circuit opened are not counted again.

    Args:
        threshold: consecutive failures that open the circuit.
        backoff: seconds the circuit first stays open.
        max_backoff: the longest it stays open after repeated failed probes.
        name: how the storage is named in log messages (credentials redacted).
        clock: monotonic seconds (tests may pass their own).
    """

    def __init__(
        self,
        *,
        threshold: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 2.0,
        name: str = "storage",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
            raise ConfigurationError(f"invalid breaker threshold {threshold!r}: expected >= 1")
        if not (0 < backoff <= max_backoff):
            raise ConfigurationError(
                f"invalid breaker backoff {backoff!r}/{max_backoff!r}: "
                "expected 0 < backoff <= max_backoff"
            )
        self.threshold = threshold
        self.initial_backoff = backoff
        self.max_backoff = max_backoff
        self.name = name
        self.clock = clock
        self.failures = 0
        self.backoff = backoff
        self.open_until = 0.0
        self.probe_until = 0.0  # while a probe is out, others do not wait with it
        self.incident = False
        self._lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        return self.open_until > self.clock()

    def before(self) -> None:
        """Raise ``CircuitOpen`` instead of letting a request wait on a failing storage.

        Nothing to do while ``open_until`` is 0 (the breaker is closed): the drivers check
        that first and skip the call.
        """
        if not self.open_until:
            return
        now = self.clock()
        if now < self.open_until:
            raise CircuitOpen(f"{self.name} is failing; not asked for {self.backoff:g}s")
        with self._lock:
            if now < self.probe_until:
                raise CircuitOpen(f"{self.name} is failing; a probe is under way")
            # This request probes. Should it never report back (cancelled), another may
            # probe after one more backoff.
            self.probe_until = now + self.backoff

    def success(self) -> None:
        if not self.failures and not self.incident:
            return
        with self._lock:
            if self.incident:
                logger.warning(
                    "storage %s is answering again; limits are enforced",
                    self.name,
                    extra={"ratemw": {"event": "storage_recovered", "storage": self.name}},
                )
            self.failures = 0
            self.backoff = self.initial_backoff
            self.open_until = 0.0
            self.probe_until = 0.0
            self.incident = False

    def failure(self, error: BaseException) -> None:
        with self._lock:
            now = self.clock()
            if not self.incident:
                self.incident = True
                logger.error(
                    "storage %s failed: %r",
                    self.name,
                    error,
                    extra={"ratemw": {"event": "storage_failed", "storage": self.name}},
                )
            if now < self.open_until:
                return  # a request that was already waiting when the circuit opened
            self.failures += 1
            if self.open_until:  # a probe failed: wait longer next time
                self.backoff = min(self.backoff * 2, self.max_backoff)
                self.open_until = now + self.backoff
                self.probe_until = 0.0
            elif self.failures >= self.threshold:
                self.open_until = now + self.backoff
