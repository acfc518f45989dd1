"""A TCP proxy the tests control: forward, blackhole, or cut every connection.

Put it between a client and a real ``redis-server`` to make the network misbehave in ways a
server cannot on its own::

    with TCPProxy(server.address) as proxy:
        limiter = Limiter(storage=proxy.url)
        ...
        proxy.blackhole()   # connections are accepted, nothing is relayed either way
        proxy.forward()     # relaying resumes (what was held back is delivered)
        proxy.cut()         # every open connection is closed (the listener stays)
        proxy.replay()      # the server's next bytes reach the client again, later: a stray
        proxy.inject(data)  # bytes the server never sent reach every client now

The proxy runs in a process of its own (this file run as a script, started and ended like the
Redis servers by ``tests/redis_servers.py``), so that it relays as promptly as a network would
however busy the test's own threads keep the GIL. It is driven over its stdin and stdout, one
line per command and answer; the control methods are synchronous: when ``blackhole()``
returns, not one more byte is relayed. While blackholed the proxy stops reading, so what a
client sends waits in the kernel's buffers, as it would behind a silently dropped route; new
connections are still accepted (and their upstream opened), so a client's connect succeeds
and only its first reply never comes.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import subprocess
import sys
from types import TracebackType
from typing import IO, Any

if __name__ != "__main__":
    # Not in the proxy process, which runs this file as a script: it has neither the
    # test-suite on its path nor any use for it.
    from tests.redis_servers import spawn_process, stop_process

__all__ = ["TCPProxy"]

_CHUNK = 65536
_SEND_TIMEOUT = 5.0  # a peer that reads nothing for this long loses its connection
_CONNECT_TIMEOUT = 2.0


class TCPProxy:
    """Relays TCP connections from ``host``:``port`` to ``upstream``.

    Args:
        upstream: ``(host, port)`` of the real server.
        host: the address to listen on.
    """

    def __init__(self, upstream: tuple[str, int], *, host: str = "127.0.0.1") -> None:
        self.upstream = upstream
        self.host = host
        self.port = 0  # known once started
        self._process: subprocess.Popen[Any] | None = None

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}"

    def start(self) -> TCPProxy:
        upstream_host, upstream_port = self.upstream
        self._process = spawn_process(
            [sys.executable, os.path.abspath(__file__), self.host,
             upstream_host, str(upstream_port)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )  # fmt: skip
        try:
            self.port = int(self._answer().removeprefix("listening "))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Close every connection and the listener; the process ends."""
        process, self._process = self._process, None
        if process is None:
            return
        stop_process(process, ask=_close_pipes)  # end of input: the proxy exits
        _close_pipes(process)  # in case it had exited before it was asked to

    def __enter__(self) -> TCPProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- control ----------------------------------------------------------------------------

    def blackhole(self) -> None:
        """Stop relaying, both ways, on every connection (new ones are still accepted)."""
        self._command("blackhole")

    def forward(self) -> None:
        """Relay again (bytes held back meanwhile are delivered now)."""
        self._command("forward")

    def cut(self) -> None:
        """Close every open connection, both sides, as a restarted middlebox would."""
        self._command("cut")

    def replay(self) -> None:
        """Deliver the next bytes the server sends (on any connection) once more, just ahead
        of the next bytes it sends on that connection.

        When the client waits for one reply at a time, that is one stray reply: a copy of
        the last call's answer, arriving in front of the next call's own.
        """
        self._command("replay")

    def inject(self, data: bytes) -> None:
        """Send ``data`` to every client now, as if the server had sent it."""
        self._command(f"inject {data.hex()}")

    def accepted(self) -> int:
        """How many connections the proxy has accepted so far."""
        return int(self._command("accepted"))

    def _command(self, name: str) -> str:
        if self._process is None or self._process.stdin is None:
            raise RuntimeError("the proxy is not running")
        self._process.stdin.write(name + "\n")
        self._process.stdin.flush()
        return self._answer()

    def _answer(self) -> str:
        assert self._process is not None and self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"the proxy exited (code {self._process.poll()})")
        return line.strip()


