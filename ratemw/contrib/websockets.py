"""Limits on WebSocket messages, for Starlette and FastAPI endpoints.

The middleware limits the handshake; ``MessageLimit`` limits what comes after: each message
a client sends counts (``Limiter.ahit``), per connection or per key. Over the limit, the
connection is closed with code 1008 (policy violation) and a reason carrying the retry time,
or, with ``on_exceeded="message"``, the client is told in a message and the connection
stays open (the message is dropped).

Example::

    from ratemw.contrib.websockets import MessageLimit

    chat_limit = MessageLimit(limiter, "10/second;100/minute")   # per connection

    @app.websocket("/chat")
    async def chat(websocket: WebSocket):
        await websocket.accept()
        async for text in chat_limit.iter_text(websocket):
            await websocket.send_text(f"echo: {text}")
"""

from __future__ import annotations

import inspect
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from ratemw.engine.decide import key_failed
from ratemw.errors import ConfigurationError
from ratemw.limiter import Limiter
from ratemw.policy.decision import Decision
from ratemw.policy.groups import valid_identity

__all__ = ["POLICY_VIOLATION", "MessageLimit"]

#: The close code of a connection over its message limit: "policy violation" (RFC 6455).
POLICY_VIOLATION = 1008
_CONNECTION = "ratemw.connection"  # a connection's own identity, in its scope
_MAX_REASON = 123  # bytes a close frame's reason may hold

Exceeded = Callable[[Any, Decision], Any]  # sync, or async (awaited)


class MessageLimit:
    """Count a WebSocket endpoint's incoming messages against a limit.

    Args:
        limiter: the ``Limiter`` (its storage, strategy and clock count the messages).
        limit: a limit string such as ``"10/second"``, or several joined by ``;``.
        key: who is counted: a key function of the WebSocket (sync or async), such as
            ``keys.client_ip()`` (all of a client's connections share the limit); by
            default each connection is counted on its own. A key that fails counts by
            client address.
        scope: the name of the counts (default ``"websocket-messages"``): calls to
            ``Limiter.hit`` with this scope share them.
        cost: units each message takes.
        on_exceeded: ``"close"`` (default: close with 1008 and a reason such as
            ``"rate limit exceeded; retry in 3 s"``), ``"message"`` (send a JSON message
            ``{"error": "rate_limited", "retry_after": 3, ...}``, drop the message, keep the
            connection), or a callable ``(websocket, decision)`` of your own (sync or async).
    """

    def __init__(
        self,
        limiter: Limiter,
        limit: str,
        *,
        key: Callable[[Any], Any] | None = None,
        scope: str = "websocket-messages",
        cost: int = 1,
        on_exceeded: str | Exceeded = "close",
    ) -> None:
        if not isinstance(limiter, Limiter):
            raise ConfigurationError(f"limiter must be a ratemw.Limiter, got {limiter!r}")
        if key is not None and not callable(key):
            raise ConfigurationError(f"key must be callable, got {key!r}")
        if not (on_exceeded in ("close", "message") or callable(on_exceeded)):
            raise ConfigurationError(
                f"invalid on_exceeded {on_exceeded!r}: expected 'close', 'message' or an "
                "async callable (websocket, decision)"
            )
        self.limiter = limiter
        self.limit = limit
        self.key = key
        self.scope = scope
        self.cost = cost
        self.on_exceeded = on_exceeded
        if type(cost) is not int or cost < 1:
            raise ConfigurationError(f"invalid cost {cost!r}: expected a whole number >= 1")
        limiter.peek("check", limit, scope=scope)  # a bad limit or scope fails here

    async def admit(self, websocket: Any) -> bool:
        """Count one incoming message: whether it may be handled. Over the limit the client
        is told (``on_exceeded``) and ``False`` returned."""
        decision = await self.limiter.ahit(
            await self._identity(websocket), self.limit, scope=self.scope, cost=self.cost
        )
        if decision.allowed:
            return True
        await self._exceeded(websocket, decision)
        return False

    async def iter_text(self, websocket: Any) -> AsyncIterator[str]:
        """The text messages the client may send, until it disconnects (or, with
        ``on_exceeded="close"``, goes over the limit)."""
        async for text in websocket.iter_text():
            if await self.admit(websocket):
                yield text
            elif _closed(websocket):  # closed by on_exceeded
                return

    async def iter_json(self, websocket: Any) -> AsyncIterator[Any]:
        """The JSON messages the client may send (see ``iter_text``)."""
        async for data in websocket.iter_json():
            if await self.admit(websocket):
                yield data
            elif _closed(websocket):  # closed by on_exceeded
                return

    async def _identity(self, websocket: Any) -> str:
        if self.key is None:  # one connection, one count
            scope = websocket.scope
            found = scope.get(_CONNECTION)
            if found is None:
                found = scope[_CONNECTION] = uuid.uuid4().hex
            return str(found)
        try:
            value = self.key(websocket)
            if inspect.isawaitable(value):
                value = await value
        except Exception:
            value = None
        identity = valid_identity(value)
        if identity is None:
            context = self.limiter.engine.context
            return key_failed(context, self.key, websocket, None, value)
        return identity

    async def _exceeded(self, websocket: Any, decision: Decision) -> None:
        if callable(self.on_exceeded):
            answered = self.on_exceeded(websocket, decision)
            if inspect.isawaitable(answered):
                await answered
            return
        retry = decision.retry_after
        if self.on_exceeded == "message":
            await websocket.send_text(json.dumps({
                "error": "rate_limited",
                "retry_after": retry,
                "policies": [p.as_dict() for p in decision.policies if p.violated],
            }))  # fmt: skip
            return
        reason = "rate limit exceeded" + (f"; retry in {retry} s" if retry is not None else "")
        await websocket.close(code=POLICY_VIOLATION, reason=reason[:_MAX_REASON])


def _closed(websocket: Any) -> bool:
    state = getattr(websocket, "application_state", None)
    return getattr(state, "name", "") == "DISCONNECTED"
