"""The Redis storage over TLS, against live ``redis-server`` processes that speak only TLS.

The servers (``redis_tls_server``, ``redis_tls_server_mutual`` in ``tests/redis_servers.py``)
have no plain-text port: whatever a storage counts there, it counted over TLS. Their
certificates come from a CA made for the session with ``trustme``, the server's issued for
``127.0.0.1`` only, so that ``localhost`` is a name the certificate does not carry. A second
CA, made here, is one nobody trusts. Each case runs on ``RedisStorage`` and on
``AsyncRedisStorage``.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any
from urllib.parse import urlencode

import httpx2
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from ratemw import Limiter, RateLimitMiddleware, StorageError
from ratemw.storage import Hit
from ratemw.storage.redis import AsyncRedisStorage, RedisStorage
from tests.redis_servers import RedisServer, TLSFiles, make_tls_files
from tests.storage.test_storage_contract import TEST_OPTIONS, Face, key

WINDOW_MS = 60_000
SERVERS = {"tls": "redis_tls_server", "mutual": "redis_tls_server_mutual"}
# A refused handshake costs a local round trip or two; a hang would last until the 5 s
# timeouts of TEST_OPTIONS.
PROMPTLY = 1.0

CA = {"ssl_ca_certs": "{ca}"}
CLIENT_CERT = {"ssl_certfile": "{cert}", "ssl_keyfile": "{key}"}
STRANGER_CERT = {"ssl_certfile": "{stranger_cert}", "ssl_keyfile": "{stranger_key}"}

# (server, host, options in the URI's query string, storage options): "{name}"s are files of
# the ``pem`` fixture.
ADMITTED = [
    pytest.param("tls", "127.0.0.1", CA, {}, id="CA in the URI"),
    pytest.param("tls", "127.0.0.1", {}, CA, id="CA as a storage option"),
    pytest.param("tls", "127.0.0.1", {"ssl_cert_reqs": "none"}, {}, id="no verification, no CA"),
    pytest.param("tls", "127.0.0.1", {**CA, "ssl_check_hostname": "true"}, {},
                 id="hostname checked, certificate names it"),
    pytest.param("tls", "localhost", {**CA, "ssl_check_hostname": "false"}, {},
                 id="hostname not checked, certificate names another"),
    pytest.param("mutual", "127.0.0.1", {**CA, **CLIENT_CERT}, {},
                 id="client certificate in the URI"),
    pytest.param("mutual", "127.0.0.1", CA, CLIENT_CERT,
                 id="client certificate as storage options"),
]  # fmt: skip

# The same, and what the chain of errors under the StorageError must say.
# With TLS 1.3 the client is done with the handshake before the server checks its
# certificate: the server's refusal comes as an alert, or as the connection closing (reset,
# if the client's first command is still unread) under that command.
_SERVER_HUNG_UP = "EOF occurred in violation of protocol|Connection reset by peer"
REFUSED = [
    pytest.param("tls", "127.0.0.1", {"ssl_ca_certs": "{unknown_ca}"}, {},
                 "CERTIFICATE_VERIFY_FAILED", id="server certificate of an unknown CA"),
    pytest.param("tls", "127.0.0.1", {}, {}, "CERTIFICATE_VERIFY_FAILED",
                 id="no CA given: the system's CAs do not know the server's"),
    pytest.param("tls", "localhost", {**CA, "ssl_check_hostname": "true"}, {},
                 "Hostname mismatch", id="hostname checked, certificate names another"),
    pytest.param("mutual", "127.0.0.1", CA, {}, f"CERTIFICATE_REQUIRED|{_SERVER_HUNG_UP}",
                 id="no client certificate"),
    pytest.param("mutual", "127.0.0.1", CA, STRANGER_CERT, f"UNKNOWN_CA|{_SERVER_HUNG_UP}",
                 id="client certificate of an unknown CA"),
]  # fmt: skip


@pytest.fixture(params=[False, True], ids=["sync", "async"])
def asynchronous(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture(scope="module")
def pem(redis_tls_files: TLSFiles, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The files a case names: the servers' CA and a client certificate it issued, and the
    same of a CA nobody trusts (the stranger's)."""
    stranger = make_tls_files(tmp_path_factory.mktemp("stranger"))
    return {
        "ca": str(redis_tls_files.ca_certs),
        "cert": str(redis_tls_files.client_cert),
        "key": str(redis_tls_files.client_key),
        "unknown_ca": str(stranger.ca_certs),
        "stranger_cert": str(stranger.client_cert),
        "stranger_key": str(stranger.client_key),
    }


def open_storage(
    request: pytest.FixtureRequest,
    asynchronous: bool,
    case: tuple[str, str, dict[str, str], dict[str, str]],
    pem: dict[str, str],
) -> tuple[RedisServer, Face]:
    """The case's server, and a storage of the case's face connected to it."""
    server_name, host, query, options = case
    server: RedisServer = request.getfixturevalue(SERVERS[server_name])
    query = {name: value.format(**pem) for name, value in query.items()}
    uri = f"rediss://{host}:{server.port}" + (f"?{urlencode(query)}" if query else "")
    filled = {**TEST_OPTIONS, **{name: value.format(**pem) for name, value in options.items()}}
    if asynchronous:
        return server, Face(AsyncRedisStorage(uri, **filled), asyncio.new_event_loop(), "async")
    return server, Face(RedisStorage(uri, **filled), None, "sync")


