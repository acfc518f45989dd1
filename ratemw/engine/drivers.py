"""Drivers: they run the decision path's generators, doing its I/O.

``run`` drives with the sync storage and runs a user's async callable to completion (WSGI);
``arun`` drives with the async storage and awaits (ASGI). The twins differ only in how they
wait. Storage calls go through the circuit breaker to the limiter's storage, or to its
in-memory fallback storage; what the storage raises is handed back to the path as a value,
which applies the failure mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Sequence
from typing import Any

from ratemw.engine.breaker import CircuitBreaker
from ratemw.engine.decide import Outcome, Step, StorageCall
from ratemw.errors import StorageCallError
from ratemw.storage import StorageBackends
from ratemw.storage.base import CONCURRENCY, AsyncStorage, Batch, Hit, Storage

__all__ = ["Storages", "arun", "run"]

_local = threading.local()


class Storages:
    """The storage a limiter counts in, its in-memory fallback (built on first use) and the
    circuit breaker in front of the storage. Kept across engines: reconfiguring a limiter
    keeps its counts and its storage's health."""

    def __init__(self, backends: StorageBackends, breaker: CircuitBreaker) -> None:
        self.backends = backends
        self.breaker = breaker
        self._fallback: StorageBackends | None = None

    @property
    def fallback(self) -> StorageBackends:
        if self._fallback is None:
            self._fallback = StorageBackends("memory://", clock=self.backends.clock)
        return self._fallback

    @property
    def has_fallback(self) -> bool:
        return self._fallback is not None


def _call_sync(storage: Storage, hits: Sequence[Hit], op: str, stamp: int) -> Any:
    if op == "acquire":
        return storage.acquire(hits)
    if op == "peek":
        return storage.peek(hits)
    if op == "refund":
        return storage.refund(hits, stamp)
    return storage.release(hits)


def _call_async(storage: AsyncStorage, hits: Sequence[Hit], op: str, stamp: int) -> Awaitable[Any]:
    if op == "acquire":
        return storage.acquire(hits)
    if op == "peek":
        return storage.peek(hits)
    if op == "refund":
        return storage.refund(hits, stamp)
    return storage.release(hits)


def answer(
    storages: Storages,
    hits: Sequence[Hit],
    op: str = "acquire",
    stamp: int = 0,
    fallback: bool = False,
) -> Any:
    """What the sync storage answers (or the exception it raised)."""
    try:
        if fallback:
            return _call_sync(storages.fallback.sync, hits, op, stamp)
        memory = storages.backends.memory
        if memory is not None:  # cannot fail or block: no breaker to ask
            return memory.acquire(hits) if op == "acquire" else _call_sync(memory, hits, op, stamp)
        breaker = storages.breaker
        if breaker.open_until:  # a closed breaker, nearly always: nothing to ask it
            breaker.before()
        try:
            storage = storages.backends.sync
            if op == "acquire":  # nearly always: one call less
                value = storage.acquire(hits)
            else:
                value = _call_sync(storage, hits, op, stamp)
        except Exception as exc:
            if not isinstance(exc, StorageCallError):  # one call's defect is no outage
                breaker.failure(exc)
            raise
        if breaker.failures or breaker.incident:
            breaker.success()
        return value
    except Exception as exc:
        return exc


async def aanswer(
    storages: Storages,
    hits: Sequence[Hit],
    op: str = "acquire",
    stamp: int = 0,
    fallback: bool = False,
) -> Any:
    """What the async storage answers (or the exception it raised).

    (``arun`` asks the memory storage itself: it cannot fail or block.)
    """
    try:
        if fallback:
            return await _call_async(storages.fallback.async_, hits, op, stamp)
        breaker = storages.breaker
        if breaker.open_until:  # a closed breaker, nearly always: nothing to ask it
            breaker.before()
        try:
            storage = storages.backends.async_
            value = await (
                storage.acquire(hits) if op == "acquire" else _call_async(storage, hits, op, stamp)
            )
        except Exception as exc:
            if not isinstance(exc, StorageCallError):  # one call's defect is no outage
                breaker.failure(exc)
            raise
        if breaker.failures or breaker.incident:
            breaker.success()
        return value
    except Exception as exc:
        return exc


def _blocking(awaitable: Awaitable[Any]) -> Any:
    """Run a user's async callable to completion from a WSGI thread."""
    loop = getattr(_local, "loop", None)
    if loop is None or loop.is_closed():
        loop = _local.loop = asyncio.new_event_loop()
    return loop.run_until_complete(awaitable)


def run(storages: Storages, steps: Step) -> Outcome:
    """Drive the path with the sync storage, running async callables to completion."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = steps.throw(error) if error is not None else steps.send(value)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        value = error = None
        kind = type(step)
        if kind is Batch:  # a static plan's hits: acquire them
            value = answer(storages, step)
        elif kind is StorageCall:
            value = answer(storages, step.hits, step.op, step.stamp, step.fallback)
        else:
            try:
                value = _blocking(step)
            except Exception as exc:
                error = exc


# Releases still running after the request that started them was cancelled: kept here so
# that they are not collected half-way.
_releasing: set[asyncio.Future[Any]] = set()


async def _release_after_cancel(storages: Storages, held: list[Hit], fallback: bool) -> None:
    """Free concurrency slots an interrupted request may hold, whatever interrupts this too.

    The acquire may or may not have run: releasing a slot by its token is harmless either
    way. Shielded, so a second cancellation cannot leak the slot.
    """
    task = asyncio.ensure_future(aanswer(storages, held, "release", 0, fallback))
    _releasing.add(task)
    task.add_done_callback(_releasing.discard)
    with contextlib.suppress(asyncio.CancelledError):  # the release goes on without us
        await asyncio.shield(task)


async def arun(storages: Storages, steps: Step) -> Outcome:
    """Drive the path with the async storage, awaiting async callables.

    Concurrency slots an acquire may have taken are freed if the request is interrupted
    (cancelled: a timeout, a client that went away) before the outcome, which carries them
    on, is returned.
    """
    value: Any = None
    error: BaseException | None = None
    held: tuple[list[Hit], bool] | None = None  # slots that may be taken, and where
    memory = storages.backends.memory  # answers at once: no coroutine to await
    try:
        while True:
            try:
                step = steps.throw(error) if error is not None else steps.send(value)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            value = error = None
            kind = type(step)
            if kind is Batch:  # a static plan's hits (no concurrency slot): acquire them
                value = (
                    answer(storages, step)
                    if memory is not None
                    else (await aanswer(storages, step))
                )
            elif kind is StorageCall:
                hits, op, stamp, fallback = step.hits, step.op, step.stamp, step.fallback
                if op == "acquire" and _takes_slots(hits):
                    held = [h for h in hits if h.strategy == CONCURRENCY], fallback
                if memory is not None and not fallback:
                    value = answer(storages, hits, op, stamp, fallback)
                else:
                    value = await aanswer(storages, hits, op, stamp, fallback)
            else:
                try:
                    value = await step
                except Exception as exc:
                    error = exc
    except BaseException:
        steps.close()
        if held is not None:
            await _release_after_cancel(storages, *held)
        raise


def _takes_slots(hits: Sequence[Hit]) -> bool:
    for hit in hits:  # noqa: SIM110 - a plain loop: a request's hits are few
        if hit.strategy == CONCURRENCY:
            return True
    return False
