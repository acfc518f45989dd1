"""Script calls to one Redis server over plain blocking sockets, for the sync storage (WSGI).

The twin of ``_pipe.AsyncPipe``. A WSGI server runs one request per thread, so there is
nothing to pipeline: a call takes an idle connection (or opens one), writes its command,
reads its reply and puts the connection back. What redis-py's client adds to that round trip
(about 60 µs per command on a 2-core machine, where the round trip itself costs about as
much) is left out; the storage still caps the calls in flight at ``max_connections`` and so
the idle connections kept.

One deadline per call, ``socket_timeout``, covers everything it waits for: opening a
connection, its handshake (TLS, ``AUTH``, ``SELECT``) and the reply. A connection that timed
out or failed is closed, never reused: its reply may still be on the way.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import redis

from ratemw.storage._resp import (
    Endpoint,
    check_handshake,
    eval_command,
    evalsha_command,
    lost_script,
    new_reader,
    script_result,
)

_READ_SIZE = 65536


class _Link:
    """One open blocking connection."""

    def __init__(self, sock: socket.socket, label: str) -> None:
        self.sock = sock
        self.label = label
        self._reader = new_reader()

    def call(self, commands: bytes, replies: int, deadline: float) -> list[Any]:
        """Write ``commands``; read ``replies`` replies, all before ``deadline``."""
        sock = self.sock
        try:
            sock.settimeout(max(deadline - time.monotonic(), 0.0001))
            sock.sendall(commands)
            found: list[Any] = []
            while True:
                reply = self._reader.gets()
                if reply is not False:
                    found.append(reply)
                    if len(found) == replies:
                        return found
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                sock.settimeout(remaining)
                data = sock.recv(_READ_SIZE)
                if not data:
                    raise redis.ConnectionError(f"Redis {self.label} closed the connection")
                self._reader.feed(data)
        except TimeoutError:  # socket.timeout is TimeoutError since Python 3.10
            raise redis.TimeoutError(f"Timeout reading from Redis {self.label}") from None
        except OSError as exc:
            raise redis.ConnectionError(f"Error talking to Redis {self.label}: {exc}") from exc

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class Pipe(Endpoint):
    """Script calls to one server over blocking connections, one call per connection at a time.

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
        command: bytes | None = None,
    ) -> Any:
        """``EVALSHA`` (``EVAL`` if the server lost the script), within one timeout.

        ``command``: the ``EVALSHA`` already packed (``evalsha_command``), if at hand.
        """
        deadline = time.monotonic() + self.timeout
        reply = self._call(command or evalsha_command(sha, keys, args), deadline)
        if type(reply) is list:
            return reply
        if lost_script(reply):
            reply = self._call(eval_command(text, keys, args), deadline)
        return script_result(reply)

    def _call(self, command: bytes, deadline: float) -> Any:
        if self._pid != os.getpid():  # forked: the parent's connections are not ours to use
            self._forget()
        # One retry on an idle connection that turns out dead (it died with a restarted
        # server); never after a timeout: the script may have run.
        for attempt in (1, 2):
            link, reused = self._take(deadline)
            try:
                reply = link.call(command, 1, deadline)[0]
            except redis.ConnectionError:
                link.close()
                if not reused or attempt == 2 or time.monotonic() >= deadline:
                    raise
                continue
            except BaseException:
                link.close()
                raise
            self._idle.append(link)
            return reply
        raise AssertionError("unreachable")  # pragma: no cover

    def _take(self, deadline: float) -> tuple[_Link, bool]:
        try:
            return self._idle.pop(), True
        except IndexError:
            return self._open(deadline), False

    def _open(self, deadline: float) -> _Link:
        timeout = max(min(self.connect_timeout, deadline - time.monotonic()), 0.0001)
        try:
            sock = self._dial(timeout)
        except TimeoutError:
            raise redis.TimeoutError(f"Timeout connecting to Redis {self.where}") from None
        except OSError as exc:
            raise redis.ConnectionError(f"Error connecting to Redis {self.where}: {exc}") from exc
        link = _Link(sock, self.where)
        if self._handshake:
            try:
                check_handshake(link.call(b"".join(self._handshake), len(self._handshake),
                                          deadline))
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
