"""Hostile requests through the full middleware, ASGI and WSGI.

Two properties, checked by hypothesis over whatever a caller can put on the wire (header
bytes that are not UTF-8, values up to 1 MB, thousands of ``X-Forwarded-For`` hops, IPv6
zones, IPv4-mapped addresses, garbage ``Forwarded``, odd paths, no client address, a key
function that raises):

1. never a 500: the app's own 200, or a 429;
2. never a key escape: what a caller varies of what it controls (headers it may spoof, the
   low 64 bits of its IPv6 address, how its address is spelled, whether its API key header
   is absent, empty or blank) never gets it more admissions than its quota. Behind a trusted
   proxy the caller controls everything the proxy forwards but the address the proxy itself
   appends.

The model the admissions are checked against knows who really sent each request (the test
made it up); ratemw only sees the request. Deterministic (``derandomize``), a few seconds.
Below the properties, labelled cases for each kind of hostile input, and the bounds that keep
a flood of keys from exhausting memory.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from ratemw import Limiter, RateLimitMiddleware, Rule, keys
from ratemw.engine.hits import MAX_KEY_LENGTH
from ratemw.storage.memory import MemoryStorage
from ratemw.testing import FakeClock
from ratemw.wsgi import WSGIRateLimitMiddleware

QUOTA = 3  # per route and caller (or API key, or user)
APP_QUOTA = 6  # per caller, across every route (application_limits)
TRUSTED = ["10.0.0.0/8", "fd00::/8"]
CALLER_V4 = "203.0.113.7"
CALLER_V6 = ipaddress.IPv6Network("2001:db8:1:2::/64")
ODD_PEER = "testclient"  # a peer that is not an IP address (Starlette's TestClient sends it)
ROUTES = ("plain", "forwarded", "api-key", "fragile")
MB = 1 << 20

HYPOTHESIS = settings(
    max_examples=60,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example,
    ],
)  # fmt: skip


# -- the app under attack ------------------------------------------------------------------------


def fragile(request: Request) -> str:
    """A user's key function with bugs: no header, or a non-ASCII one, and it raises."""
    return "user:" + request.headers["x-user"].encode("ascii").decode()


@dataclass
class Target:
    """A limiter with one route per kind of key, and the endpoints it decorated."""

    limiter: Limiter
    endpoints: dict[str, Any] = field(default_factory=dict)


def target() -> Target:
    client = keys.client_ip(trusted_proxies=TRUSTED)
    limiter = Limiter(clock=FakeClock(), key=client, application_limits=f"{APP_QUOTA}/minute")
    route_keys: dict[str, Any] = {
        "plain": None,  # the limiter's: the client address, X-Forwarded-For from proxies
        "forwarded": keys.client_ip(trusted_proxies=TRUSTED, proxy_header="forwarded"),
        "api-key": keys.header("X-API-Key", fallback=client),
        "fragile": fragile,
    }
    result = Target(limiter)
    for name, key in route_keys.items():

        async def answer(request: Request) -> PlainTextResponse:
            return PlainTextResponse("ok")

        result.endpoints[name] = limiter.limit(f"{QUOTA}/minute", key=key)(answer)
    return result


def asgi_app(target: Target) -> Starlette:
    routes = [Route(f"/{name}/{{rest:path}}", target.endpoints[name]) for name in ROUTES]
    app = Starlette(routes=routes)
    app.add_middleware(RateLimitMiddleware, limiter=target.limiter)
    return app


def hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def wsgi_app(target: Target) -> WSGIRateLimitMiddleware:
    def routes(environ: dict[str, Any]) -> tuple[Any, str | None]:
        name = environ.get("PATH_INFO", "").split("/")[1:2]
        if name and name[0] in target.endpoints:
            return target.endpoints[name[0]], f"/{name[0]}/<rest>"
        return None, None

    return WSGIRateLimitMiddleware(hello, limiter=target.limiter, routes=routes)


# -- requests, and who really sent them ----------------------------------------------------------


@dataclass
class Sent:
    """One request as the caller (and the proxy in front, if any) put it on the wire."""

    route: str
    path: str  # what follows /<route>/
    client: tuple[str, int] | None
    headers: list[tuple[bytes, bytes]]
    who: str  # the real caller (what the model counts by)


