"""Drivers of the core's decision generator: ``arun`` for ASGI, ``run`` for WSGI.

The twins differ only in how they wait: ``arun`` awaits, ``run`` blocks.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from ratemw._core import Outcome, Step, StorageCall
from ratemw.storage._base import AsyncStorage, Storage

if TYPE_CHECKING:
    from ratemw._limiter import Limiter

_local = threading.local()


def _call_async(storage: AsyncStorage, step: StorageCall) -> Awaitable[Any]:
    if step.op == "acquire":
        return storage.acquire(step.hits)
    if step.op == "refund":
        return storage.refund(step.hits, step.stamp)
    return storage.release(step.hits)


def _call_sync(storage: Storage, step: StorageCall) -> Any:
    if step.op == "acquire":
        return storage.acquire(step.hits)
    if step.op == "refund":
        return storage.refund(step.hits, step.stamp)
    return storage.release(step.hits)


async def arun(limiter: Limiter, steps: Step) -> Outcome:
    """Drive the decision with async storage, awaiting the user's async callables."""
    value: Any = None
    error: BaseException | None = None
    memory = limiter.backends.memory
    while True:
        try:
            step = steps.throw(error) if error is not None else steps.send(value)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        value = error = None
        if type(step) is StorageCall:
            try:
                if memory is not None and not step.fallback:
                    value = memory.acquire(step.hits) if step.op == "acquire" else _call_sync(
                        memory, step
                    )
                elif step.fallback:
                    value = await _call_async(limiter.fallback_storage.async_, step)
                else:
                    breaker = limiter.breaker
                    breaker.before()
                    try:
                        value = await _call_async(limiter.backends.async_, step)
                    except Exception as exc:
                        breaker.failure(exc)
                        raise
                    if breaker.failures or breaker.incident:
                        breaker.success()
            except Exception as exc:  # the core applies the failure mode
                value = exc
        else:
            try:
                value = await step
            except Exception as exc:
                error = exc


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
    memory = limiter.backends.memory
    while True:
        try:
            step = steps.throw(error) if error is not None else steps.send(value)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        value = error = None
        if type(step) is StorageCall:
            try:
                if memory is not None and not step.fallback:
                    value = _call_sync(memory, step)
                elif step.fallback:
                    value = _call_sync(limiter.fallback_storage.sync, step)
                else:
                    breaker = limiter.breaker
                    breaker.before()
                    try:
                        value = _call_sync(limiter.backends.sync, step)
                    except Exception as exc:
                        breaker.failure(exc)
                        raise
                    if breaker.failures or breaker.incident:
                        breaker.success()
            except Exception as exc:  # the core applies the failure mode
                value = exc
        else:
            try:
                value = _blocking(step)
            except Exception as exc:
                error = exc
