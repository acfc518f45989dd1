"""Replies are matched to their calls: stray replies, malformed replies, protocol garbage.

Every script call carries a token its reply must end with. A connection that answers a call
with a reply that is not its own is out of step: it is closed, the call fails with a
``StorageError``, and no call ever takes another call's numbers. A reply that is well framed
and carries the call's token but does not fit the call is the call's own defect:
``StorageCallError``, which the circuit breaker does not count.

The stray replies come from a hostile TCP proxy in front of a real ``redis-server``; the
malformed replies from a stand-in server that answers what each test tells it to (a server
that breaks the protocol is not something a real Redis can be made to do).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable
from typing import Any

import hiredis
import pytest
import redis
from redis.exceptions import ResponseError

from ratemw import StorageError
from ratemw.errors import StorageCallError
from ratemw.storage import Hit
from ratemw.storage.redis import AsyncRedisStorage, RedisStorage
from ratemw.storage.redis.faults import call_fault
from ratemw.storage.redis.resp import ReplyReader
from ratemw.storage.redis.script import UnfitReply, parse_reply
from tests._tcp_proxy import TCPProxy
from tests.redis_servers import RedisServer
from tests.storage.test_storage_contract import TEST_OPTIONS, key

WINDOW_MS = 60_000


class Store:
    """A Redis storage, sync or async, driven synchronously (the async one on its own loop)."""

    def __init__(self, asynchronous: bool, uri: str, **options: Any) -> None:
        cls = AsyncRedisStorage if asynchronous else RedisStorage
        self.storage: Any = cls(uri, **{**TEST_OPTIONS, "blocked_cache_size": 0, **options})
        self.loop = asyncio.new_event_loop() if asynchronous else None

    def _do(self, result: Any) -> Any:
        return result if self.loop is None else self.loop.run_until_complete(result)

    def acquire(self, hits: list[Hit]) -> Any:
        return self._do(self.storage.acquire(hits))

    def refund(self, hits: list[Hit], stamp: int) -> Any:
        return self._do(self.storage.refund(hits, stamp))

    def close(self) -> None:
        if self.loop is None:
            self.storage.close()
            return
        self.loop.run_until_complete(self.storage.aclose())
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()


@pytest.fixture(params=[False, True], ids=["sync", "async"])
def asynchronous(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


# -- a stray reply, through a hostile proxy ------------------------------------------------------

CALLS = 2_000
STRAYS_AT = (50, 500, 1_000, 1_500)


@pytest.mark.parametrize("transport", ["pipe", "redis-py"])
def test_a_stray_reply_never_reaches_another_call(
    asynchronous: bool, redis_standalone_clean: RedisServer, transport: str
) -> None:
    # Before each call in STRAYS_AT the proxy keeps a copy of the server's answer to it and
    # delivers that copy again just ahead of the answer to the next call: one extra reply,
    # which shifts every later reply by one on a connection that trusts the order alone.
    # Each call counts a fresh key with a quota of its own, so its answer is recognisable:
    # fits, with quota - 1 left. The call a stray lands in front of fails; no call ever gets
    # another's numbers, and every call after the last stray is answered right.
    outcomes: list[str] = []
    with TCPProxy(redis_standalone_clean.address) as proxy:
        store = Store(asynchronous, proxy.url, transport=transport)
        try:
            for i in range(CALLS):
                if i in STRAYS_AT:
                    proxy.replay()
                quota = 1_000 + i
                try:
                    usage = store.acquire([Hit(key(), quota, WINDOW_MS, 1, "fixed-window")])[0]
                except StorageError as exc:
                    assert not isinstance(exc, StorageCallError), exc  # an outage, not the call
                    outcomes.append("error")
                    continue
                right = usage.fits and usage.remaining == quota - 1
                outcomes.append("ok" if right else f"call {i} got {usage}")
        finally:
            store.close()
    wrong = [outcome for outcome in outcomes if outcome not in ("ok", "error")]
    assert wrong == [], f"{len(wrong)} calls got another call's reply, first: {wrong[:3]}"
    # Each stray cost the one call it landed in front of (and proves it was delivered).
    assert [i for i, o in enumerate(outcomes) if o == "error"] == [i + 1 for i in STRAYS_AT]
    assert outcomes[STRAYS_AT[-1] + 2 :] == ["ok"] * (CALLS - STRAYS_AT[-1] - 2)


def test_garbage_on_the_wire_closes_the_connection(
    asynchronous: bool, redis_standalone_clean: RedisServer
) -> None:
    with TCPProxy(redis_standalone_clean.address) as proxy:
        store = Store(asynchronous, proxy.url)
        try:
            quota = [Hit(key(), 10, WINDOW_MS, 1, "fixed-window")]
            assert store.acquire(quota)[0].remaining == 9
            proxy.inject(b"?not RESP\r\n")  # arrives while the connection is idle
            assert proxy.accepted() == 1
            assert store.acquire(quota)[0].remaining == 8  # on a new connection
            assert proxy.accepted() == 2
        finally:
            store.close()


# -- malformed replies, from a stand-in server ---------------------------------------------------


class StandIn:
    """A TCP server that answers every command with what ``answer(args)`` returns."""

    def __init__(self, answer: Callable[[list[bytes]], bytes]) -> None:
        self.answer = answer
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self._threads: list[threading.Thread] = []
        self._open: list[socket.socket] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            self._open.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn: socket.socket) -> None:
        reader = hiredis.Reader()
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                reader.feed(data)
                while (command := reader.gets()) is not False:
                    try:
                        conn.sendall(self.answer(command))
                    except OSError:
                        return

    def close(self) -> None:
        with contextlib.suppress(OSError):  # wakes the thread blocked in accept()
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for conn in self._open:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._accepting.join(5)
        for thread in self._threads:
            thread.join(5)


def _ints(*values: int) -> bytes:
    return b"*%d\r\n" % len(values) + b"".join(b":%d\r\n" % v for v in values)


def _token(args: list[bytes]) -> int:
    return int(args[-1])


# What the stand-in answers an EVALSHA of one hit with, and what the storage must raise.
MALFORMED = [
    pytest.param(lambda a: _ints(1, _token(a)), StorageCallError, id="too short"),
    pytest.param(
        lambda a: _ints(1, 9, 100, 0, 5, 7, 1, _token(a)), StorageCallError, id="too long"
    ),
    pytest.param(
        lambda a: b"*6\r\n$1\r\n1\r\n$1\r\n9\r\n$3\r\n100\r\n$1\r\n0\r\n:5\r\n:%d\r\n" % _token(a),
        StorageCallError,
        id="strings, not integers",
    ),
    pytest.param(lambda a: _ints(7, 9, 100, 0, 5, _token(a)), StorageCallError, id="fits is 7"),
    pytest.param(
        lambda a: _ints(0, 9, 100, -5, 5, _token(a)), StorageCallError, id="wait below -1"
    ),
    pytest.param(
        lambda a: _ints(1, 9, -100, 0, 5, _token(a)), StorageCallError, id="negative reset"
    ),
    pytest.param(
        lambda a: _ints(1, 9, 100, 0, 5, _token(a) + 1), StorageError, id="another call's token"
    ),
    pytest.param(lambda a: b":5\r\n", StorageError, id="an integer"),
    pytest.param(lambda a: b"$-1\r\n", StorageError, id="nil"),
    pytest.param(lambda a: b"*0\r\n", StorageError, id="empty list"),
    pytest.param(lambda a: b"?what\r\n", StorageError, id="protocol garbage"),
    pytest.param(lambda a: b":12x\r\n", StorageError, id="an integer that is not one"),
]


@pytest.mark.parametrize(("answer", "raised"), MALFORMED)
def test_a_malformed_reply_is_a_storage_error_never_a_crash(
    asynchronous: bool, answer: Callable[[list[bytes]], bytes], raised: type[StorageError]
) -> None:
    server = StandIn(answer)
    store = Store(asynchronous, server.url)
    try:
        for attempt in (1, 2):
            with pytest.raises(StorageError) as caught:
                store.acquire([Hit(key(), 10, WINDOW_MS, 1, "fixed-window")])
            assert type(caught.value) is raised, caught.value
            assert caught.value.__cause__ is not None
            if raised is StorageCallError:
                assert "fixed-window 10 per 60000 ms" in str(caught.value)  # what was sent
                # The connection answered in step: it is kept.
                assert server.connections == 1
            else:
                # Out of step or garbage: the connection is closed, the next call opens one.
                assert server.connections == attempt
    finally:
        store.close()
        server.close()


def test_a_right_reply_followed_by_more_is_used_but_its_connection_is_not(
    asynchronous: bool,
) -> None:
    def answer(args: list[bytes]) -> bytes:
        return _ints(1, 9, 100, 0, 5, _token(args)) + _ints(1, 9, 100, 0, 5, _token(args))

    # The call gets its answer; the reply after it, which nobody asked for, puts the
    # connection out of step: the next call opens a new one.
    server = StandIn(answer)
    store = Store(asynchronous, server.url)
    try:
        for calls in (1, 2):
            assert store.acquire([Hit(key(), 10, WINDOW_MS, 1, "fixed-window")])[0].remaining == 9
            assert server.connections == calls
    finally:
        store.close()
        server.close()


# -- the parsing, on its own ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "count"),
    [
        pytest.param(None, 1, id="none"),
        pytest.param(b"OK", 1, id="bytes"),
        pytest.param([], 1, id="empty"),
        pytest.param([1, 9, 100, 0, 5], 1, id="no token"),
        pytest.param([1, 9, 100, 0, 5, 7], 2, id="one hit of two"),
        pytest.param([1, 9, 100, 0, b"5", 7], 1, id="time not an integer"),
        pytest.param([True, 9, 100, 0, 5, 7], 1, id="a bool"),
        pytest.param([2, 9, 100, 0, 5, 7], 1, id="fits 2"),
        pytest.param([1, 9, 100, 0, 1, 9, None, 0, 5, 7], 2, id="second hit's reset None"),
        pytest.param([1, 9, 100, 0, 0, 9, 100, -2, 5, 7], 2, id="second hit's wait -2"),
        pytest.param([1, 9, 100, 0, 1, 9, 100, 0, 5.5, 7], 2, id="time a float"),
    ],
)
def test_parse_reply_refuses_what_does_not_fit(reply: Any, count: int) -> None:
    with pytest.raises(UnfitReply):
        parse_reply(reply, count)


def test_parse_reply_reads_what_fits() -> None:
    usages = parse_reply([1, 9, 100, 0, 0, 0, 200, -1, 5, 7], 2)
    assert [(u.fits, u.remaining, u.reset_ms, u.wait_ms, u.stamp_ms) for u in usages] == [
        (True, 9, 100, 0, 5),
        (False, 0, 200, None, 5),
    ]


@pytest.mark.parametrize(
    ("error", "the_calls"),
    [
        pytest.param(
            ResponseError("ERR ratemw: hit 1: cost is not a whole number"),
            True,
            id="refused argument",
        ),
        pytest.param(ResponseError("ratemw: hit 1: bad"), True, id="refused, ERR stripped"),
        pytest.param(
            ResponseError(
                "ERR user_script:90: attempt to compare nil with number "
                "script: 0a1b, on @user_script:90."
            ),
            True,
            id="Lua error",
        ),
        pytest.param(
            ResponseError(
                "WRONGTYPE Operation against a key holding the wrong kind "
                "of value script: 0a1b, on @user_script:54."
            ),
            True,
            id="wrong type",
        ),
        pytest.param(
            ResponseError("CROSSSLOT Keys in request don't hash to the same slot"),
            True,
            id="cross slot",
        ),
        pytest.param(
            ResponseError(
                "OOM command not allowed when used memory > 'maxmemory'. "
                "script: 0a1b, on @user_script:54."
            ),
            False,
            id="OOM",
        ),
        pytest.param(
            ResponseError(
                "READONLY You can't write against a read only replica. "
                "script: 0a1b, on @user_script:54."
            ),
            False,
            id="READONLY",
        ),
        pytest.param(ResponseError("BUSY Redis is busy running a script."), False, id="BUSY"),
        pytest.param(
            ResponseError("LOADING Redis is loading the dataset in memory"), False, id="LOADING"
        ),
        pytest.param(ResponseError("CLUSTERDOWN The cluster is down"), False, id="CLUSTERDOWN"),
        pytest.param(
            ResponseError("TRYAGAIN Multiple keys request during rehashing of slot"),
            False,
            id="TRYAGAIN",
        ),
        pytest.param(ResponseError("MASTERDOWN Link with MASTER is down"), False, id="MASTERDOWN"),
        pytest.param(
            ResponseError("NOREPLICAS Not enough good replicas to write."), False, id="NOREPLICAS"
        ),
        pytest.param(ResponseError("MOVED 3999 127.0.0.1:6381"), False, id="MOVED"),
        pytest.param(ResponseError("ERR unknown command 'EVALSHA'"), False, id="no scripting"),
        pytest.param(
            ResponseError(
                "ERR Error running script (call to f_0a1b): @user_script:1: "
                "Script killed by user with SCRIPT KILL..."
            ),
            False,
            id="script killed (Redis 6)",
        ),
        pytest.param(
            redis.exceptions.ReadOnlyError("You can't write"), False, id="redis-py ReadOnlyError"
        ),
        pytest.param(
            redis.exceptions.ClusterDownError("The cluster is down"),
            False,
            id="redis-py ClusterDownError",
        ),
        pytest.param(redis.ConnectionError("Connection refused"), False, id="connection"),
        pytest.param(redis.TimeoutError("Timeout reading"), False, id="timeout"),
        pytest.param(
            redis.exceptions.ClusterCrossSlotError("CROSSSLOT"),
            True,
            id="redis-py ClusterCrossSlotError",
        ),
    ],
)
def test_call_faults_are_told_from_outages(error: BaseException, the_calls: bool) -> None:
    assert call_fault(error) is the_calls


def test_our_reader_turns_a_bad_length_into_a_protocol_error() -> None:
    reader = ReplyReader()
    reader.feed(b"$x\r\n")
    with pytest.raises(redis.ConnectionError, match="Protocol error"):
        reader.gets()