def asgi_call(app: Any, sent: Sent) -> int:
    path = f"/{sent.route}/{sent.path}"
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": path, "query_string": b"", "root_path": "",
        "raw_path": path.encode("utf-8", "surrogateescape"),
        "headers": sent.headers, "client": sent.client, "server": ("testserver", 80),
    }  # fmt: skip
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def call() -> None:
        try:
            await app(scope, receive, send)
        except Exception:
            statuses.append(500)  # what a server would answer

    asyncio.run(call())
    return statuses[0]


def environ_of(sent: Sent) -> dict[str, Any]:
    """The environ a WSGI server would build: one value per header name, joined by commas."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "QUERY_STRING": "",
        "PATH_INFO": f"/{sent.route}/{sent.path}".encode("utf-8", "surrogateescape")
        .decode("latin-1"),
        "SERVER_NAME": "testserver", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
    }  # fmt: skip
    if sent.client is not None:
        environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = sent.client[0], str(sent.client[1])
    for name, value in sent.headers:
        key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
        text = value.decode("latin-1")
        environ[key] = f"{environ[key]},{text}" if key in environ else text
    return environ


def wsgi_call(app: Any, sent: Sent) -> int:
    statuses: list[int] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        statuses.append(int(status[:3]))
        return lambda data: None

    try:
        result = app(environ_of(sent), start_response)
        b"".join(result)
        getattr(result, "close", lambda: None)()
    except Exception:
        return 500
    return statuses[0]


def wsgi_headers(sent: Sent) -> list[tuple[bytes, bytes]]:
    """The headers key functions see under WSGI (what ``wsgi_scope`` builds)."""
    return [
        (key[5:].replace("_", "-").lower().encode("latin-1"), value.encode("latin-1", "replace"))
        for key, value in environ_of(sent).items()
        if key.startswith("HTTP_")
    ]


def first(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    return next((value for key, value in headers if key == name), None)


def bucket(sent: Sent, headers: list[tuple[bytes, bytes]]) -> tuple[str, str]:
    """The model: the route's bucket a request must count in (or in a stricter one)."""
    if sent.route == "api-key":
        for key, value in headers:
            if key == b"x-api-key" and value.strip():
                return sent.route, "key:" + value.strip().decode("latin-1")
        return sent.route, sent.who  # absent or blank: the caller's address
    if sent.route == "fragile":
        user = first(headers, b"x-user")
        if user is not None and user.isascii():
            return sent.route, "user:" + user.decode("ascii")
        # The key function raised: counted by the caller's address, as the limiter's
        # client_ip (trusting its proxies) counts it.
        return sent.route, sent.who
    return sent.route, sent.who


def check(sent: list[Sent], statuses: list[int], headers_of: Callable[[Sent], Any]) -> None:
    assert set(statuses) <= {200, 429}, Counter(statuses)
    event("some requests refused" if 429 in statuses else "none refused")
    admitted = [s for s, status in zip(sent, statuses, strict=True) if status == 200]
    for who, n in Counter(s.who for s in admitted).items():
        assert n <= APP_QUOTA, f"{who} got {n} admissions across routes"
    for where, n in Counter(bucket(s, headers_of(s)) for s in admitted).items():
        assert n <= QUOTA, f"{where} got {n} admissions"


# -- strategies ----------------------------------------------------------------------------------


