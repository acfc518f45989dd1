"""The async storage's pipelined script connection (``ratemw/storage/_pipe.py``).

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
from ratemw.storage._pipe import Pipe, ReplyReader, pack, pack_script, packed_head
from ratemw.storage.redis import SCRIPT, SCRIPT_SHA, AsyncRedisStorage
from tests.redis_servers import RedisServer
from tests.storage.test_storage_contract import TEST_OPTIONS, key

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


ARGS = ["acquire 0", "fw 100 60000 1 1 0"]
# Busy for ARGV[1] milliseconds on the server, then answers 1: a slow but healthy server.
SLOW = """
local t = redis.call('TIME')
local start = t[1] * 1000 + math.floor(t[2] / 1000)
repeat
  t = redis.call('TIME')
until t[1] * 1000 + math.floor(t[2] / 1000) - start >= tonumber(ARGV[1])
return tonumber(ARGV[2])
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


# -- against a real server ------------------------------------------------------------------


def _pipe(server: RedisServer, **options: Any) -> Pipe:
    merged = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0, **options}
    return Pipe(server.address, merged, tls=False)


def _clients(server: RedisServer) -> list[dict[str, Any]]:
    """The connections whose last command was a script: the pipes'."""
    with server.client() as admin:
        return [c for c in admin.client_list() if c.get("cmd") in ("evalsha", "eval")]


async def test_concurrent_calls_share_one_connection(redis_standalone_clean: RedisServer) -> None:
    pipe = _pipe(redis_standalone_clean)
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


async def test_a_flushed_script_is_loaded_again(redis_standalone_clean: RedisServer) -> None:
    pipe = _pipe(redis_standalone_clean)
    try:
        with redis_standalone_clean.client() as admin:
            admin.script_flush()
            assert admin.script_exists(SCRIPT_SHA) == [False]
            assert (await pipe.script(SCRIPT_SHA, SCRIPT, [key()], ARGS))[:2] == [1, 99]
            assert admin.script_exists(SCRIPT_SHA) == [True]
    finally:
        await pipe.aclose()


async def test_a_script_error_is_raised_not_returned(redis_standalone_clean: RedisServer) -> None:
    pipe = _pipe(redis_standalone_clean)
    try:
        with pytest.raises(ResponseError, match="boom"):
            await pipe.script(hashlib.sha1(FAILING.encode()).hexdigest(), FAILING, [key()], [])
    finally:
        await pipe.aclose()


async def test_a_late_reply_is_dropped_and_later_calls_get_their_own(
    redis_standalone_clean: RedisServer,
) -> None:
    # Two slow scripts back to back: the first answers at 150 ms (so the server is not
    # silent), the second would at 300 ms, after its 250 ms deadline. Its late answer must
    # be thrown away, not handed to the next call, and the connection kept.
    pipe = _pipe(redis_standalone_clean, socket_timeout=0.25)
    try:
        first = asyncio.ensure_future(pipe.script(SLOW_SHA, SLOW, [key()], ["150", "1"]))
        await asyncio.sleep(0.02)
        second = asyncio.ensure_future(pipe.script(SLOW_SHA, SLOW, [key()], ["150", "2"]))
        assert await first == 1
        with pytest.raises(redis.TimeoutError):
            await second
        connection = pipe._connection
        await asyncio.sleep(0.2)  # the late answer arrives meanwhile
        assert await pipe.script(SLOW_SHA, SLOW, [key()], ["0", "3"]) == 3
        assert pipe._connection is connection and connection is not None
        assert connection.lost is None
    finally:
        await pipe.aclose()


async def test_a_silent_server_costs_one_timeout_and_its_connection(
    redis_standalone_clean: RedisServer,
) -> None:
    server = redis_standalone_clean
    pipe = _pipe(server, socket_timeout=0.3)
    try:
        await pipe.script(SCRIPT_SHA, SCRIPT, [key()], ARGS)
        before = pipe._connection
        server.pause(1.0)
        started = time.monotonic()
        calls = [pipe.script(SCRIPT_SHA, SCRIPT, [key()], ARGS) for _ in range(5)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        waited = time.monotonic() - started
        assert all(isinstance(r, redis.TimeoutError) for r in results), results
        assert 0.3 <= waited < 0.9, waited  # one timeout, not one per call
        assert before is not None and before.lost is not None  # closed: it stayed silent
        server.unpause()
        assert (await pipe.script(SCRIPT_SHA, SCRIPT, [key()], ARGS))[0] == 1
        assert pipe._connection is not before
    finally:
        server.unpause()
        await pipe.aclose()


async def test_a_restarted_server_is_reconnected_to(redis_standalone_clean: RedisServer) -> None:
    pipe = _pipe(redis_standalone_clean)
    try:
        await pipe.script(SCRIPT_SHA, SCRIPT, [key()], ARGS)
        redis_standalone_clean.restart()
        await asyncio.sleep(0.05)
        assert (await pipe.script(SCRIPT_SHA, SCRIPT, [key()], ARGS))[:2] == [1, 99]
    finally:
        await pipe.aclose()


async def test_a_refused_connection_fails_fast() -> None:
    from tests.redis_servers import find_free_port

    pipe = Pipe(("127.0.0.1", find_free_port()), {"socket_timeout": 1.0,
                                                   "socket_connect_timeout": 1.0}, tls=False)
    started = time.monotonic()
    with pytest.raises(redis.ConnectionError, match="Error connecting"):
        await pipe.script(SCRIPT_SHA, SCRIPT, [key()], ARGS)
    assert time.monotonic() - started < 0.5
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


@pytest.mark.parametrize(
    "credentials",
    [
        pytest.param(":s3cret@", id="password"),
        pytest.param("alice:alice-pw@", id="user and password"),
    ],
)
async def test_credentials_and_database_are_sent(
    locked_server: RedisServer, credentials: str
) -> None:
    host, port = locked_server.address
    storage = AsyncRedisStorage(f"redis://{credentials}{host}:{port}/3", **TEST_OPTIONS)
    name = key()
    try:
        usage = await storage.acquire([Hit(name, 5, 60_000, 1, "fixed-window")])
        assert usage[0].remaining == 4
        locked_server._admin("SELECT", 3)
        assert locked_server._admin("EXISTS", name) == 1
        locked_server._admin("SELECT", 0)
        assert locked_server._admin("EXISTS", name) == 0
    finally:
        locked_server._admin("SELECT", 0)
        await storage.aclose()


@pytest.mark.parametrize(
    "credentials",
    [
        pytest.param("", id="none"),
        pytest.param(":wrong@", id="wrong password"),
        pytest.param("alice:wrong@", id="wrong user password"),
    ],
)
async def test_bad_credentials_are_a_storage_error(
    locked_server: RedisServer, credentials: str
) -> None:
    host, port = locked_server.address
    storage = AsyncRedisStorage(f"redis://{credentials}{host}:{port}", **TEST_OPTIONS)
    try:
        with pytest.raises(StorageError) as caught:
            await storage.acquire([Hit(key(), 5, 60_000, 1, "fixed-window")])
        cause = caught.value.__cause__
        assert isinstance(cause, redis.RedisError)
        assert any(word in str(cause) for word in ("WRONGPASS", "NOAUTH", "invalid")), cause
    finally:
        await storage.aclose()


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
