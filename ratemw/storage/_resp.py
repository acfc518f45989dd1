"""Just enough RESP2 for the storage's fast lanes: packing commands, parsing replies.

Shared by the async (``_pipe.py``) and sync (``_sync_pipe.py``) script connections, with what
both need to open one: the TLS context and the handshake.

**Call tokens.** Every script call ends with one more argument, a token the script echoes as
the last element of its reply (``acquire.lua``: ``ARGV[#KEYS + 2]``). A reply is matched to
its call by that token, not only by its place in the stream: a connection whose replies no
longer match what was sent (a stray reply, a bug, a middlebox) is closed, and no call is
ever handed another call's answer. A packed script command (``evalsha_command``) leaves the
token out, so that one packed command can be kept and sent many times, each time with a
fresh token appended (``token_arg``): 16 digits, so every token packs to the same length.
"""

from __future__ import annotations

import itertools
import ssl
from collections.abc import Sequence
from typing import Any

import redis
from redis.exceptions import AuthenticationError, NoScriptError, ResponseError

_hiredis: Any
try:  # the C parser redis-py uses too, when installed
    import hiredis as _hiredis
except ImportError:  # pragma: no cover - ReplyReader is tested on its own
    _hiredis = None


class ReplyReader:
    """A RESP2 reply parser with ``hiredis.Reader``'s interface: ``feed`` bytes, ``gets``.

    ``gets`` returns the next whole reply, or ``False`` when more bytes are needed. Error
    replies are returned (not raised) as ``ResponseError`` instances; bulk strings are bytes.
    Used when hiredis is not installed.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def has_data(self) -> bool:
        """Whether bytes are left over that no whole reply returned so far accounted for."""
        return bool(self._buffer)

    def gets(self) -> Any:
        try:
            parsed = self._parse(0)
        except ValueError as exc:  # a length or an integer that is not one
            raise redis.ConnectionError(f"Protocol error: {exc}") from None
        if parsed is None:
            return False
        reply, end = parsed
        del self._buffer[:end]
        return reply

    def _parse(self, start: int) -> tuple[Any, int] | None:
        buffer = self._buffer
        end = buffer.find(b"\r\n", start)
        if end < 0:
            return None
        kind, line, after = buffer[start : start + 1], bytes(buffer[start + 1 : end]), end + 2
        if kind == b":":
            return int(line), after
        if kind == b"+":
            return line, after
        if kind == b"-":
            return ResponseError(line.decode("utf-8", "replace")), after
        if kind == b"$":
            size = int(line)
            if size < 0:
                return None, after
            if len(buffer) < after + size + 2:
                return None
            return bytes(buffer[after : after + size]), after + size + 2
        if kind == b"*":
            return self._parse_array(int(line), after)
        raise redis.ConnectionError(f"Protocol error: unexpected reply type {bytes(kind)!r}")

    def _parse_array(self, count: int, position: int) -> tuple[Any, int] | None:
        if count < 0:
            return None, position
        items = []
        for _ in range(count):
            parsed = self._parse(position)
            if parsed is None:
                return None
            item, position = parsed
            items.append(item)
        return items, position


def new_reader() -> Any:
    """hiredis's reader where it is installed, ours otherwise."""
    if _hiredis is not None:
        return _hiredis.Reader(replyError=ResponseError, protocolError=redis.ConnectionError)
    return ReplyReader()  # pragma: no cover


