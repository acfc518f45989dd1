"""``RateLimitMiddleware``: the ASGI adapter (Starlette, FastAPI, any ASGI app).

It translates; it does not decide. Per request: find the plan of the request line (route
resolution on a miss, ``routes.starlette``), ask the limiter's engine to decide, then answer
the refusal or pass the request on with the headers added to the response start (the body is
never buffered), and settle once the response is over where the outcome needs it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

import anyio
from starlette.requests import HTTPConnection, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ratemw.engine import ADAPTER, APPLIED, OUTCOME, Engine, Outcome, Plan, Planner, ResponseInfo
from ratemw.errors import ConfigurationError, RateLimitExceeded
from ratemw.keys import ScopeHolder
from ratemw.limiter import Limiter
from ratemw.policy.problems import exceeded_response, unavailable_response
from ratemw.policy.rules import Rule
from ratemw.routes.starlette import Resolution, resolve, route_path

_POLICY_VIOLATION = 1008

ExceededHandler = Callable[[Any, RateLimitExceeded], Any]


class RateLimitMiddleware:
    """Enforce a ``Limiter``'s limits on an ASGI app.

    Decorator limits, ``Rule``s and the limiter's defaults are all applied here. Requests
    over a limit get a 429 problem+json response; others go through with ``RateLimit``
    headers added to the response start (the body is never buffered, so streaming and
    server-sent events pass untouched). WebSocket handshakes are limited too.

    Example::

        app.add_middleware(RateLimitMiddleware, limiter=limiter,
                           rules=[Rule("/static/*", "300/minute")])

    Args:
        app: the ASGI app.
        limiter: the ``Limiter``.
        rules: extra ``Rule``s for this app.
        handler: ``handler(request, exc)`` (sync or async) returning a Starlette ``Response``
            to send instead of the default 429.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        limiter: Limiter,
        rules: Iterable[Rule] = (),
        handler: ExceededHandler | None = None,
    ) -> None:
        if not isinstance(limiter, Limiter):
            raise ConfigurationError(f"limiter must be a ratemw.Limiter, got {limiter!r}")
        if handler is not None and not callable(handler):
            raise ConfigurationError(f"handler must be callable, got {handler!r}")
        self.app = app
        self.limiter = limiter
        self.rules = limiter.check_rules(rules)
        self.handler = handler
        self._planner = Planner(self.rules)
        self._documented = False

    def __repr__(self) -> str:
        rules = list(self.rules)
        return f"RateLimitMiddleware({self.app!r}, limiter={self.limiter!r}, rules={rules!r})"

    def _document(self, app: Any) -> None:
        """Document the limits in a FastAPI app's OpenAPI schema, before it is first built."""
        self._documented = True
        if not type(app).__module__.startswith("fastapi") or not hasattr(app, "openapi"):
            return
        if getattr(app.openapi, "_ratemw_documented", False):
            return  # the app called document_rate_limits itself
        from ratemw.openapi import install, registrations

        # Rules given through app.add_middleware are found there; others are passed on.
        registered = bool(registrations(app, self.limiter))
        install(app, self.limiter, () if registered else self.rules, by="middleware")

    def _plan(self, engine: Engine, scope: Scope, method: str, path: str) -> Plan:
        # Everything stock routing reads: the type, method, host, root path and path. Routes
        # that read more are planned afresh on every request (see routes.starlette).
        cache_key = (scope["type"], method, _host(scope), scope.get("root_path", ""), path)
        planner = self._planner
        plan = planner.plans.get(cache_key) if planner.engine is engine else None
        if plan is None:
            plan = self._planner.plan(
                engine, cache_key, route_path(scope), method, self._route, scope
            )
        return plan

    def plan_for(self, scope: Scope) -> Plan:
        """The plan a request with this scope would be decided on (the usage endpoint asks
        it for the route a caller names)."""
        method = scope["method"] if scope["type"] == "http" else "WEBSOCKET"
        return self._plan(self.limiter.engine, scope, method, scope["path"])

    def _route(self, scope: Scope) -> Resolution:
        """The endpoint and route template a request will reach (a plan cache miss)."""
        if not self._documented:
            self._document(scope.get("app"))
        return resolve(scope.get("app") or self.app, dict(scope))

    #: The same limiter's middleware given as ``app.add_middleware(RateLimitMiddleware, ...)``
    #: is recognised by this mark (``ratemw.openapi`` finds its rules).
    ratemw_adapter = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope_type = scope["type"]
        engine = self.limiter.engine
        if (scope_type != "http" and scope_type != "websocket") or not engine.settings.enabled:
            await self.app(scope, receive, send)
            return
        applied = scope.get(APPLIED)
        if applied is not None and self.limiter in applied:
            await self.app(scope, receive, send)  # installed twice: the outer one decided
            return
        # Marked while the app below runs (a mounted sub-app gets a copy of the scope), and
        # unmarked after, so a caller that reuses one scope has each request limited.
        scope[APPLIED] = (*(applied or ()), self.limiter)
        scope[ADAPTER] = self  # for the usage endpoint: this adapter's routes and rules
        try:
            await self._limit(engine, scope, receive, send, scope_type)
        except RateLimitExceeded as exc:  # raised by the endpoint: limiter.hit(...) in code
            await self._answer_raised(scope, receive, send, exc)
        finally:
            scope.pop(OUTCOME, None)
            if applied is None:
                scope.pop(APPLIED, None)
            else:
                scope[APPLIED] = applied

    async def _limit(
        self, engine: Engine, scope: Scope, receive: Receive, send: Send, scope_type: str
    ) -> None:
        method = scope["method"] if scope_type == "http" else "WEBSOCKET"
        path = scope["path"]
        plan = self._plan(engine, scope, method, path)
        if not plan.entries:
            await self.app(scope, receive, send)
            return
        request: Any
        if plan.needs_request:
            request = Request(scope, receive) if scope_type == "http" else HTTPConnection(scope)
        else:
            request = ScopeHolder(scope)  # nothing will look past request.scope
        outcome = await engine.adecide(plan, request, method, path)
        if outcome.exceeded is not None or outcome.unavailable:
            await self._refuse(scope, receive, send, request, outcome)
            return
        scope[OUTCOME] = outcome  # the request's standing, for ratemw.current
        if outcome.needs_settling:
            await self._call_and_settle(engine, scope, receive, send, outcome)
            return
        if not outcome.headers or scope_type != "http":
            await self.app(scope, receive, send)
            return
        extra = encode_headers(outcome.headers)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _answer_raised(
        self, scope: Scope, receive: Receive, send: Send, exc: RateLimitExceeded
    ) -> None:
        """Answer a ``RateLimitExceeded`` the app raised with the same 429 as a refusal (or
        let it go on, if the app had started its response already)."""
        try:
            if scope["type"] == "http" and self.handler is not None:
                response = self.handler(Request(scope, receive), exc)
                if inspect.isawaitable(response):
                    response = await response
                await response(scope, receive, send)
                return
            status, headers, body = exceeded_response(exc)
            if scope["type"] == "http":
                await _respond(send, "http.response", status, headers, body)
            else:
                await _refuse_websocket(scope, receive, send, status, headers, body)
        except Exception:
            raise exc from None

    async def _call_and_settle(
        self, engine: Engine, scope: Scope, receive: Receive, send: Send, outcome: Outcome
    ) -> None:
        """Call the app, then free concurrency slots and settle refunds, whatever happens."""
        extra = encode_headers(outcome.headers) if scope["type"] == "http" else []
        # Until the app starts a response, an exception means a 500.
        response = ResponseInfo(500)

        async def send_and_watch(message: Message) -> None:
            nonlocal response
            if message["type"] == "http.response.start":
                raw = message.get("headers", ())
                response = ResponseInfo(message["status"], _decode(raw))
                message = {**message, "headers": [*raw, *extra]}
            elif message["type"] == "websocket.accept":
                response = ResponseInfo(101)
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            info = response
            # A client that went away cancels the request; the slot must still be freed.
            with anyio.CancelScope(shield=True):
                await engine.asettle(outcome, info)

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, request: Any, outcome: Outcome
    ) -> None:
        exc = outcome.exceeded
        if exc is not None and self.handler is not None and scope["type"] == "http":
            if isinstance(request, ScopeHolder):
                request = Request(scope, receive)
            response = self.handler(request, exc)
            if inspect.isawaitable(response):
                response = await response
            await response(scope, receive, send)
            return
        if exc is not None:
            status, headers, body = exceeded_response(exc)
        else:
            status, headers, body = unavailable_response(scope["path"])
        if scope["type"] == "http":
            await _respond(send, "http.response", status, headers, body)
            return
        await _refuse_websocket(scope, receive, send, status, headers, body)


