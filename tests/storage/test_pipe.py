"""The storages' script connections: ``redis.apipe.AsyncPipe`` (ASGI), ``redis.pipe.Pipe`` (WSGI).

The reply parser and the packing are checked on their own; everything about talking to
Redis is checked against a real ``redis-server``.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import time
from collections.abc import Iterator
from typing import Any

import hiredis
import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st
from redis.exceptions import ResponseError

from ratemw import StorageError
from ratemw.storage import Hit
from ratemw.storage.redis import SCRIPT, SCRIPT_SHA, AsyncRedisStorage, RedisStorage
from ratemw.storage.redis.apipe import AsyncPipe
from ratemw.storage.redis.pipe import Pipe as SyncPipe
from ratemw.storage.redis.resp import ReplyReader, pack, pack_script, packed_head
from tests.redis_servers import RedisServer
from tests.storage.test_storage_contract import TEST_OPTIONS, key

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


ARGS = ["acquire 0", "fw 100 60000 1 1 0"]
TIMEOUTS = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0}
# Busy for ARGV[1] milliseconds on the server, then answers {ARGV[2], token}: a slow but
# healthy server. (A script called through a pipe gets the call's token as its last argument
# and ends its reply with it.)
SLOW = """
local t = redis.call('TIME')
local start = t[1] * 1000 + math.floor(t[2] / 1000)
repeat
  t = redis.call('TIME')
