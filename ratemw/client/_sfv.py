"""A parser for HTTP Structured Field Values (RFC 9651): Lists, Dictionaries and Items.

Only parsing, and only what a recipient needs: a field value in, plain Python values out, or
``None`` when the value is not valid. RFC 9651 (section 4.2) asks recipients to ignore a
field that fails to parse as a whole, rather than to guess at its parts, so there is no
partial result. Inner Lists are parsed (so that a List holding one is read correctly) and
returned as Python lists.

Bare items become: Integer -> ``int``, Decimal -> ``Decimal``, String -> ``str``, Token ->
``Token`` (a ``str``), Byte Sequence -> ``bytes``, Boolean -> ``bool``, Date -> ``Date`` (an
``int`` of epoch seconds), Display String -> ``DisplayString`` (a ``str``).
"""

from __future__ import annotations

import base64
import binascii
import string
from decimal import Decimal
from typing import TypeAlias

__all__ = [
    "Date",
    "DisplayString",
    "Member",
    "Token",
    "parse_dictionary",
    "parse_item",
    "parse_list",
]


class Token(str):
    """An sf-token: an unquoted word such as ``foo`` or ``*/*``."""

    __slots__ = ()


class DisplayString(str):
    """An sf-displaystring: Unicode text sent as ``%"...%xx..."``."""

    __slots__ = ()


class Date(int):
    """An sf-date: ``@`` and integer seconds since the epoch."""

    __slots__ = ()


BareItem: TypeAlias = int | Decimal | str | bytes | bool
Parameters: TypeAlias = dict[str, BareItem]
Item: TypeAlias = tuple[BareItem, Parameters]
InnerList: TypeAlias = tuple[list[Item], Parameters]
Member: TypeAlias = Item | InnerList

_DIGITS = frozenset(string.digits)
_ALPHA = frozenset(string.ascii_letters)
_LCALPHA = frozenset(string.ascii_lowercase)
_KEY_FIRST = _LCALPHA | {"*"}
_KEY_CHARS = _LCALPHA | _DIGITS | frozenset("_-.*")
_TCHAR = _ALPHA | _DIGITS | frozenset("!#$%&'*+-.^_`|~")
_TOKEN_CHARS = _TCHAR | frozenset(":/")
_BASE64 = frozenset(string.ascii_letters + string.digits + "+/=")
_LOWER_HEX = frozenset("0123456789abcdef")


class _Invalid(Exception):
    """The field value is not valid: the whole field is to be ignored."""


