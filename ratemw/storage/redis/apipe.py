"""One pipelined connection to one Redis server: the async storage's ``"pipe"`` transport
(ASGI). The twin of ``pipe.Pipe``; what goes on the wire is ``endpoint.py``'s.

Every script call a storage makes in one event loop goes down one connection: a command is
written the moment it is made, the server answers in order, and each reply resolves the
future of the call that is first in line. Nothing waits for a free connection, so there is
no pool to size, and a burst of concurrent requests shares one read of the socket.

Why not redis-py's async client, which the storage still uses for everything else (Cluster,
Sentinel, ``clear``/``reset``): a round trip through it costs about twice what the same round
trip costs through an ``asyncio.Protocol`` (measured on a 2-core machine, one ``EVALSHA``
at a time: 220-340 µs against 100-140 µs; see docs/benchmarks.md). On Redis the round trip
is nearly the whole cost of rate limiting, so this module is the fast lane for the one
command that runs on every request. It speaks just enough RESP2 for that: the handshake
(``AUTH``, ``SELECT``) and ``EVALSHA``/``EVAL``.

Failures are bounded and reported as redis-py's exceptions, so the storage and the circuit
breaker treat both lanes alike:

- one deadline per call, ``socket_timeout``, covers everything it waits for: a new
  connection, its handshake and the reply (``redis.TimeoutError``);
- a connection that stays silent for a whole timeout is closed, failing the calls still
  waiting on it, and the next call opens a new one;
- a lost or refused connection fails the calls waiting on it (``redis.ConnectionError``),
  and the next call opens a new one.

A command is never sent twice once written: the script may have run, and running it again
would count the request twice. A call that finds the connection idle looks at it before
writing (an idle connection the server closed polls readable with the end of the stream,
before the event loop may have noticed), and opens a new one instead. Replies are matched to
calls by the token each script call carries (``endpoint.py``): the moment a reply does not
answer the call first in line (a stray reply, bytes while idle, protocol garbage), the
connection is out of step; it is closed and every call waiting on it fails, none is handed
another call's reply.
"""

from __future__ import annotations

import asyncio
import select
from collections import deque
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any

import redis

from ratemw.storage.redis.endpoint import Endpoint, check_handshake, matches
from ratemw.storage.redis.resp import (
    TOKEN_ARG,
    evalsha_command,
    lost_script,
    new_reader,
    script_result,
)

__all__ = ["AsyncPipe"]


class _Silent(redis.TimeoutError):
    """A call still waiting on a connection closed for staying silent a whole timeout."""


# A call waiting for its reply: its future, its deadline, how many replies the connection
# had received when it was sent, and its token (None: a set-up command, which has none).
_Waiter = tuple["asyncio.Future[Any]", float, int, "int | None"]