until t[1] * 1000 + math.floor(t[2] / 1000) - start >= tonumber(ARGV[1])
return {tonumber(ARGV[2]), tonumber(ARGV[#ARGV])}
"""
SLOW_SHA = hashlib.sha1(SLOW.encode()).hexdigest()
FAILING = "return redis.error_reply('boom')"


# -- parsing and packing --------------------------------------------------------------------

REPLIES = [
    b":42\r\n",
    b":-7\r\n",
    b"+OK\r\n",
    b"-NOSCRIPT No matching script\r\n",
    b"$5\r\nhello\r\n",
    b"$0\r\n\r\n",
    b"$-1\r\n",
    b"*-1\r\n",
    b"*0\r\n",
    b"*3\r\n:1\r\n$2\r\nab\r\n*2\r\n:2\r\n+x\r\n",
]


def _all(reader: Any) -> list[Any]:
    found = []
    while (reply := reader.gets()) is not False:
        found.append(reply)
    return found


def _plain(reply: Any) -> Any:
    if isinstance(reply, ResponseError):
        return ("error", str(reply))
    if isinstance(reply, list):
        return [_plain(item) for item in reply]
    return reply


@given(st.lists(st.sampled_from(REPLIES), max_size=8), st.data())
def test_the_reader_answers_as_hiredis_however_the_bytes_arrive(
    replies: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(replies)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    ours, theirs = ReplyReader(), hiredis.Reader(replyError=ResponseError)
    got: list[Any] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        ours.feed(stream[start:end])
        got += _all(ours)
    theirs.feed(stream)
    assert [_plain(r) for r in got] == [_plain(r) for r in _all(theirs)]
    assert len(got) == len(replies)


def test_the_reader_refuses_garbage() -> None:
    reader = ReplyReader()
    reader.feed(b"?what\r\n")
    with pytest.raises(redis.ConnectionError, match="Protocol error"):
        reader.gets()


@pytest.mark.parametrize(
    "keys",
    [
        pytest.param(["ratemw:{abc}:route:fw"], id="ascii"),
        pytest.param(["ratemw:{é}:café", "k2"], id="non-ascii"),
        pytest.param([], id="no keys"),
    ],
)
def test_pack_script_is_the_command_packed(keys: list[str]) -> None:
    args = ["acquire 0", "fw 5 1000 1 1 0", "señal"]
    expected = pack(["EVALSHA", SCRIPT_SHA, len(keys), *keys, *args])
    assert pack_script(packed_head("EVALSHA", SCRIPT_SHA), 2, keys, args) == expected


# -- against a real server: the twins, from one table ----------------------------------------


class Twin:
    """``AsyncPipe`` or the sync ``Pipe``, called the same way (the async one on one loop)."""

    def __init__(self, asynchronous: bool, address: tuple[str, int], **options: Any) -> None:
        merged = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0, **options}
        self.asynchronous = asynchronous
        self.pipe: Any = (AsyncPipe if asynchronous else SyncPipe)(address, merged, tls=False)
        self.loop = asyncio.new_event_loop() if asynchronous else None

    def script(self, sha: str, text: str, keys: list[str], args: list[str]) -> Any:
        if self.loop is None:
            return self.pipe.script(sha, text, keys, args)
        return self.loop.run_until_complete(self.pipe.script(sha, text, keys, args))

    def close(self) -> None:
        if self.loop is None:
            self.pipe.close()
            return
        self.loop.run_until_complete(self.pipe.aclose())
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()


@pytest.fixture(params=[False, True], ids=["sync", "async"])
def asynchronous(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture
def twin(asynchronous: bool, redis_standalone_clean: RedisServer) -> Iterator[Twin]:
    made = Twin(asynchronous, redis_standalone_clean.address)
    yield made
    made.close()


def _clients(server: RedisServer) -> list[dict[str, Any]]:
    """The connections whose last command was a script: the pipes'."""
    with server.client() as admin:
        return [c for c in admin.client_list() if c.get("cmd") in ("evalsha", "eval")]


def test_a_flushed_script_is_loaded_again(twin: Twin, redis_standalone_clean: RedisServer) -> None:
    with redis_standalone_clean.client() as admin:
        admin.script_flush()
        assert admin.script_exists(SCRIPT_SHA) == [False]
        assert twin.script(SCRIPT_SHA, SCRIPT, [key()], ARGS)[:2] == [1, 99]
        assert admin.script_exists(SCRIPT_SHA) == [True]


def test_a_script_error_is_raised_not_returned(twin: Twin) -> None:
    with pytest.raises(ResponseError, match="boom"):
        twin.script(hashlib.sha1(FAILING.encode()).hexdigest(), FAILING, [key()], [])
    assert twin.script(SCRIPT_SHA, SCRIPT, [key()], ARGS)[:2] == [1, 99]  # still in step


def test_a_silent_server_costs_one_timeout_then_a_new_connection(
    asynchronous: bool, redis_standalone_clean: RedisServer
) -> None:
    server = redis_standalone_clean
    twin = Twin(asynchronous, server.address, socket_timeout=0.3)
    try:
        twin.script(SCRIPT_SHA, SCRIPT, [key()], ARGS)
        server.pause(1.0)
        started = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            twin.script(SCRIPT_SHA, SCRIPT, [key()], ARGS)
        assert 0.3 <= time.monotonic() - started < 0.9
        server.unpause()
        assert twin.script(SCRIPT_SHA, SCRIPT, [key()], ARGS)[0] == 1
        assert len(_clients(server)) == 1  # the silent connection was closed, not kept
    finally:
        server.unpause()
        twin.close()


def test_a_restarted_server_is_reconnected_to(
    twin: Twin, redis_standalone_clean: RedisServer
) -> None:
    twin.script(SCRIPT_SHA, SCRIPT, [key()], ARGS)
    redis_standalone_clean.restart()
    assert twin.script(SCRIPT_SHA, SCRIPT, [key()], ARGS)[:2] == [1, 99]


def test_a_refused_connection_fails_fast(asynchronous: bool) -> None:
    from tests.redis_servers import find_free_port

    twin = Twin(asynchronous, ("127.0.0.1", find_free_port()))
    try:
        started = time.monotonic()
        with pytest.raises(redis.ConnectionError, match="Error connecting"):
            twin.script(SCRIPT_SHA, SCRIPT, [key()], ARGS)
        assert time.monotonic() - started < 0.5
    finally:
        twin.close()


# -- the async twin: one connection, pipelined --------------------------------------------------


async def test_concurrent_calls_share_one_connection(redis_standalone_clean: RedisServer) -> None:
    pipe = AsyncPipe(redis_standalone_clean.address, TIMEOUTS, tls=False)
    name = key()
    try:
        replies = await asyncio.gather(
            *(pipe.script(SCRIPT_SHA, SCRIPT, [name], ARGS) for _ in range(150))
        )
        remaining = sorted(reply[1] for reply in replies if reply[0] == 1)
        assert remaining == list(range(100))  # exactly 100 admitted, each its own answer
        assert sum(1 for reply in replies if reply[0] == 0) == 50
        assert len(_clients(redis_standalone_clean)) == 1
    finally:
        await pipe.aclose()


async def test_a_late_reply_is_dropped_and_later_calls_get_their_own(
    redis_standalone_clean: RedisServer,
) -> None:
    # Two slow scripts back to back: the first answers at 150 ms (so the server is not
    # silent), the second would at 300 ms, after its 250 ms deadline. Its late answer must
    # be thrown away, not handed to the next call, and the connection kept.
    pipe = AsyncPipe(
        redis_standalone_clean.address, {**TIMEOUTS, "socket_timeout": 0.25}, tls=False
    )
    try:
        first = asyncio.ensure_future(pipe.script(SLOW_SHA, SLOW, [key()], ["150", "1"]))
        await asyncio.sleep(0.02)
        second = asyncio.ensure_future(pipe.script(SLOW_SHA, SLOW, [key()], ["150", "2"]))
        assert (await first)[0] == 1
        with pytest.raises(redis.TimeoutError):
            await second
        connection = pipe._connection
        await asyncio.sleep(0.2)  # the late answer arrives meanwhile
        assert (await pipe.script(SLOW_SHA, SLOW, [key()], ["0", "3"]))[0] == 3
        assert pipe._connection is connection and connection is not None
        assert connection.lost is None
    finally:
        await pipe.aclose()


async def test_a_silent_server_fails_every_waiting_call_at_once(
    redis_standalone_clean: RedisServer,
) -> None:
    server = redis_standalone_clean
    pipe = AsyncPipe(server.address, {**TIMEOUTS, "socket_timeout": 0.3}, tls=False)
    try:
        await pipe.script(SCRIPT_SHA, SCRIPT, [key()], ARGS)
        server.pause(1.0)
        started = time.monotonic()
        calls = [pipe.script(SCRIPT_SHA, SCRIPT, [key()], ARGS) for _ in range(5)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, redis.TimeoutError) for r in results), results
        assert 0.3 <= time.monotonic() - started < 0.9  # one timeout, not one per call
    finally:
        server.unpause()
        await pipe.aclose()


# -- credentials and databases ----------------------------------------------------------------


@pytest.fixture(scope="module")
def locked_server() -> Iterator[RedisServer]:
    """A server with a password for the default user, and a user ``alice``."""
    server = RedisServer(name="auth").start()
    try:
        server._admin("ACL", "SETUSER", "alice", "on", ">alice-pw", "~*", "+@all")
        server._admin("CONFIG", "SET", "requirepass", "s3cret")  # the admin stays logged in
        yield server
    finally:
        server.stop()


def _storage(asynchronous: bool, uri: str, **options: Any) -> Any:
    return (AsyncRedisStorage if asynchronous else RedisStorage)(uri, **{**TEST_OPTIONS, **options})


def _acquire(asynchronous: bool, storage: Any, hits: list[Hit]) -> Any:
    if not asynchronous:
        try:
            return storage.acquire(hits)
        finally:
            storage.close()

    async def main() -> Any:
        try:
            return await storage.acquire(hits)
        finally:
            await storage.aclose()

    return asyncio.run(main())


@pytest.mark.parametrize(
    "credentials",
    [
        pytest.param(":s3cret@", id="password"),
        pytest.param("alice:alice-pw@", id="user and password"),
    ],
)
def test_credentials_and_database_are_sent(
    locked_server: RedisServer, asynchronous: bool, credentials: str
) -> None:
    host, port = locked_server.address
    storage = _storage(asynchronous, f"redis://{credentials}{host}:{port}/3")
    name = key()
    usage = _acquire(asynchronous, storage, [Hit(name, 5, 60_000, 1, "fixed-window")])
    assert usage[0].remaining == 4
    try:
        locked_server._admin("SELECT", 3)
        assert locked_server._admin("EXISTS", name) == 1
        locked_server._admin("SELECT", 0)
        assert locked_server._admin("EXISTS", name) == 0
    finally:
        locked_server._admin("SELECT", 0)


@pytest.mark.parametrize(
    "credentials",
    [
        pytest.param("", id="none"),
        pytest.param(":wrong@", id="wrong password"),
        pytest.param("alice:wrong@", id="wrong user password"),
    ],
)
def test_bad_credentials_are_a_storage_error(
    locked_server: RedisServer, asynchronous: bool, credentials: str
) -> None:
    host, port = locked_server.address
    storage = _storage(asynchronous, f"redis://{credentials}{host}:{port}")
    with pytest.raises(StorageError) as caught:
        _acquire(asynchronous, storage, [Hit(key(), 5, 60_000, 1, "fixed-window")])
    assert any(word in str(caught.value) for word in ("WRONGPASS", "NOAUTH", "invalid")), (
        caught.value
    )


def test_a_new_connection_to_a_paused_server_costs_one_timeout(
    locked_server: RedisServer, asynchronous: bool
) -> None:
    # Opening the connection, its handshake (AUTH) and the command share the call's one
    # deadline, socket_timeout: a generous socket_connect_timeout does not let the handshake
    # with a server that does not answer run past it (here it would wait out the pause).
    host, port = locked_server.address
    storage = _storage(
        asynchronous, f"redis://:s3cret@{host}:{port}", socket_timeout=0.4, socket_connect_timeout=5
    )
    locked_server.pause(1.5)
    try:
        started = time.monotonic()
        with pytest.raises(StorageError):
            _acquire(asynchronous, storage, [Hit(key(), 5, 60_000, 1, "fixed-window")])
        assert time.monotonic() - started < 0.7
    finally:
        locked_server.unpause()


# -- event loops --------------------------------------------------------------------------------


def test_one_storage_serves_one_event_loop_after_another(
    redis_standalone_clean: RedisServer,
) -> None:
    # A test client without a context starts a loop per request: each must get a
    # connection of its own, and the last loop's must be closed with it (warnings are
    # errors here, so an unclosed transport found by the collector fails the test).
    storage = AsyncRedisStorage(redis_standalone_clean.url, **TEST_OPTIONS)
    hits = [Hit(key(), 10, 60_000, 1, "fixed-window")]

    async def once() -> int:
        return (await storage.acquire(hits))[0].remaining

    assert [asyncio.run(once()) for _ in range(3)] == [9, 8, 7]
    gc.collect()
    assert _clients(redis_standalone_clean) == []  # each loop's connection closed with it