_RAW_NAMES: dict[str, bytes] = {}  # the header names ratemw sends: a handful


def encode_headers(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """ASGI header pairs: lower-case names (encoded once each) and latin-1 values."""
    names = _RAW_NAMES
    return [
        (names.get(name) or names.setdefault(name, name.lower().encode("latin-1")),
         value.encode("latin-1"))
        for name, value in headers
    ]  # fmt: skip


async def _respond(
    send: Send, kind: str, status: int, headers: list[tuple[str, str]], body: bytes
) -> None:
    """Send a whole response: ``kind`` is ``http.response`` or, for a WebSocket handshake
    refused through the denial-response extension, ``websocket.http.response``."""
    await send({"type": f"{kind}.start", "status": status, "headers": encode_headers(headers)})
    await send({"type": f"{kind}.body", "body": body})


def _host(scope: Scope) -> bytes:
    """The ``Host`` header, which ``Host`` routes match on."""
    for name, value in scope.get("headers", ()):
        if name == b"host":
            return bytes(value)
    return b""


def _decode(headers: Any) -> list[tuple[str, str]]:
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers]


async def _refuse_websocket(
    scope: Scope,
    receive: Receive,
    send: Send,
    status: int,
    headers: list[tuple[str, str]],
    body: bytes,
) -> None:
    if "websocket.http.response" in scope.get("extensions", {}):
        await _respond(send, "websocket.http.response", status, headers, body)
        return
    # Without the denial-response extension a handshake can only be closed: 1008 is
    # "policy violation". The connect event has to be received first.
    message = await receive()
    if message["type"] == "websocket.connect":
        reason = "rate limit exceeded" if status == 429 else "rate limits unavailable"
        await send({"type": "websocket.close", "code": _POLICY_VIOLATION, "reason": reason})