def _close_pipes(process: subprocess.Popen[Any]) -> None:
    for pipe in (process.stdin, process.stdout):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


# -- the proxy process ---------------------------------------------------------------------------


class _Relay:
    """The loop of the proxy process: one thread, one selector over every socket."""

    def __init__(self, listen_host: str, upstream: tuple[str, int], control: IO[str]) -> None:
        self.upstream = upstream
        self.control = control
        self.listener = socket.create_server((listen_host, 0))
        self.listener.setblocking(False)
        self.peers: dict[socket.socket, socket.socket] = {}  # each side to the other
        self.clients: set[socket.socket] = set()
        self.replaying = False
        self.held: dict[socket.socket, bytes] = {}  # client -> bytes to deliver again
        self.relaying = True
        self.running = True
        self.accepted = 0
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ)
        self.selector.register(control, selectors.EVENT_READ)

    def run(self) -> None:
        print(f"listening {self.listener.getsockname()[1]}", flush=True)
        try:
            while self.running:
                for key, _ in self.selector.select():
                    if key.fileobj is self.control:
                        self._command(self.control.readline().strip())
                        break  # the registrations may have changed
                    if key.fileobj is self.listener:
                        self._accept()
                    elif isinstance(key.fileobj, socket.socket):
                        self._relay(key.fileobj)
        finally:
            self._cut()
            self.listener.close()
            self.selector.close()

    def _command(self, name: str) -> None:
        if not name:  # end of input: the test is done with the proxy
            self.running = False
            return
        answer = "ok"
        if name == "blackhole" and self.relaying:
            self.relaying = False
            for sock in self.peers:
                self.selector.unregister(sock)
        elif name == "forward" and not self.relaying:
            self.relaying = True
            for sock in self.peers:
                self.selector.register(sock, selectors.EVENT_READ)
        elif name == "cut":
            self._cut()
        elif name == "replay":
            self.replaying = True
        elif name.startswith("inject "):
            data = bytes.fromhex(name.removeprefix("inject "))
            for client in list(self.clients):
                with contextlib.suppress(OSError):
                    client.sendall(data)
        elif name == "accepted":
            answer = str(self.accepted)
        print(answer, flush=True)

    def _accept(self) -> None:
        try:
            client, _ = self.listener.accept()
        except OSError:
            return
        self.accepted += 1
        try:
            upstream = socket.create_connection(self.upstream, timeout=_CONNECT_TIMEOUT)
        except OSError:
            client.close()  # the server is down: the client sees its connection closed
            return
        self.clients.add(client)
        for sock, peer in ((client, upstream), (upstream, client)):
            sock.settimeout(_SEND_TIMEOUT)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.peers[sock] = peer
            if self.relaying:
                self.selector.register(sock, selectors.EVENT_READ)

    def _relay(self, sock: socket.socket) -> None:
        peer = self.peers.get(sock)
        if peer is None:
            return
        try:
            data = sock.recv(_CHUNK)
            if data:
                peer.sendall(self.held.pop(peer, b"") + data)
                if self.replaying and peer in self.clients:
                    self.replaying = False
                    self.held[peer] = data
                return
        except OSError:
            pass
        self._close(sock)  # end of stream or a broken socket: close both sides

    def _close(self, sock: socket.socket) -> None:
        peer = self.peers.pop(sock, None)
        for each in (sock, peer):
            if each is None:
                continue
            self.peers.pop(each, None)
            self.clients.discard(each)
            self.held.pop(each, None)
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(each)
            with contextlib.suppress(OSError):
                each.shutdown(socket.SHUT_RDWR)
            each.close()

    def _cut(self) -> None:
        for sock in list(self.peers):
            self._close(sock)


if __name__ == "__main__":
    _listen, _host, _port = sys.argv[1:4]
    _Relay(_listen, (_host, int(_port)), sys.stdin).run()
