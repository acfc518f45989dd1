"""Who is counted: key functions.

A key function takes the request (a Starlette ``Request``, or ``HTTPConnection`` for a
WebSocket) and returns a string identifying the caller; it may be sync or async. Whatever it
returns is length-capped and hashed before it reaches storage.

Example::

    from ratemw import Limiter, keys

    limiter = Limiter(key=keys.client_ip(trusted_proxies=["10.0.0.0/8"]))
    per_api_key = keys.header("X-API-Key")   # falls back to the client address
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from ratemw._bounded import Bounded
from ratemw.errors import ConfigurationError

__all__ = ["client_ip", "header"]

UNKNOWN_CLIENT = "unknown-client"
_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_PROXY_HEADERS = ("x-forwarded-for", "forwarded")
_CACHE_SIZE = 4096


def _parse_ip(text: str) -> _IPAddress | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[2001:db8::1]:4711" (Forwarded may quote it)
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # "192.0.2.1:4711"
        text = text.split(":", 1)[0]
    text = text.split("%", 1)[0]  # an IPv6 zone names the receiving interface, not a client
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _forwarded_for(value: str) -> list[str]:
    """The ``for=`` values of a ``Forwarded`` header (RFC 7239), left to right."""
    hops: list[str] = []
    for element in value.split(","):
        found = ""
        for pair in element.split(";"):
            name, _, val = pair.partition("=")
            if name.strip().lower() == "for":
                found = val.strip().strip('"')
        hops.append(found)
    return hops


class client_ip:
    """Key requests by client address.

    The peer address of the connection is used, unless the peer is one of
    ``trusted_proxies``: then ``proxy_header`` (``X-Forwarded-For`` by default, or
    ``Forwarded``) is walked from right to left, skipping trusted proxies, and the first
    untrusted hop is the client. A header from an untrusted peer is ignored, so a caller
    cannot pick its own bucket. IPv6 clients are grouped by ``ipv6_prefix`` (a /64 is one
    subscriber on most networks). A request with no client address is counted under one
    shared ``"unknown-client"`` key.

    Args:
        trusted_proxies: addresses or networks (``"10.0.0.0/8"``) of your own proxies.
        ipv6_prefix: prefix length IPv6 addresses are grouped by (1-128; 128 = no grouping).
        proxy_header: ``"x-forwarded-for"`` or ``"forwarded"``: the one your proxy writes.
    """

    #: Reads only ``request.scope``: the middleware may pass a bare scope holder.

    def __init__(
        self,
        trusted_proxies: Iterable[str] = (),
        ipv6_prefix: int = 64,
        proxy_header: str = "x-forwarded-for",
    ) -> None:
        if isinstance(trusted_proxies, str):
            trusted_proxies = [trusted_proxies]
        networks: list[_IPNetwork] = []
        for proxy in trusted_proxies:
            try:
                networks.append(ipaddress.ip_network(str(proxy).strip(), strict=False))
            except ValueError:
                raise ConfigurationError(
                    f"invalid trusted proxy {proxy!r}: expected an IP address or network "
                    "such as '10.0.0.1' or '10.0.0.0/8'"
                ) from None
        if (
            isinstance(ipv6_prefix, bool)
            or not isinstance(ipv6_prefix, int)
            or not (1 <= ipv6_prefix <= 128)
        ):
            raise ConfigurationError(
                f"invalid ipv6_prefix {ipv6_prefix!r}: expected an integer from 1 to 128"
            )
        header = str(proxy_header).lower()
        if header not in _PROXY_HEADERS:
            raise ConfigurationError(
                f"invalid proxy_header {proxy_header!r}: expected 'x-forwarded-for' or 'forwarded'"
            )
        self.trusted: tuple[_IPNetwork, ...] = tuple(networks)
        self.ipv6_prefix = ipv6_prefix
        self.proxy_header = header.encode("latin-1")
        self._normalized: Bounded[str, str] = Bounded(_CACHE_SIZE)

    def __repr__(self) -> str:
        proxies = [str(n) for n in self.trusted]
        return f"keys.client_ip(trusted_proxies={proxies!r}, ipv6_prefix={self.ipv6_prefix})"

    def _is_trusted(self, address: _IPAddress) -> bool:
        return any(address in network for network in self.trusted)

    def _group(self, address: _IPAddress) -> str:
        if isinstance(address, ipaddress.IPv6Address) and self.ipv6_prefix < 128:
            network = ipaddress.IPv6Network((address, self.ipv6_prefix), strict=False)
            return str(network)
        return str(address)

    def _normalize_peer(self, host: str) -> str:
        cached = self._normalized.get(host)
        if cached is not None:
            return cached
        address = _parse_ip(host)
        # A peer that is not an IP (a Unix socket path, a test client's name) is its own key.
        normalized = self._group(address) if address is not None else host
        self._normalized.put(host, normalized)
        return normalized

    def __call__(self, request: Any) -> str:
        scope = request.scope
        try:
            client = scope["client"]  # a WSGI request's scope answers [] at C speed, not get()
        except KeyError:
            return UNKNOWN_CLIENT
        if not client or not client[0]:
            return UNKNOWN_CLIENT
        host = str(client[0])
        if not self.trusted:
            # Fast path: IPv4 peers need no parsing; only IPv6 needs grouping.
            return host if ":" not in host else self._normalize_peer(host)
        peer = _parse_ip(host)
        if peer is None or not self._is_trusted(peer):
            return self._normalize_peer(host)
        return self._from_proxy_header(scope, peer)

    def from_scope(self, scope: Any) -> str:
        """The key of an ASGI scope (or a WSGI request's equivalent)."""
        return self(ScopeHolder(scope))

    def _from_proxy_header(self, scope: Any, peer: _IPAddress) -> str:
        values = [
            value.decode("latin-1")
            for name, value in scope.get("headers", ())
            if name.lower() == self.proxy_header
        ]
        joined = ",".join(values)
        hops = _forwarded_for(joined) if self.proxy_header == b"forwarded" else joined.split(",")
        client = peer
        for hop in reversed(hops):
            address = _parse_ip(hop)
            if address is None:
                # Garbage where a trusted proxy should have written an address: stop at the
                # last address we could trust rather than let the caller choose a key.
                break
            client = address
            if not self._is_trusted(address):
                break
        return self._group(client)


class ScopeHolder:
    """Stands in for a request where only its scope is read (the built-in key functions)."""

    __slots__ = ("scope",)

    def __init__(self, scope: Any) -> None:
        self.scope = scope


class header:
    """Key requests by a header's value, such as an API key.

    When the header is absent or empty the request is keyed by ``fallback`` (the client
    address by default), so leaving the header out never escapes a limit. Values from the
    two sources never collide: header values are prefixed before hashing.

    Args:
        name: the header name (case-insensitive).
        fallback: the key function used when the header is missing.
    """

    def __init__(self, name: str, fallback: Any = None) -> None:
        if not isinstance(name, str) or not name.strip() or any(c in name for c in " :\r\n"):
            raise ConfigurationError(f"invalid header name {name!r}: expected e.g. 'X-API-Key'")
        self.name = name.strip().lower()
        self._raw = self.name.encode("latin-1")
        self.fallback = fallback if fallback is not None else client_ip()

    def __repr__(self) -> str:
        return f"keys.header({self.name!r})"

    def __call__(self, request: Any) -> Any:
        for name, value in request.scope.get("headers", ()):
            if name.lower() == self._raw and value.strip():
                return "h:" + value.strip().decode("latin-1")
        return self.fallback(request)