def huge(pattern: bytes, size: int) -> bytes:
    return (pattern * (size // len(pattern) + 1))[:size]


# Header values: short bytes of any kind (not UTF-8 included), or a pattern repeated up to
# 1 MB, or thousands of comma-separated hops.
HOP_TEXT = st.sampled_from([
    "1.2.3.4", "10.0.0.2", "203.0.113.99", "::1", "[2001:db8::1]:80", "fe80::1%eth0",
    "::ffff:10.0.0.3", "unknown", "", " ", "_hidden", '"quoted', "for=1.2.3.4",
    "999.1.1.1", "1.2.3.4:99999", "[::1", "\u00e9\u00e9",
])  # fmt: skip
HOPS = st.builds(
    lambda hops, repeat: ",".join(hops * repeat).encode("utf-8"),
    st.lists(HOP_TEXT, min_size=1, max_size=4),
    st.sampled_from([1, 2, 1000, 5000]),
)
FORWARDED_PARTS = st.sampled_from([
    "for=1.2.3.4", 'for="[2001:db8::7]:4711"', "for=unknown", "for=_x;proto=https",
    "by=10.0.0.1;for=10.0.0.9", 'for="', "for=", ";;;", "proto=http",
    'for="203.0.113.7, 1.1.1.1"', "FOR=10.0.0.5", "for=[::1", "\u00e9=\u00e9",
])  # fmt: skip
FORWARDED = st.builds(
    lambda parts: ", ".join(parts).encode("utf-8"), st.lists(FORWARDED_PARTS, max_size=5)
)
VALUES = st.one_of(
    st.binary(max_size=40),
    st.builds(huge, st.binary(min_size=1, max_size=8), st.sampled_from([1000, 100_000, MB])),
    HOPS,
    FORWARDED,
)
# Header names are tokens (servers refuse anything else); values may be any bytes.
TOKEN = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
NAMES = st.sampled_from([
    b"x-forwarded-for", b"forwarded", b"x-real-ip", b"x-api-key", b"x-user", b"cookie",
    b"host",
]) | st.text(TOKEN, min_size=1, max_size=12).map(str.encode)  # fmt: skip
# What a caller would try first: addresses where a proxy would put them, API keys and users,
# absent, blank or varied.
ADDRESSES = st.ip_addresses().map(str)
PLAUSIBLE = st.one_of(
    st.tuples(
        st.just(b"x-forwarded-for"),
        st.lists(ADDRESSES, min_size=1, max_size=3).map(lambda hops: ", ".join(hops).encode()),
    ),
    st.tuples(
        st.just(b"forwarded"),
        ADDRESSES.map(lambda a: (f'for="[{a}]"' if ":" in a else f"for={a}").encode()),
    ),
    st.tuples(st.just(b"x-real-ip"), ADDRESSES.map(str.encode)),
    st.tuples(st.just(b"x-api-key"), st.sampled_from([b"", b" ", b"\t", b"k1", b"k2"])),
    st.tuples(st.just(b"x-user"), st.sampled_from([b"alice", b"bob", b"\xff", b""])),
)
SPOOFED = st.lists(PLAUSIBLE | st.tuples(NAMES, VALUES), max_size=6)
# Any text but "\n", which rule patterns do not match, and lone surrogates, which servers do
# not produce (undecodable bytes become U+FFFD): both have a test of their own below.
PATHS = st.text(st.characters(blacklist_characters="\n"), max_size=40) | st.sampled_from(
    ["", "%00", "..%2f..", "a" * 10_000, "\ufffd\ufffd", "\x00\r", "\u202e" * 100]
)
V6_LOW = st.integers(min_value=0, max_value=(1 << 64) - 1)


def v6_caller(low: int) -> str:
    return str(CALLER_V6.network_address + low)


CALLERS = ["v4", "v6", "nobody", "odd"]


@st.composite
def request(draw: st.DrawFn, who: str, route: str) -> Sent:
    """A request of caller ``who``: all it controls is drawn, directly or through a proxy."""
    path = draw(PATHS)
    spoofed: list[tuple[bytes, bytes]] = draw(SPOOFED)
    via_proxy = who in ("v4", "v6") and draw(st.booleans())
    # How the caller's address is spelled: by the server (its peer), or by the proxy.
    if who == "v4":
        address = draw(st.sampled_from([CALLER_V4, "::ffff:" + CALLER_V4]))
        hop = draw(st.sampled_from([address, f"{CALLER_V4}:4711", f"[::ffff:{CALLER_V4}]:80"]))
        identity = CALLER_V4
    elif who == "v6":
        address = v6_caller(draw(V6_LOW)) + draw(st.sampled_from(["", "%eth0", "%7"]))
        hop = draw(st.sampled_from([address, f"[{address}]:443"]))
        identity = str(CALLER_V6)
    else:
        address = hop = ODD_PEER
        identity = "unknown-client" if who == "nobody" else ODD_PEER
    if not via_proxy:
        client = None if who == "nobody" else (address, 50000)
        return Sent(route, path, client, spoofed, identity)
    # A trusted proxy: it merges what the caller sent into one header of each kind and
    # appends the address it saw. Everything before that address is the caller's.
    proxy = draw(st.sampled_from(["10.0.0.1", "10.20.30.40", "fd00::1"]))
    forwarded_for = [v for n, v in spoofed if n == b"x-forwarded-for"]
    forwarded = [v for n, v in spoofed if n == b"forwarded"]
    others = [(n, v) for n, v in spoofed if n not in (b"x-forwarded-for", b"forwarded")]
    element = f'for="{hop}"' if ":" in hop else f"for={hop}"
    headers = [
        *others,
        (b"x-forwarded-for", b",".join([*forwarded_for, hop.encode()])),
        (b"forwarded", b", ".join([*forwarded, element.encode()])),
    ]
    return Sent(route, path, (proxy, 443), headers, identity)


@st.composite
def attacks(draw: st.DrawFn) -> list[Sent]:
    """One caller's requests, more than its quota, varying everything it controls (mostly
    on one route), mixed with a few requests of other callers."""
    who = draw(st.sampled_from(CALLERS))
    focus = draw(st.sampled_from(ROUTES))
    routes = st.one_of(st.just(focus), st.sampled_from(ROUTES))
    count = draw(st.integers(min_value=QUOTA + 1, max_value=12))
    sent = [draw(request(who, draw(routes))) for _ in range(count)]
    others = st.sampled_from(CALLERS).flatmap(
        lambda other: st.sampled_from(ROUTES).flatmap(lambda route: request(other, route))
    )
    sent += draw(st.lists(others, max_size=4))
    return draw(st.permutations(sent))


# -- the properties ------------------------------------------------------------------------------


@HYPOTHESIS
@given(attacks())
def test_asgi_never_fails_and_never_lets_a_caller_escape(sent: list[Sent]) -> None:
    app = asgi_app(target())
    check(sent, [asgi_call(app, s) for s in sent], lambda s: s.headers)


@HYPOTHESIS
@given(attacks())
def test_wsgi_never_fails_and_never_lets_a_caller_escape(sent: list[Sent]) -> None:
    app = wsgi_app(target())
    check(sent, [wsgi_call(app, s) for s in sent], wsgi_headers)


# -- each kind of hostile input, labelled --------------------------------------------------------


def same_caller(**varying: Callable[[int], Any]) -> Callable[[int], Sent]:
    """The i-th request of one caller (203.0.113.7 unless varied), to /plain/."""

    def make(i: int) -> Sent:
        fields: dict[str, Any] = {
            "route": "plain", "path": "x", "client": (CALLER_V4, 50000), "headers": [],
            "who": CALLER_V4,
        }  # fmt: skip
        fields.update({name: vary(i) for name, vary in varying.items()})
        return Sent(**fields)

    return make


CASES = [
    pytest.param(
        same_caller(headers=lambda i: [(b"x-forwarded-for", f"198.51.100.{i}".encode())]),
        id="X-Forwarded-For from an untrusted peer is ignored",
    ),
    pytest.param(
        same_caller(headers=lambda i: [(b"forwarded", f"for=198.51.100.{i}".encode())]),
        id="Forwarded from an untrusted peer is ignored",
    ),
    pytest.param(
        same_caller(headers=lambda i: [(b"x-forwarded-for", huge(b"198.51.100.%d," % i, MB))]),
        id="1 MB X-Forwarded-For",
    ),
    pytest.param(
        same_caller(
            client=lambda i: ("10.0.0.1", 443),
            headers=lambda i: [(b"x-forwarded-for", b"10.9.9.9," * 5000 + b"203.0.113.7")],
        ),
        id="5000 trusted hops walked to the caller",
    ),
    pytest.param(
        same_caller(
            client=lambda i: ("10.0.0.1", 443),
            headers=lambda i: [(b"x-forwarded-for", f"198.51.100.{i}, 203.0.113.7".encode())],
        ),
        id="spoofed hops before the proxy's own are ignored",
    ),
    pytest.param(
        same_caller(
            client=lambda i: ("10.0.0.1", 443),
            headers=lambda i: [(b"x-forwarded-for", f"garbage{i},\xff, 203.0.113.7".encode())],
        ),
        id="garbage hops before the proxy's own are ignored",
    ),
    pytest.param(
        same_caller(client=lambda i: (f"2001:db8:1:2::{i + 1:x}%eth{i}", 50000)),
        id="IPv6 caller varying its /64 and zone",
    ),
    pytest.param(
        same_caller(client=lambda i: (CALLER_V4 if i % 2 else f"::ffff:{CALLER_V4}", 50000)),
        id="IPv4 and IPv4-mapped IPv6 are one caller",
    ),
    pytest.param(same_caller(client=lambda i: None), id="no client address: one shared bucket"),
    pytest.param(
        same_caller(
            route=lambda i: "api-key",
            headers=lambda i: [(b"x-api-key", [b"", b"  ", b"\t"][i % 3])] if i % 4 else [],
        ),
        id="API key absent, empty or blank: counted by address",
    ),
    pytest.param(
        same_caller(
            route=lambda i: "fragile",
            headers=lambda i: [(b"x-user", b"\xff\xfe%d" % i)] if i % 2 else [],
        ),
        id="a key function that raises: counted by address",
    ),
    pytest.param(
        same_caller(path=lambda i: ["\ufffd", "%00", "\u202e" * 500, "../" * 100][i % 4]),
        id="odd paths on one route",
    ),
]


@pytest.mark.parametrize("make", CASES)
@pytest.mark.parametrize("adapter", ["asgi", "wsgi"])
def test_hostile_input(adapter: str, make: Callable[[int], Sent]) -> None:
    sent = [make(i) for i in range(QUOTA + 3)]
    if adapter == "asgi":
        app: Any = asgi_app(target())
        statuses = [asgi_call(app, s) for s in sent]
    else:
        app = wsgi_app(target())
        statuses = [wsgi_call(app, s) for s in sent]
    assert statuses == [200] * QUOTA + [429] * 3


def test_a_lone_surrogate_in_a_path_never_fails_a_refusal() -> None:
    # Some ASGI servers hand undecodable path bytes on as surrogates: the 429's body, which
    # names the path, must still be encodable.
    app = asgi_app(target())
    sent = same_caller(path=lambda i: "\udcff")
    assert [asgi_call(app, sent(i)) for i in range(QUOTA + 1)] == [200] * QUOTA + [429]


@pytest.mark.parametrize("adapter", ["asgi", "wsgi"])
def test_a_newline_in_the_path_does_not_escape_a_rule(adapter: str) -> None:
    # "%0A" in a request line is decoded into the path; "*" must match it like anything else.
    limiter = Limiter(clock=FakeClock())
    rule = Rule("/api/*", "1/minute")
    sent = same_caller(path=lambda i: f"{i}\n")
    if adapter == "asgi":

        async def anything(scope: Any, receive: Any, send: Any) -> None:
            await PlainTextResponse("ok")(scope, receive, send)

        asgi = RateLimitMiddleware(anything, limiter=limiter, rules=[rule])
        statuses = [
            asgi_call(asgi, Sent("api", s.path, s.client, [], s.who)) for s in map(sent, range(2))
        ]
    else:
        wsgi = WSGIRateLimitMiddleware(hello, limiter=limiter, rules=[rule])
        statuses = [
            wsgi_call(wsgi, Sent("api", s.path, s.client, [], s.who)) for s in map(sent, range(2))
        ]
    assert statuses == [200, 429]


# -- memory under a flood of keys ----------------------------------------------------------------


@pytest.fixture
def small_memory() -> Iterator[Limiter]:
    limiter = Limiter(
        clock=FakeClock(), key=keys.header("X-API-Key"), storage_options={"max_keys": 50}
    )
    yield limiter


def test_a_flood_of_new_keys_cannot_evict_an_active_caller(small_memory: Limiter) -> None:
    # The memory storage holds at most max_keys keys, evicting the least recently used first.
    # A caller who keeps coming is never the least recently used: refused requests refresh
    # its key, so a flood of other keys cannot make the storage forget that it is refused.
    limiter = small_memory
    limit = limiter.limit(f"{QUOTA}/minute")
    target_ = Target(limiter, {"plain": limit(lambda request: None)})
    app = wsgi_app(target_)

    def call(api_key: bytes) -> int:
        return wsgi_call(app, Sent("plain", "", (CALLER_V4, 1), [(b"x-api-key", api_key)], ""))

    assert [call(b"mine") for _ in range(QUOTA + 1)] == [200] * QUOTA + [429]
    for flood in range(2_000):
        assert call(b"flood-%d" % flood) == 200
        if flood % 10 == 0:  # the refused caller keeps trying, and stays refused
            assert call(b"mine") == 429
    storage = limiter.backends.memory
    assert isinstance(storage, MemoryStorage)
    assert len(storage) <= 50 and storage.evictions > 1_900


def test_huge_identities_are_not_kept_in_memory() -> None:
    app = wsgi_app(target())
    for i in range(20):
        value = huge(b"%d-" % i, 100_000)
        sent = Sent("api-key", "", (CALLER_V4, 1), [(b"x-api-key", value)], "")
        assert wsgi_call(app, sent) in (200, 429)
    hasher = app.limiter.engine.context.hasher
    assert max(len(identity) for identity in hasher.cache) <= MAX_KEY_LENGTH


def test_invented_header_names_are_not_kept_for_ever() -> None:
    from ratemw import _environ

    app = wsgi_app(target())
    for i in range(5_000):
        headers = [(b"x-api-key", b"k"), (b"x-invented-%d" % i, b"1")]
        wsgi_call(app, Sent("api-key", "", (CALLER_V4, 1), headers, ""))
    assert len(_environ._HEADER_NAMES) <= 4096