class _Connection(asyncio.Protocol):
    """One open connection: commands go out in order, replies resolve them in order.

    One watchdog timer per connection, not one per call, enforces the calls' deadlines: it
    fires at the earliest deadline of the calls then waiting, fails those whose deadline
    passed, and is set again for the next. Calls answered in time cost it nothing.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, endpoint: Endpoint) -> None:
        self.loop = loop
        self.endpoint = endpoint
        self.where = endpoint.where
        self.transport: asyncio.Transport | None = None
        self.lost: redis.ConnectionError | None = None
        self.replies = 0  # replies received so far: did the server say anything lately?
        self.keeper: AsyncGenerator[None, None] | None = None
        self._reader = new_reader()
        self._waiting: deque[_Waiter] = deque()
        self._watchdog: asyncio.TimerHandle | None = None
        self._poll: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self._poll = select.poll()
            self._poll.register(sock.fileno(), select.POLLIN)

    def usable(self) -> bool:
        """Whether a call may be written on this connection now.

        While calls are waiting, the connection is in use and answers them in turn. An idle
        one is looked at first: readable while nobody waits means the server closed it or
        sent what nobody asked for, and the event loop may not have seen it yet. Either way
        it is closed (no call is lost: none waits) and the caller opens a new one.
        """
        if self.lost is not None:
            return False
        if self._waiting or self._poll is None or not self._poll.poll(0):
            return True
        self.close(redis.ConnectionError("idle connection readable: closed or out of step"))
        return False

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        waiting = self._waiting
        while True:
            try:
                reply = self._reader.gets()
            except Exception as exc:  # garbage on the wire: nothing after it can be trusted
                self.close(redis.ConnectionError(f"Protocol error from Redis: {exc}"))
                return
            if reply is False:
                return
            self.replies += 1
            if not waiting:
                self.close(redis.ConnectionError("Protocol error: a reply nobody asked for"))
                return
            future, _, _, token = waiting.popleft()
            # A reply that does not answer its call means the stream is out of step: nothing
            # after it can be matched to its call.
            if token is not None and not matches(reply, token):
                self.close(self.endpoint.out_of_step())
                if not future.done():
                    future.set_exception(self.lost or redis.ConnectionError("out of step"))
                return
            if not future.done():  # its caller may have timed out or gone away
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f": {exc}" if exc else " (closed by the server)"
        self._fail(redis.ConnectionError(f"Connection to Redis lost{reason}"))

    def send(
        self, command: bytes, deadline: float, token: int | None = None
    ) -> asyncio.Future[Any]:
        """Write ``command``; the future is its reply, or fails at ``deadline``.

        ``token``: the call token the reply must end with (``None``: a set-up command).
        """
        if self.lost is not None:
            raise self.lost
        assert self.transport is not None
        future = self.loop.create_future()
        self._waiting.append((future, deadline, self.replies, token))
        if self._watchdog is None:
            self._watchdog = self.loop.call_at(deadline, self._watch)
        self.transport.write(command)
        return future

    def _watch(self) -> None:
        self._watchdog = None
        now = self.loop.time()
        silent = False
        earliest: float | None = None
        for future, deadline, replies, _ in self._waiting:
            if future.done():
                continue
            if deadline <= now:
                future.set_exception(redis.TimeoutError(f"Timeout reading from Redis {self.where}"))
                # Not a word since this call was sent: the server, or the way to it, is gone.
                silent = silent or replies == self.replies
            elif earliest is None or deadline < earliest:
                earliest = deadline
        if silent:
            self.close(_Silent(f"Redis {self.where} stayed silent for a whole timeout"))
        elif earliest is not None:
            self._watchdog = self.loop.call_at(earliest, self._watch)

    def close(self, error: redis.ConnectionError | redis.TimeoutError) -> None:
        self._fail(error)
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, error: redis.ConnectionError | redis.TimeoutError) -> None:
        if self.lost is None:
            self.lost = redis.ConnectionError(str(error))
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        waiting = self._waiting
        while waiting:
            future = waiting.popleft()[0]
            if not future.done():
                future.set_exception(error)


async def _keep(connection: _Connection) -> AsyncGenerator[None, None]:
    # An async generator started in the loop is closed by ``asyncio.run`` (and anyio, and
    # uvloop) before the loop closes: the one hook that lets a connection close cleanly when
    # the application's loop ends without closing the storage.
    try:
        yield
    finally:
        if connection.transport is not None:
            connection.transport.abort()


class AsyncPipe(Endpoint):
    """Script calls to one server over one pipelined connection per event loop (an
    ``AsyncScriptTransport``).

    Args:
        address: ``(host, port)``, or a Unix socket path.
        options: the storage's options (timeouts, credentials, ``db``, ``ssl_*``).
        tls: whether to speak TLS.
    """

    def __init__(self, address: tuple[str, int] | str, options: dict[str, Any], tls: bool) -> None:
        super().__init__(address, options, tls)
        self._connection: _Connection | None = None
        self._opening: asyncio.Task[_Connection] | None = None

    async def script(
        self,
        sha: str,
        text: str,
        keys: Sequence[str],
        args: Sequence[str],
        packed: bytes | None = None,
    ) -> Any:
        """``transport.ScriptTransport.script``, within one timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        # The call's EVALSHA and token, as endpoint.py has it (inlined: this runs per request).
        token = next(self._tokens)
        command = (packed or evalsha_command(sha, keys, args)) + TOKEN_ARG % token
        connection = self._connection
        if connection is None or connection.loop is not loop or not connection.usable():
            connection = await self._usable(loop, deadline)
        # Written once, whatever happens next: never again on another connection.
        reply = await connection.send(command, deadline, token)
        if type(reply) is list:
            return reply
        if lost_script(reply) and connection.lost is None:
            command, token = self.loading_call(text, keys, args)
            reply = await connection.send(command, deadline, token)
        return script_result(reply)

    async def _usable(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Connection:
        """The loop's connection if it can take a call now, else a new one."""
        connection = self._connection
        if connection is not None and connection.loop is loop and connection.usable():
            return connection
        return await self._connect(loop, deadline)

    async def _connect(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Connection:
        """The loop's connection, opened by one caller while the others wait for it."""
        old = self._connection
        if old is not None and old.loop is not loop:
            _abandon(old)
            self._connection = None
        opening = self._opening
        if opening is None or opening.get_loop() is not loop:
            opening = self._opening = loop.create_task(self._open(loop))
            opening.add_done_callback(self._opened)
        try:
            return await asyncio.wait_for(asyncio.shield(opening), max(deadline - loop.time(), 0))
        except asyncio.TimeoutError:
            raise self.connect_timeout_error() from None

    def _opened(self, opening: asyncio.Task[_Connection]) -> None:
        if self._opening is opening:
            self._opening = None
        if not opening.cancelled() and opening.exception() is None:
            self._connection = opening.result()

    async def _open(self, loop: asyncio.AbstractEventLoop) -> _Connection:
        connection = _Connection(loop, self)
        try:
            deadline = loop.time() + self.connect_timeout
            await asyncio.wait_for(self._dial(loop, connection, deadline), self.connect_timeout)
        except asyncio.TimeoutError:
            connection.close(redis.TimeoutError("connect timeout"))
            raise self.connect_timeout_error() from None
        except (OSError, redis.RedisError) as exc:
            connection.close(redis.ConnectionError(str(exc)))
            if isinstance(exc, redis.RedisError):
                raise
            raise self.connect_error(exc) from exc
        except BaseException:  # cancelled (its loop is ending): leave nothing open
            connection.close(redis.ConnectionError("connection set-up abandoned"))
            raise
        connection.keeper = keeper = _keep(connection)
        await keeper.__anext__()
        return connection

    async def _dial(
        self, loop: asyncio.AbstractEventLoop, connection: _Connection, deadline: float
    ) -> None:
        factory: Callable[[], _Connection] = lambda: connection  # noqa: E731
        if isinstance(self.address, str):
            await loop.create_unix_connection(factory, self.address)
        else:
            host, port = self.address
            server_hostname = host if self._tls is not None else None
            await loop.create_connection(
                factory, host, port, ssl=self._tls, server_hostname=server_hostname
            )
        replies = [connection.send(command, deadline) for command in self._handshake]
        check_handshake([await each for each in replies])

    async def aclose(self) -> None:
        """Close the connection (if it belongs to the running loop; otherwise let it go)."""
        connection, self._connection = self._connection, None
        opening, self._opening = self._opening, None
        if opening is not None and not opening.done():
            opening.cancel()
        if connection is None:
            return
        if connection.loop is asyncio.get_running_loop():
            connection.close(redis.ConnectionError("storage closed"))
            if connection.keeper is not None:
                await connection.keeper.aclose()
        else:
            _abandon(connection)


def _abandon(connection: _Connection) -> None:
    """Close a connection of another event loop, from that loop if it still runs."""
    error = redis.ConnectionError("event loop changed")
    loop = connection.loop
    if not loop.is_closed():
        try:
            loop.call_soon_threadsafe(connection.close, error)
            return
        except RuntimeError:  # closed meanwhile
            pass
    connection.lost = error
