"""Script calls to one Redis server over plain blocking sockets: the sync storage's ``"pipe"``
transport (WSGI).

The twin of ``apipe.AsyncPipe``; what goes on the wire is ``endpoint.py``'s. A WSGI server
runs one request per thread, so there is nothing to pipeline: a call takes an idle connection
(or opens one), writes its command, reads its reply and puts the connection back. What
redis-py's client adds to that round trip (about 60 µs per command on a 2-core machine, where
the round trip itself costs about as much) is left out; the storage still caps the calls in
flight at ``max_connections`` and so the idle connections kept.

One deadline per call, ``socket_timeout``, covers everything it waits for: opening a
connection, its handshake (TLS, ``AUTH``, ``SELECT``) and the reply. A connection that timed
out or failed is closed, never reused: its reply may still be on the way.

A command is never sent twice once any of its bytes may have reached the server: the script
may have run, and running it again would count the request twice. So an idle connection is
looked at before it is reused: one the server closed (a restart, ``CLIENT KILL``, an idle
timeout) polls readable with the end of the stream, and is replaced by a new one before
anything is written. Only a command the socket refused outright (nothing written) is sent
again, once, on a new connection.

Replies are matched to calls by the token each script call carries (``endpoint.py``). A
connection that answers a call with a reply that is not its own, holds bytes nobody asked for
after a reply, or has something to say while idle is out of step with its calls: it is
closed, never reused, and the call fails rather than take another call's answer.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import ssl
import time
from collections import deque
from collections.abc import Sequence
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

__all__ = ["Pipe"]

_READ_SIZE = 65536


class _NotSent(redis.ConnectionError):
    """The socket refused a command outright: not a byte of it left, so it cannot have run."""


class _Link:
    """One open blocking connection."""

    def __init__(self, sock: socket.socket, label: str) -> None:
        self.sock = sock
        self.label = label
        self._reader = new_reader()
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)
        self._tls = isinstance(sock, ssl.SSLSocket)

    def reusable(self) -> bool:
        """Whether an idle connection can carry another call: nothing unread, still open."""
        if self._reader.has_data() or (self._tls and self.sock.pending()):  # type: ignore[attr-defined]
            return False
        if not self._poll.poll(0):
            return True
        # Readable while idle: the server closed it (end of stream), or sent what nobody asked
        # for; under TLS it may also be a record without data for us (a session ticket).
        try:
            self.sock.setblocking(False)
            self.sock.recv(1)
        except (ssl.SSLWantReadError, BlockingIOError):
            return True
        except OSError:
            return False
        return False

    def clean(self) -> bool:
        """Whether every byte received so far belonged to the replies read."""
        return not self._reader.has_data()

    def call(self, commands: bytes, replies: int, deadline: float) -> list[Any]:
        """Write ``commands``; read ``replies`` replies, all before ``deadline``.

        The connection holds no unread bytes when a call starts (``reusable``, ``clean``).
        """
        sock = self.sock
        reader = self._reader
        try:
            sock.settimeout(max(deadline - time.monotonic(), 0.0001))
            try:
                sent = sock.send(commands)
            except TimeoutError:
                raise
            except OSError as exc:
                raise _NotSent(f"Error writing to Redis {self.label}: {exc}") from exc
            if sent < len(commands):
                sock.sendall(memoryview(commands)[sent:])
                sock.settimeout(max(deadline - time.monotonic(), 0.0001))
            found: list[Any] = []
            # The first read waits as long as the write could (a command is written at once):
            # the timeout set for it is the rest of the deadline.
            while True:
                data = sock.recv(_READ_SIZE)
                if not data:
                    raise redis.ConnectionError(f"Redis {self.label} closed the connection")
                reader.feed(data)
                while (reply := reader.gets()) is not False:
                    found.append(reply)
                    if len(found) == replies:
                        return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                sock.settimeout(remaining)
        except redis.ConnectionError:
            raise
        except TimeoutError:  # socket.timeout is TimeoutError since Python 3.10
            raise redis.TimeoutError(f"Timeout reading from Redis {self.label}") from None
        except OSError as exc:
            raise redis.ConnectionError(f"Error talking to Redis {self.label}: {exc}") from exc

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class Pipe(Endpoint):
    """Script calls to one server over blocking connections, one call per connection at a time
    (a ``ScriptTransport``).

    Args:
        address: ``(host, port)``, or a Unix socket path.
        options: the storage's options (timeouts, credentials, ``db``, ``ssl_*``).
        tls: whether to speak TLS.
    """

    def __init__(self, address: tuple[str, int] | str, options: dict[str, Any], tls: bool) -> None:
        super().__init__(address, options, tls)
        self._idle: deque[_Link] = deque()  # append and pop are atomic: no lock needed
        self._pid = os.getpid()

    def script(
        self,
        sha: str,
        text: str,
        keys: Sequence[str],
        args: Sequence[str],
        packed: bytes | None = None,
    ) -> Any:
        """``transport.ScriptTransport.script``, within one timeout."""
        deadline = time.monotonic() + self.timeout
        # The call's EVALSHA and token, as endpoint.py has it (inlined: this runs per request).
        token = next(self._tokens)
        command = (packed or evalsha_command(sha, keys, args)) + TOKEN_ARG % token
        reply = self._call(command, token, deadline)
        if type(reply) is list:
            return reply
        if lost_script(reply):
            command, token = self.loading_call(text, keys, args)
            reply = self._call(command, token, deadline)
        return script_result(reply)

    def _call(self, command: bytes, token: int, deadline: float) -> Any:
        if self._pid != os.getpid():  # forked: the parent's connections are not ours to use
            self._forget()
        for attempt in (1, 2):
            link = self._take(deadline)
            try:
                reply = link.call(command, 1, deadline)[0]
            except _NotSent:  # nothing was written: it may go out again, on a new connection
                link.close()
                if attempt == 2 or time.monotonic() >= deadline:
                    raise
                continue
            except BaseException:
                link.close()
                raise
            if not matches(reply, token):
                link.close()
                raise self.out_of_step()
            if link.clean():
                self._idle.append(link)
            else:  # more than was asked for arrived: out of step from here on
                link.close()
            return reply
        raise AssertionError("unreachable")  # pragma: no cover

    def _take(self, deadline: float) -> _Link:
        """An idle connection that is still fit to use, or a new one."""
        while True:
            try:
                link = self._idle.pop()
            except IndexError:
                return self._open(deadline)
            if link.reusable():
                return link
            link.close()

    def _open(self, deadline: float) -> _Link:
        timeout = max(min(self.connect_timeout, deadline - time.monotonic()), 0.0001)
        try:
            sock = self._dial(timeout)
        except TimeoutError:
            raise self.connect_timeout_error() from None
        except OSError as exc:
            raise self.connect_error(exc) from exc
        link = _Link(sock, self.where)
        if self._handshake:
            try:
                commands = b"".join(self._handshake)
                check_handshake(link.call(commands, len(self._handshake), deadline))
                if not link.clean():
                    raise redis.ConnectionError(
                        f"Protocol error: Redis {self.where} answered more than the set-up asked"
                    )
            except BaseException:
                link.close()
                raise
        return link

    def _dial(self, timeout: float) -> socket.socket:
        if isinstance(self.address, str):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(self.address)
            except BaseException:
                sock.close()
                raise
            return sock
        host, port = self.address
        sock = socket.create_connection((host, port), timeout=timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                return _wrap(self._tls, sock, host)
        except BaseException:
            sock.close()
            raise
        return sock

    def _forget(self) -> None:
        self._pid = os.getpid()
        while self._idle:
            self._idle.pop().close()

    def close(self) -> None:
        """Close the idle connections (those in use close when their call fails, or here)."""
        while self._idle:
            try:
                self._idle.pop().close()
            except IndexError:  # pragma: no cover - another thread took the last one
                break


def _wrap(context: ssl.SSLContext, sock: socket.socket, host: str) -> socket.socket:
    return context.wrap_socket(sock, server_hostname=host)
