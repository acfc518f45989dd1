"""Bounded waits for a connection: at most ``max_connections`` calls in flight, served in
arrival order, and none sent behind calls that failed meanwhile (see ``FailedAhead``).

``Slots`` bounds the sync storage's script calls (whatever its transport: a blocking pipe
holds one connection per call in flight, redis-py's pool as many); ``AsyncSlots`` bounds the
async storage's calls through redis-py (the async pipe pipelines every call on one
connection: nothing to bound).
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque

import redis

__all__ = ["UNHEALTHY", "AsyncSlots", "FailedAhead", "Slots"]

# A timeout or a broken connection: the server (or the way to it) is failing.
UNHEALTHY = (redis.ConnectionError, redis.TimeoutError)


class FailedAhead(redis.ConnectionError):
    """A command that waited for a free connection is not sent: one ahead of it failed.

    When the server hangs, every connection is soon busy waiting out its socket timeout and
    further requests queue for one. Sending them on as connections free up would make each
    wait for a connection *and then* for its own timeout, several timeouts in a row; they
    fail as soon as a command ahead of them does instead, so no request waits on an
    unhealthy server for longer than one socket timeout (and the limiter's circuit breaker
    spares the next ones the wait altogether).
    """

    def __init__(self) -> None:
        super().__init__("Redis is failing: a command ahead of this one failed; not sent")


class _Waits:
    """What ``Slots`` and ``AsyncSlots`` share: the failures that a call waiting for a slot
    must not be sent behind.

    How a call takes a slot (``await`` the ``acquire`` of ``AsyncSlots``)::

        failures = slots.failures
        taken = slots.acquire(timeout)
        if taken is not True:  # it waited
            slots.after_wait(taken, failures)
        try:
            ...  # the call; on UNHEALTHY errors: slots.failures += 1
        finally:
            slots.release()
    """

    def __init__(self) -> None:
        self.failures = 0  # calls lost to timeouts and broken connections (see FailedAhead)

    def release(self) -> None:
        raise NotImplementedError  # pragma: no cover

    def after_wait(self, taken: bool | None, failures: int) -> None:
        """After ``acquire`` did not give a slot at once (``taken``): raise if none came, or if
        calls failed meanwhile (``failures`` was their count before it waited)."""
        if taken is False:
            raise redis.ConnectionError("no free Redis connection (pool_timeout)")
        if self.failures != failures:  # it waited behind failing calls
            self.release()
            raise FailedAhead()


class Slots(_Waits):
    """At most ``size`` threads at a time hold a slot; waiters are served in arrival order
    (but for a thread arriving in the instant a slot is handed over).

    ``threading.Semaphore`` lets a thread that just released take the slot again ahead of
    the ones waiting: a thread pool larger than the pool of connections then starves some
    requests until ``pool_timeout``, on a perfectly healthy server. Here ``release`` hands
    the slot straight to the longest waiter.

    Free slots are tokens in a deque, whose ``pop`` and ``append`` are atomic: while nobody
    waits, taking and giving back a slot costs no lock. Waiting goes through the lock. The
    first waiter looks for a token once queued, and ``release`` looks for a waiter after
    putting its token back: whichever comes second sees the other, so a slot is never left
    free while a thread waits for it. (This leans on the GIL's ordering of those steps.)
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self._tokens: deque[None] = deque([None] * size)
        self._lock = threading.Lock()
        self._waiters: deque[threading.Lock] = deque()

    @property
    def free(self) -> int:
        """Slots nobody holds."""
        return len(self._tokens)

    def acquire(self, timeout: float) -> bool | None:
        """Take a slot: ``True`` at once, ``None`` after waiting, ``False`` not in ``timeout``."""
        if not self._waiters:  # nobody is ahead of this thread
            try:
                self._tokens.pop()
                return True
            except IndexError:
                pass
        with self._lock:
            waiter = threading.Lock()
            waiter.acquire()
            self._waiters.append(waiter)
            # A slot given back just before this thread queued found nobody to hand it to.
            if self._waiters[0] is waiter and self._tokens:
                try:
                    self._tokens.pop()
                except IndexError:
                    pass
                else:
                    self._waiters.popleft()
                    return True
        if waiter.acquire(timeout=timeout):
            return None  # handed over by release()
        with self._lock:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
                return False
        return None  # handed over between the timeout and this thread's taking the lock

    def release(self) -> None:
        self._tokens.append(None)
        if self._waiters:
            with self._lock:
                if self._waiters:
                    try:
                        self._tokens.pop()
                    except IndexError:  # taken meanwhile, by a thread that had queued
                        return
                    self._waiters.popleft().release()


class AsyncSlots(_Waits):
    """At most ``size`` calls of one event loop hold a slot (``Slots``' twin).

    Args:
        size: the calls in flight at most (``max_connections``).
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self._semaphore = asyncio.Semaphore(size)

    async def acquire(self, timeout: float) -> bool | None:
        """Take a slot: ``True`` at once, ``None`` after waiting, ``False`` not in ``timeout``."""
        slots = self._semaphore
        if not slots.locked():
            await slots.acquire()
            return True
        try:
            await asyncio.wait_for(slots.acquire(), timeout)
        except asyncio.TimeoutError:
            return False
        return None

    def release(self) -> None:
        self._semaphore.release()