def pack(args: Sequence[str | bytes | int]) -> bytes:
    """A command in RESP2: an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode("utf-8", "surrogateescape")
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def pack_script(head: str, count: int, keys: Sequence[str], args: Sequence[str]) -> bytes:
    """``head`` (the command and its first arguments, packed) + ``keys`` + ``args``, packed.

    ``count``: how many arguments the command has besides the number of keys, the keys and
    ``args``: those of ``head``, and any the caller appends (a call token).

    The common case, ASCII text, is packed as one string and encoded once: this runs on
    every request.
    """
    parts = [f"*{count + len(keys) + len(args) + 1}\r\n{head}${len(str(len(keys)))}\r\n"
             f"{len(keys)}\r\n"]
    for arg in (*keys, *args):
        parts.append(f"${len(arg)}\r\n{arg}\r\n")
    text = "".join(parts)
    if text.isascii():
        return text.encode("ascii")
    # Lengths count bytes: redo it the long way.
    head_parts = head.encode("utf-8", "surrogateescape")
    tail = pack([len(keys), *keys, *args])
    first, _, rest = tail.partition(b"\r\n")
    return b"*%d\r\n%s%s" % (count + int(first[1:]), head_parts, rest)


def packed_head(*args: str) -> str:
    """The leading arguments of a command, packed (for ``pack_script``)."""
    return "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)


_EVALSHA_HEADS: dict[str, str] = {}  # one per script SHA: a handful at most

# Tokens have 16 digits (10^15 up to 2^53 - 1, what the script counts exactly).
TOKEN_BASE = 10**15


def new_tokens() -> itertools.count[int]:
    """A source of call tokens (``next()`` on it is atomic: threads may share one)."""
    return itertools.count(TOKEN_BASE)


def token_arg(token: int) -> bytes:
    """The last argument of a script call: its token, packed."""
    return b"$16\r\n%d\r\n" % token


def answers(reply: Any, token: int) -> bool:
    """Whether ``reply`` is the answer of the script call that carried ``token``."""
    return type(reply) is list and len(reply) > 0 and reply[-1] == token


def evalsha_command(sha: str, keys: Sequence[str], args: Sequence[str]) -> bytes:
    """``EVALSHA sha numkeys keys... args... token``, packed but for the token (``token_arg``).
    """
    head = _EVALSHA_HEADS.get(sha)
    if head is None:
        head = _EVALSHA_HEADS[sha] = packed_head("EVALSHA", sha)
    return pack_script(head, 3, keys, args)


def eval_command(text: str, keys: Sequence[str], args: Sequence[str]) -> bytes:
    """``EVAL text numkeys keys... args... token``, packed but for the token: what loads a
    script the server lost."""
    return pack_script(packed_head("EVAL", text), 3, keys, args)


def lost_script(reply: Any) -> bool:
    """Whether an ``EVALSHA`` was answered ``NOSCRIPT`` (a restart, ``SCRIPT FLUSH``)."""
    return isinstance(reply, ResponseError) and str(reply).startswith("NOSCRIPT")


def script_result(reply: Any) -> Any:
    """A script call's reply, or its error reply raised as redis-py would raise it."""
    if isinstance(reply, ResponseError):
        raise NoScriptError(str(reply)) if lost_script(reply) else reply
    return reply


def tls_context(options: dict[str, Any]) -> ssl.SSLContext:
    """An SSL context from the storage's ``ssl_*`` options (redis-py's defaults)."""
    context = ssl.create_default_context()
    cert_reqs = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL}.get(
        options.get("ssl_cert_reqs", "required"), ssl.CERT_REQUIRED
    )
    context.check_hostname = cert_reqs != ssl.CERT_NONE and options.get(
        "ssl_check_hostname", True
    )
    context.verify_mode = cert_reqs
    if options.get("ssl_certfile") or options.get("ssl_keyfile"):
        context.load_cert_chain(options.get("ssl_certfile", ""), options.get("ssl_keyfile"))
    if options.get("ssl_ca_certs"):
        context.load_verify_locations(cafile=options["ssl_ca_certs"])
    return context


def handshake(options: dict[str, Any]) -> list[list[str]]:
    commands = []
    if options.get("password") is not None:
        username = options.get("username")
        credentials = [username, options["password"]] if username else [options["password"]]
        commands.append(["AUTH", *credentials])
    if options.get("db"):
        commands.append(["SELECT", str(options["db"])])
    return commands




def check_handshake(replies: Sequence[Any]) -> None:
    """Raise what the server said, if it refused the handshake."""
    for reply in replies:
        if isinstance(reply, ResponseError):
            text = str(reply)
            if "WRONGPASS" in text or "NOAUTH" in text or "invalid password" in text:
                raise AuthenticationError(text)
            raise redis.ConnectionError(f"Redis refused the connection set-up: {text}")


def where(address: tuple[str, int] | str) -> str:
    """``host:port``, or the socket path (for messages)."""
    return address if isinstance(address, str) else f"{address[0]}:{address[1]}"


class Endpoint:
    """What both pipes (blocking and async) take from the storage's options: the address,
    the timeouts, the handshake to send on a new connection, and the TLS context."""

    def __init__(self, address: tuple[str, int] | str, options: dict[str, Any], tls: bool) -> None:
        self.address = address
        self.where = where(address)
        self.timeout: float = options["socket_timeout"]
        self.connect_timeout: float = options["socket_connect_timeout"]
        self._handshake = [pack(command) for command in handshake(options)]
        self._tls = tls_context(options) if tls else None
