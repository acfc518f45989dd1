from __future__ import annotations

from typing import Any

import pytest
from starlette.requests import Request

from ratemw import ConfigurationError, keys
from ratemw.keys import UNKNOWN_CLIENT


def request(
    client: Any = ("203.0.113.7", 5000),
    headers: dict[str, str] | None = None,
    raw_headers: list[tuple[bytes, bytes]] | None = None,
) -> Request:
    encoded = (
        raw_headers
        if raw_headers is not None
        else [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()
        ]
    )
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "headers": encoded,
        "client": client,
        "query_string": b"",
    }
    return Request(scope)


PROXY = ["10.0.0.0/8"]


@pytest.mark.parametrize(
    ("trusted", "client", "headers", "expected"),
    [
        pytest.param([], ("203.0.113.7", 1), {}, "203.0.113.7", id="peer address"),
        pytest.param(
            [],
            ("203.0.113.7", 1),
            {"X-Forwarded-For": "1.2.3.4"},
            "203.0.113.7",
            id="ignore untrusted",
        ),
        pytest.param(
            PROXY, ("10.0.0.1", 1), {"X-Forwarded-For": "1.2.3.4"}, "1.2.3.4", id="trusted proxy"
        ),
        pytest.param(
            PROXY,
            ("10.0.0.1", 1),
            {"X-Forwarded-For": "6.6.6.6, 1.2.3.4, 10.0.0.2"},
            "1.2.3.4",
            id="rightmost untrusted hop wins",
        ),
        pytest.param(
            PROXY,
            ("10.0.0.1", 1),
            {"X-Forwarded-For": "10.0.0.3, 10.0.0.2"},
            "10.0.0.3",
            id="all hops trusted: leftmost",
        ),
        pytest.param(
            PROXY,
            ("10.0.0.1", 1),
            {"X-Forwarded-For": "1.2.3.4, garbage"},
            "10.0.0.1",
            id="garbage hop stops the walk",
        ),
        pytest.param(
            PROXY, ("10.0.0.1", 1), {"X-Forwarded-For": ""}, "10.0.0.1", id="empty header"
        ),
        pytest.param(PROXY, ("10.0.0.1", 1), {}, "10.0.0.1", id="no header"),
        pytest.param(
            PROXY,
            ("10.0.0.1", 1),
            {"X-Forwarded-For": "1.2.3.4:5678"},
            "1.2.3.4",
            id="ipv4 with port",
        ),
        pytest.param(
            PROXY,
            ("10.0.0.1", 1),
            {"X-Forwarded-For": "[2001:db8::1]:443"},
            "2001:db8::/64",
            id="bracketed ipv6 with port",
        ),
        pytest.param(
            PROXY,
            ("10.0.0.1", 1),
            {"X-Forwarded-For": "::ffff:1.2.3.4"},
            "1.2.3.4",
            id="mapped ipv4",
        ),
        pytest.param(
            [],
            ("2001:db8:aaaa:bbbb:1:2:3:4", 1),
            {},
            "2001:db8:aaaa:bbbb::/64",
            id="ipv6 grouped by /64",
        ),
        pytest.param([], ("fe80::1%eth0", 1), {}, "fe80::/64", id="ipv6 zone dropped"),
        pytest.param([], None, {}, UNKNOWN_CLIENT, id="no client address"),
        pytest.param([], ("", 0), {}, UNKNOWN_CLIENT, id="empty client address"),
        pytest.param(
            PROXY,
            ("10.0.0.1", 1),
            {"X-Forwarded-For": "1.2.3.4," * 5000 + "5.6.7.8"},
            "5.6.7.8",
            id="thousands of hops",
        ),
    ],
)
def test_client_ip(trusted: list[str], client: Any, headers: dict[str, str], expected: str) -> None:
    assert keys.client_ip(trusted_proxies=trusted)(request(client, headers)) == expected


def test_client_ip_of_a_scope_without_a_client_entry() -> None:
    # ASGI makes "client" optional: a server may leave it out altogether.
    scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
    assert keys.client_ip()(Request(scope)) == UNKNOWN_CLIENT
    assert keys.client_ip(trusted_proxies=["10.0.0.0/8"])(Request(scope)) == UNKNOWN_CLIENT


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("for=1.2.3.4", "1.2.3.4", id="simple"),
        pytest.param('for="[2001:db8::1]:80";proto=https', "2001:db8::/64", id="quoted ipv6"),
        pytest.param("for=6.6.6.6, for=1.2.3.4;by=10.0.0.2", "1.2.3.4", id="rightmost"),
        pytest.param("for=unknown", "10.0.0.1", id="obfuscated identifier"),
    ],
)
def test_forwarded_header(value: str, expected: str) -> None:
    key = keys.client_ip(trusted_proxies=PROXY, proxy_header="forwarded")
    assert key(request(("10.0.0.1", 1), {"Forwarded": value})) == expected


def test_forwarded_header_is_ignored_when_proxy_writes_x_forwarded_for() -> None:
    key = keys.client_ip(trusted_proxies=PROXY)
    assert key(request(("10.0.0.1", 1), {"Forwarded": "for=1.2.3.4"})) == "10.0.0.1"


def test_ipv6_prefix_is_configurable() -> None:
    key = keys.client_ip(ipv6_prefix=128)
    assert key(request(("2001:db8::1", 1))) == "2001:db8::1"


def test_non_latin_header_bytes_do_not_crash() -> None:
    key = keys.client_ip(trusted_proxies=PROXY)
    raw = [(b"x-forwarded-for", b"\xff\xfe\x00garbage")]
    assert key(request(("10.0.0.1", 1), raw_headers=raw)) == "10.0.0.1"


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"trusted_proxies": ["not-an-ip"]}, id="bad proxy"),
        pytest.param({"ipv6_prefix": 0}, id="prefix too small"),
        pytest.param({"ipv6_prefix": 129}, id="prefix too large"),
        pytest.param({"proxy_header": "x-real-ip"}, id="unknown proxy header"),
    ],
)
def test_client_ip_configuration_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError) as info:
        keys.client_ip(**kwargs)
    assert repr(next(iter(kwargs.values()))).strip("[]") in str(info.value)


def test_header_key_uses_the_header() -> None:
    key = keys.header("X-API-Key")
    assert key(request(headers={"x-api-key": "abc"})) == "h:abc"


def test_header_key_falls_back_to_the_client_address() -> None:
    key = keys.header("X-API-Key")
    assert key(request(("203.0.113.9", 1))) == "203.0.113.9"
    assert key(request(("203.0.113.9", 1), {"X-API-Key": "  "})) == "203.0.113.9"


def test_header_value_cannot_pose_as_an_address() -> None:
    key = keys.header("X-API-Key")
    spoof = key(request(("203.0.113.9", 1), {"X-API-Key": "198.51.100.1"}))
    assert spoof != key(request(("198.51.100.1", 1)))


@pytest.mark.parametrize("name", ["", "X API", "X:Key", 5])
def test_header_name_errors(name: Any) -> None:
    with pytest.raises(ConfigurationError, match="invalid header name"):
        keys.header(name)