def three_hits() -> list[Hit]:
    strategies = ("fixed-window", "moving-window", "sliding-window-counter")
    return [Hit(key(s), 3, WINDOW_MS, 1, s) for s in strategies]


def error_chain(error: BaseException) -> str:
    """What the error and every error under it say, one per line."""
    lines = []
    cause: BaseException | None = error
    while cause is not None:
        lines.append(f"{type(cause).__name__}: {cause}")
        cause = cause.__cause__ or cause.__context__
    return "\n".join(lines)


@pytest.mark.parametrize(("server", "host", "query", "options"), ADMITTED)
def test_admits_then_refuses_over_tls(
    request: pytest.FixtureRequest,
    asynchronous: bool,
    pem: dict[str, str],
    server: str,
    host: str,
    query: dict[str, str],
    options: dict[str, str],
) -> None:
    tls, face = open_storage(request, asynchronous, (server, host, query, options), pem)
    hits = three_hits()
    try:
        answers = [face.acquire(hits) for _ in range(4)]
        after = face.peek(hits)
    finally:
        face.close()
    assert [[u.fits for u in a] for a in answers] == [[True] * 3] * 3 + [[False] * 3]
    assert [[u.remaining for u in a] for a in answers] == [[2] * 3, [1] * 3, [0] * 3, [0] * 3]
    assert all(u.wait_ms is not None and u.wait_ms > 0 for u in answers[-1])
    assert [u.remaining for u in after] == [0, 0, 0]
    admin = tls.client()
    try:
        assert admin.exists(*(hit.key for hit in hits)) == 3  # counted on the TLS server
    finally:
        admin.close()


def test_one_tls_connection_serves_call_after_call(
    request: pytest.FixtureRequest, asynchronous: bool, pem: dict[str, str]
) -> None:
    # An idle connection is looked at before it is reused (one the server closed is
    # replaced): what TLS sends besides replies (session tickets) must not count as that.
    tls, face = open_storage(request, asynchronous, ("tls", "127.0.0.1", CA, {}), pem)
    quota = [Hit(key(), 100, WINDOW_MS, 1, "fixed-window")]
    try:
        face.acquire(quota)
        before = int(tls.info("stats")["total_connections_received"])
        answers = [face.acquire(quota)[0].remaining for _ in range(30)]
        after = int(tls.info("stats")["total_connections_received"])
    finally:
        face.close()
    assert answers == list(range(98, 68, -1))
    assert after - before <= 1  # the helper's INFO connection, at most: no reconnects


@pytest.mark.parametrize(("server", "host", "query", "options", "cause"), REFUSED)
def test_a_refused_handshake_fails_promptly(
    request: pytest.FixtureRequest,
    asynchronous: bool,
    pem: dict[str, str],
    server: str,
    host: str,
    query: dict[str, str],
    options: dict[str, str],
    cause: str,
) -> None:
    _, face = open_storage(request, asynchronous, (server, host, query, options), pem)
    try:
        started = time.monotonic()
        with pytest.raises(StorageError) as caught:
            face.acquire(three_hits())
        elapsed = time.monotonic() - started
    finally:
        face.close()
    assert elapsed < PROMPTLY
    assert re.search(cause, error_chain(caught.value)), error_chain(caught.value)


def test_the_storage_error_says_why_the_handshake_failed(
    request: pytest.FixtureRequest, asynchronous: bool, pem: dict[str, str]
) -> None:
    case = ("tls", "127.0.0.1", {"ssl_ca_certs": "{unknown_ca}"}, {})
    _, face = open_storage(request, asynchronous, case, pem)
    try:
        with pytest.raises(StorageError) as caught:
            face.acquire(three_hits())
    finally:
        face.close()
    assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value)


def test_a_limiter_over_tls_answers_429_after_the_quota(
    redis_tls_server: RedisServer, pem: dict[str, str]
) -> None:
    redis_tls_server.flushall()
    limiter = Limiter(
        storage=f"{redis_tls_server.url}?{urlencode({'ssl_ca_certs': pem['ca']})}",
        storage_options=TEST_OPTIONS,
    )

    # The default failure mode lets requests through when the storage fails: only a storage
    # that works can answer 429.
    @limiter.limit("2/minute")
    async def tight(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/", tight)])
    app.add_middleware(RateLimitMiddleware, limiter=limiter)

    async def main() -> list[Any]:
        transport = httpx2.ASGITransport(app=app)
        try:
            async with httpx2.AsyncClient(transport=transport, base_url="http://test") as client:
                return [await client.get("/") for _ in range(3)]
        finally:
            await limiter.backends.async_.aclose()

    responses = asyncio.run(main())
    assert [r.status_code for r in responses] == [200, 200, 429]
    assert int(responses[-1].headers["Retry-After"]) >= 1
    admin = redis_tls_server.client()
    try:
        assert admin.dbsize() >= 1  # the count lives on the TLS server
    finally:
        admin.close()


def test_a_password_among_the_query_options_never_shows() -> None:
    # TLS URIs carry their options in the query string, where a password is accepted too.
    limiter = Limiter(storage="rediss://127.0.0.1:6380?ssl_cert_reqs=none&password=s3cret")
    assert "s3cret" not in repr(limiter)
