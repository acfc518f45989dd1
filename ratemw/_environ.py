"""The request key functions see under WSGI: an ASGI-style scope built from the environ.

Key functions, limit callables and hooks read ``request.scope`` the way they do under ASGI
(``"client"``, ``"headers"`` as lower-cased bytes pairs, ``"path"``, ...), so one key function
serves both worlds. The WSGI environ itself is in ``scope["wsgi.environ"]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ratemw._bounded import Bounded

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

__all__ = ["request_path", "route_path", "wsgi_scope"]

# Clients may invent header names: the cache must not grow for ever.
_HEADER_NAMES: Bounded[str, bytes] = Bounded(1024)


def _header_name(key: str) -> bytes:
    name = _HEADER_NAMES.get(key)
    if name is None:
        # "HTTP_X_API_KEY" -> b"x-api-key": the form ASGI servers put in scope["headers"].
        name = _HEADER_NAMES.put(key, key[5:].replace("_", "-").lower().encode("latin-1"))
    return name


def _headers(environ: WSGIEnvironment) -> list[tuple[bytes, bytes]]:
    headers: list[tuple[bytes, bytes]] = []
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            name = _header_name(key)
        elif key == "CONTENT_TYPE" or key == "CONTENT_LENGTH":
            if not value:
                continue
            name = key.replace("_", "-").lower().encode("latin-1")
        else:
            continue
        # WSGI values are latin-1 "native strings"; a server that breaks that must not 500.
        headers.append((name, value.encode("latin-1", "replace")))
    return headers


def _address(host: Any, port: Any) -> tuple[str, int] | None:
    if not host:
        return None
    try:
        return str(host), int(port or 0)
    except (TypeError, ValueError):
        return str(host), 0


def _decode(text: str) -> str:
    # WSGI carries the path's bytes as latin-1; ASGI servers decode them as UTF-8.
    return text if text.isascii() else text.encode("latin-1", "replace").decode("utf-8", "replace")


def request_path(environ: WSGIEnvironment) -> str:
    """The request path as an ASGI server would put it in ``scope["path"]``.

    ``SCRIPT_NAME`` and ``PATH_INFO`` joined and decoded as UTF-8, so a 429's ``instance`` and
    ``detail`` read the same under WSGI and ASGI.
    """
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    return (path if path.isascii() else _decode(path)) or "/"  # ASCII, nearly always


def route_path(environ: WSGIEnvironment) -> str:
    """The path the app routes by: ``PATH_INFO``, relative to ``SCRIPT_NAME`` (decoded)."""
    path = environ.get("PATH_INFO", "")
    return (path if path.isascii() else _decode(path)) or "/"


class _Scope(dict[str, Any]):
    """An ASGI scope whose less used keys (``headers``, ``query_string``, ...) are built from
    the environ when first read.

    The default key (the client address) reads none of them, so most requests never pay for
    them. Reads through ``[]``, ``get`` and ``in`` see them; a copy made before the first
    read does not. It is its own ``scope``: the built-in key functions, which read only
    ``request.scope``, take it as the request.
    """

    __slots__ = ()

    @property
    def scope(self) -> _Scope:
        return self

    def __missing__(self, key: str) -> Any:
        build = _LAZY.get(key)
        if build is None:
            raise KeyError(key)
        value = self[key] = build(self["wsgi.environ"])
        return value

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key: object) -> bool:
        return key in _LAZY or dict.__contains__(self, key)


def _server(environ: WSGIEnvironment) -> tuple[str, int] | None:
    return _address(environ.get("SERVER_NAME"), environ.get("SERVER_PORT"))


# Built on first read: key functions rarely look past the client address.
_LAZY: dict[str, Callable[[WSGIEnvironment], Any]] = {
    "headers": _headers,
    "server": _server,
    "http_version": lambda environ: environ.get("SERVER_PROTOCOL", "HTTP/1.1").rpartition("/")[2],
    "scheme": lambda environ: environ.get("wsgi.url_scheme", "http"),
    "root_path": lambda environ: _decode(environ.get("SCRIPT_NAME", "")),
    "query_string": lambda environ: environ.get("QUERY_STRING", "").encode("latin-1", "replace"),
}


def wsgi_scope(environ: WSGIEnvironment, method: str, path: str) -> dict[str, Any]:
    """An ASGI-style HTTP scope for a WSGI request, so key functions read it unchanged.

    The environ itself is kept under ``scope["wsgi.environ"]``.

    Example::

        request = Request(wsgi_scope(environ, "GET", request_path(environ)))
        keys.client_ip()(request)   # reads scope["client"], from REMOTE_ADDR
    """
    host, port = environ.get("REMOTE_ADDR"), environ.get("REMOTE_PORT") or 0
    if type(port) is str and len(port) <= 5 and port.isdecimal():
        port = int(port)
    # What servers send (the port as text, a number, or not at all) needs no closer look.
    client = (
        (host, port) if type(host) is str and host and type(port) is int else _address(host, port)
    )
    return _Scope(
        {
            "type": "http",
            "method": method,
            "path": path,
            "client": client,
            "wsgi.environ": environ,
        }
    )