class _Reader:
    """The input and a position in it; the parsing algorithms of RFC 9651 section 4.2."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    # -- characters ------------------------------------------------------------------------

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def take(self) -> str:
        char = self.peek()
        if not char:
            raise _Invalid("unexpected end")
        self.pos += 1
        return char

    def done(self) -> bool:
        return self.pos >= len(self.text)

    def skip(self, chars: str) -> None:
        while self.peek() and self.peek() in chars:
            self.pos += 1

    # -- top-level types -------------------------------------------------------------------

    def list_(self) -> list[Member]:
        members: list[Member] = []
        while not self.done():
            members.append(self.item_or_inner_list())
            self.skip(" \t")
            if self.done():
                return members
            if self.take() != ",":
                raise _Invalid("expected a comma")
            self.skip(" \t")
            if self.done():
                raise _Invalid("trailing comma")
        return members

    def dictionary(self) -> dict[str, Member]:
        members: dict[str, Member] = {}
        while not self.done():
            key = self.key()
            if self.peek() == "=":
                self.pos += 1
                members[key] = self.item_or_inner_list()
            else:
                members[key] = (True, self.parameters())
            self.skip(" \t")
            if self.done():
                return members
            if self.take() != ",":
                raise _Invalid("expected a comma")
            self.skip(" \t")
            if self.done():
                raise _Invalid("trailing comma")
        return members

    def item_or_inner_list(self) -> Member:
        if self.peek() == "(":
            return self.inner_list()
        return self.item()

    def inner_list(self) -> InnerList:
        self.take()  # "("
        items: list[Item] = []
        while not self.done():
            self.skip(" ")
            if self.peek() == ")":
                self.pos += 1
                return items, self.parameters()
            items.append(self.item())
            if self.peek() not in (" ", ")"):
                raise _Invalid("expected a space or ')' in an inner list")
        raise _Invalid("unterminated inner list")

    def item(self) -> Item:
        value = self.bare_item()
        return value, self.parameters()

    def parameters(self) -> Parameters:
        params: Parameters = {}
        while self.peek() == ";":
            self.pos += 1
            self.skip(" ")
            key = self.key()
            value: BareItem = True
            if self.peek() == "=":
                self.pos += 1
                value = self.bare_item()
            params[key] = value
        return params

    def key(self) -> str:
        if not self.peek() or self.peek() not in _KEY_FIRST:
            raise _Invalid("a key starts with a lower-case letter or '*'")
        start = self.pos
        while self.peek() and self.peek() in _KEY_CHARS:
            self.pos += 1
        return self.text[start : self.pos]

    # -- bare items ------------------------------------------------------------------------

    def bare_item(self) -> BareItem:
        char = self.peek()
        if char == "-" or (char and char in _DIGITS):
            return self.number()
        if char == '"':
            return self.string()
        if char == "*" or (char and char in _ALPHA):
            return self.token()
        if char == ":":
            return self.byte_sequence()
        if char == "?":
            return self.boolean()
        if char == "@":
            return self.date()
        if char == "%":
            return self.display_string()
        raise _Invalid("not the start of an item")

    def number(self) -> int | Decimal:
        sign = 1
        if self.peek() == "-":
            self.pos += 1
            sign = -1
        if not self.peek() or self.peek() not in _DIGITS:
            raise _Invalid("a number starts with a digit")
        digits = ""
        is_decimal = False
        while self.peek():
            char = self.peek()
            if char in _DIGITS:
                digits += char
            elif char == "." and not is_decimal:
                if len(digits) > 12:
                    raise _Invalid("too many digits before the decimal point")
                digits += char
                is_decimal = True
            else:
                break
            self.pos += 1
            if len(digits) > (16 if is_decimal else 15):
                raise _Invalid("too many digits")
        if not is_decimal:
            return sign * int(digits)
        if digits.endswith(".") or len(digits.partition(".")[2]) > 3:
            raise _Invalid("a decimal has one to three fractional digits")
        return sign * Decimal(digits)

    def string(self) -> str:
        self.take()  # '"'
        chars: list[str] = []
        while True:
            char = self.take()
            if char == "\\":
                escaped = self.take()
                if escaped not in ('"', "\\"):
                    raise _Invalid("only '\"' and '\\' may be escaped")
                chars.append(escaped)
            elif char == '"':
                return "".join(chars)
            elif not " " <= char <= "~":
                raise _Invalid("a string holds printable ASCII only")
            else:
                chars.append(char)

    def token(self) -> Token:
        start = self.pos
        self.pos += 1
        while self.peek() and self.peek() in _TOKEN_CHARS:
            self.pos += 1
        return Token(self.text[start : self.pos])

    def byte_sequence(self) -> bytes:
        self.take()  # ":"
        end = self.text.find(":", self.pos)
        if end < 0:
            raise _Invalid("unterminated byte sequence")
        encoded = self.text[self.pos : end]
        self.pos = end + 1
        if not set(encoded) <= _BASE64:
            raise _Invalid("a byte sequence is base64")
        # RFC 9651: parsers should not fail when '=' padding is missing.
        unpadded = encoded.rstrip("=")
        try:
            return base64.b64decode(unpadded + "=" * (-len(unpadded) % 4), validate=True)
        except binascii.Error as error:
            raise _Invalid("a byte sequence is base64") from error

    def boolean(self) -> bool:
        self.take()  # "?"
        char = self.take()
        if char not in ("0", "1"):
            raise _Invalid("a boolean is ?0 or ?1")
        return char == "1"

    def date(self) -> Date:
        self.take()  # "@"
        value = self.number()
        if not isinstance(value, int):
            raise _Invalid("a date is an integer")
        return Date(value)

    def display_string(self) -> DisplayString:
        self.take()  # "%"
        if self.take() != '"':
            raise _Invalid('a display string starts with %"')
        octets = bytearray()
        while True:
            char = self.take()
            if not " " <= char <= "~":
                raise _Invalid("a display string holds printable ASCII only")
            if char == "%":
                high, low = self.take(), self.take()
                if high not in _LOWER_HEX or low not in _LOWER_HEX:
                    raise _Invalid("a display string escapes with lower-case hex")
                octets.append(int(high + low, 16))
            elif char == '"':
                try:
                    return DisplayString(octets.decode("utf-8"))
                except UnicodeDecodeError as error:
                    raise _Invalid("a display string is UTF-8") from error
            else:
                octets.append(ord(char))


def _reader(text: str) -> _Reader | None:
    if not text.isascii():
        return None
    reader = _Reader(text)
    reader.skip(" ")
    return reader


def _finish(reader: _Reader) -> bool:
    reader.skip(" ")
    return reader.done()


def parse_list(text: str) -> list[Member] | None:
    """``text`` as an sf-list: its members, ``[]`` for an empty value, ``None`` if invalid."""
    reader = _reader(text)
    if reader is None:
        return None
    try:
        members = reader.list_()
    except _Invalid:
        return None
    return members if _finish(reader) else None


def parse_dictionary(text: str) -> dict[str, Member] | None:
    """``text`` as an sf-dictionary, or ``None`` if invalid (a repeated key keeps the last)."""
    reader = _reader(text)
    if reader is None:
        return None
    try:
        members = reader.dictionary()
    except _Invalid:
        return None
    return members if _finish(reader) else None


def parse_item(text: str) -> Item | None:
    """``text`` as an sf-item, or ``None`` if invalid (an empty value is invalid)."""
    reader = _reader(text)
    if reader is None:
        return None
    try:
        item = reader.item()
    except _Invalid:
        return None
    return item if _finish(reader) else None
