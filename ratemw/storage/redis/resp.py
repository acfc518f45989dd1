"""Just enough RESP2 for ratemw's own script connections: packing commands, parsing replies,
call tokens.

Shared by the sync (``pipe.py``) and async (``apipe.py``) pipes, through ``endpoint.py``.

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
from collections.abc import Sequence
from typing import Any

import redis
from redis.exceptions import NoScriptError, ResponseError

from ratemw._bounded import Bounded

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
    parts = [
        f"*{count + len(keys) + len(args) + 1}\r\n{head}${len(str(len(keys)))}\r\n{len(keys)}\r\n"
    ]
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


# One per script SHA: a handful at most (the storage's script, any a test sends).
_EVALSHA_HEADS: Bounded[str, str] = Bounded(64)

# Tokens have 16 digits (10^15 up to 2^53 - 1, what the script counts exactly).
TOKEN_BASE = 10**15


def new_tokens() -> itertools.count[int]:
    """A source of call tokens (``next()`` on it is atomic: threads may share one)."""
    return itertools.count(TOKEN_BASE)


TOKEN_ARG = b"$16\r\n%d\r\n"  # a token, packed: ``TOKEN_ARG % token``


def token_arg(token: int) -> bytes:
    """The last argument of a script call: its token, packed."""
    return TOKEN_ARG % token


def answers(reply: Any, token: int) -> bool:
    """Whether ``reply`` is the answer of the script call that carried ``token``."""
    return type(reply) is list and len(reply) > 0 and reply[-1] == token


def evalsha_command(sha: str, keys: Sequence[str], args: Sequence[str]) -> bytes:
    """``EVALSHA sha numkeys keys... args...``, packed but for the token (``token_arg``)."""
    head = _EVALSHA_HEADS.get(sha) or _EVALSHA_HEADS.put(sha, packed_head("EVALSHA", sha))
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
