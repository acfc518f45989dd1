"""Drivers of the core's decisions: ``adecide_request`` and ``arun`` for ASGI,
``decide_request`` and ``run`` for WSGI.

``run``/``arun`` drive one of the core's generators (``evaluate``, ``conclude``, ``settle``);
``decide_request``/``adecide_request`` decide a request, by the instant lane when its plan has
one. The twins differ only in how they wait: the async ones await, the sync ones block.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from ratemw.engine.decide import (
    Outcome,
    Plan,
    Step,
    StorageCall,
    conclude,
    evaluate,
    fast_outcome,
    instant_hits,
)
from ratemw.errors import StorageCallError
from ratemw.storage._base import CONCURRENCY, AsyncStorage, Hit, Storage

if TYPE_CHECKING:
    from ratemw.limiter import Limiter

_local = threading.local()


# The answers below call ``acquire`` themselves, the op of nearly every call: one Python call
# less per request. These dispatch any op (a fallback's calls, refunds, releases).


def _call_async(storage: AsyncStorage, hits: list[Hit], op: str, stamp: int) -> Awaitable[Any]:
    if op == "acquire":
        return storage.acquire(hits)
    if op == "refund":
        return storage.refund(hits, stamp)
    return storage.release(hits)


def _call_sync(storage: Storage, hits: list[Hit], op: str, stamp: int) -> Any:
    if op == "acquire":
        return storage.acquire(hits)
    if op == "refund":
        return storage.refund(hits, stamp)
    return storage.release(hits)


async def _answer_async(
    limiter: Limiter, hits: list[Hit], op: str = "acquire", stamp: int = 0, fallback: bool = False
) -> Any:
    """What the storage answers (or the exception it raised: the core applies the failure mode)."""
    try:
        memory = limiter.backends.memory
        if memory is not None and not fallback:
            return memory.acquire(hits) if op == "acquire" else _call_sync(memory, hits, op, stamp)
        if fallback:
            return await _call_async(limiter.fallback_storage.async_, hits, op, stamp)
        breaker = limiter.breaker
        if breaker.open_until:  # a closed breaker, nearly always: nothing to ask it
            breaker.before()
        try:
            storage = limiter.backends.async_
            value = await (storage.acquire(hits) if op == "acquire" else _call_async(
                storage, hits, op, stamp
            ))
        except Exception as exc:
            if not isinstance(exc, StorageCallError):  # one call's defect is no outage
                breaker.failure(exc)
            raise
        if breaker.failures or breaker.incident:
            breaker.success()
        return value
    except Exception as exc:
        return exc


def _answer_sync(
    limiter: Limiter, hits: list[Hit], op: str = "acquire", stamp: int = 0, fallback: bool = False
) -> Any:
    """What the storage answers (or the exception it raised: the core applies the failure mode)."""
    try:
        memory = limiter.backends.memory
        if memory is not None and not fallback:
            return memory.acquire(hits) if op == "acquire" else _call_sync(memory, hits, op, stamp)
        if fallback:
            return _call_sync(limiter.fallback_storage.sync, hits, op, stamp)
        breaker = limiter.breaker
        if breaker.open_until:  # a closed breaker, nearly always: nothing to ask it
            breaker.before()
        try:
            storage = limiter.backends.sync
            value = storage.acquire(hits) if op == "acquire" else _call_sync(
                storage, hits, op, stamp
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


# Releases still running after the request that started them was cancelled: kept here so
# that they are not collected half-way.
_releasing: set[asyncio.Future[Any]] = set()


async def _release_after_cancel(limiter: Limiter, held: list[Hit], fallback: bool) -> None:
    """Free concurrency slots an interrupted request may hold, whatever interrupts this too.

    The acquire may or may not have run: releasing a slot by its token is harmless either
    way. Shielded, so a second cancellation cannot leak the slot.
    """
    release = asyncio.ensure_future(_answer_async(limiter, held, "release", 0, fallback))
    _releasing.add(release)
    release.add_done_callback(_releasing.discard)
    with contextlib.suppress(asyncio.CancelledError):  # the release goes on without us
        await asyncio.shield(release)


async def arun(limiter: Limiter, steps: Step) -> Outcome:
    """Drive the decision with async storage, awaiting the user's async callables.

    Concurrency slots an acquire may have taken are freed if the request is interrupted
    (cancelled: a timeout, a client that went away) before the outcome, which carries them
    on, is returned.
    """
    value: Any = None
    error: BaseException | None = None
    held: list[Hit] = []
    fallback = False
    try:
        while True:
            try:
                step = steps.throw(error) if error is not None else steps.send(value)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            value = error = None
            if type(step) is StorageCall:
                if step.op == "acquire":
                    taking = [hit for hit in step.hits if hit.strategy == CONCURRENCY]
                    if taking:
                        held, fallback = taking, step.fallback
                value = await _answer_async(
                    limiter, step.hits, step.op, step.stamp, step.fallback
                )
            else:
                try:
                    value = await step
                except Exception as exc:
                    error = exc
    except BaseException:
        steps.close()
        if held:
            await _release_after_cancel(limiter, held, fallback)
        raise


async def adecide_request(
    limiter: Limiter, plan: Plan, request: Any, method: str, path: str
) -> Outcome:
    """Decide one request under ASGI: the instant lane when the plan has one, else ``evaluate``.

    The instant lane (a fast plan whose keys answer at once) asks the core for the hits, the
    storage for its answer and the core for the outcome, in plain calls; anything but an
    admission (a refusal, a storage failure) goes on through ``conclude``, driven as usual.
    """
    if plan.instant:
        hits = instant_hits(limiter, plan, request)
        result = await _answer_async(limiter, hits)
        outcome = fast_outcome(limiter, plan, result)
        if outcome is not None:
            return outcome
        return await arun(limiter, conclude(
            limiter, plan, request, method, path, hits, plan.used, [], result
        ))
    return await arun(limiter, evaluate(limiter, plan, request, method, path))


def _blocking(awaitable: Awaitable[Any]) -> Any:
    """Run a user's async callable to completion from a WSGI thread."""
    loop = getattr(_local, "loop", None)
    if loop is None or loop.is_closed():
        loop = _local.loop = asyncio.new_event_loop()
    return loop.run_until_complete(awaitable)


def run(limiter: Limiter, steps: Step) -> Outcome:
    """Drive the decision with sync storage, running the user's async callables to the end."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = steps.throw(error) if error is not None else steps.send(value)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        value = error = None
        if type(step) is StorageCall:
            value = _answer_sync(limiter, step.hits, step.op, step.stamp, step.fallback)
        else:
            try:
                value = _blocking(step)
            except Exception as exc:
                error = exc


def decide_request(limiter: Limiter, plan: Plan, request: Any, method: str, path: str) -> Outcome:
    """Decide one request under WSGI: the twin of ``adecide_request``."""
    if plan.instant:
        hits = instant_hits(limiter, plan, request)
        result = _answer_sync(limiter, hits)
        outcome = fast_outcome(limiter, plan, result)
        if outcome is not None:
            return outcome
        return run(limiter, conclude(
            limiter, plan, request, method, path, hits, plan.used, [], result
        ))
    return run(limiter, evaluate(limiter, plan, request, method, path))
