"""``acquire.lua``: the script, the arguments of a call and its answer.

Pure functions: no I/O. The storages send what these build (through their transport) and
hand back what Redis said, after checking it: a reply that does not fit its call raises
``UnfitReply`` (``faults.py`` tells the call's faults from outages).

The script knows the built-in strategies by their tags (``fw``, ``mw``, ``sw``, ``gc``,
``cc``), the strategies' own ``tag`` attributes (``ratemw.storage.strategies.tag_of``): one
table, which ``tests/storage/test_equivalence.py`` checks the script against.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import resources
from typing import Any, NamedTuple

import ratemw.storage.base as base
from ratemw.storage.base import CONCURRENCY, Batch, Hit, Usage
from ratemw.storage.redis.resp import evalsha_command
from ratemw.storage.strategies import STRATEGY_IMPLEMENTATIONS, tag_of

__all__ = [
    "SCRIPT",
    "SCRIPT_SHA",
    "STRATEGIES",
    "Script",
    "UnfitReply",
    "acquire_call",
    "compose_script",
    "parse_reply",
    "script_args",
    "serves",
]

SCRIPT = resources.files(__package__).joinpath("acquire.lua").read_text("utf-8")
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode("utf-8")).hexdigest()
STRATEGIES = frozenset((*base.STRATEGIES, CONCURRENCY))  # what acquire.lua counts by itself
_EXTENSIONS = "-- ratemw: strategies of your own are inserted here --"


class Script(NamedTuple):
    """A script's text and its SHA1 (what ``EVALSHA`` names it by)."""

    text: str
    sha: str


def compose_script() -> Script:
    """``acquire.lua`` with the Lua of every registered strategy that has some, and its SHA1.

    A strategy of your own serves Redis when it has a ``lua`` attribute: Lua source that
    sets ``checks[tag]``, ``consumes[tag]`` and ``refunds[tag]``, its tag being
    ``tag_of(name)`` (its ``tag`` attribute, else its name; see docs/strategies.md).
    """
    fragments = [
        lua
        for name, strategy in sorted(STRATEGY_IMPLEMENTATIONS.items())
        if name not in STRATEGIES and isinstance(lua := getattr(strategy, "lua", None), str)
    ]
    if not fragments:
        return Script(SCRIPT, SCRIPT_SHA)
    script = SCRIPT.replace(_EXTENSIONS, "\n".join([_EXTENSIONS, *fragments]), 1)
    return Script(script, hashlib.sha1(script.encode("utf-8")).hexdigest())


def serves(strategy: str) -> bool:
    """Whether the Redis storage can count ``strategy`` (built in, or registered with Lua)."""
    if strategy in STRATEGIES:
        return True
    return isinstance(getattr(STRATEGY_IMPLEMENTATIONS.get(strategy), "lua", None), str)


def script_args(
    hits: Sequence[Hit], mode: str, stamp: int = 0, clock: int = 0
) -> tuple[list[str], list[Any]]:
    """``KEYS`` and ``ARGV`` of ``acquire.lua`` for ``hits``.

    ``mode``: ``"acquire"``, ``"peek"``, ``"refund"`` or ``"undo"``. ``clock``: the time (ms)
    to decide on instead of the server's (0: the server's ``TIME``). ``stamp``: for a refund
    or an undo, the time of the acquire whose units are handed back.

    A strategy the script does not know is refused by the script itself, naming it
    (``StorageCallError``), like every other argument it cannot count.
    """
    keys = [hit.key for hit in hits]
    if mode == "acquire" or mode == "peek":
        head = f"{mode} {clock}"
    else:
        head = f"{mode} {stamp} {clock}" if clock else f"{mode} {stamp}"
    args: list[Any] = [head]
    for hit in hits:
        extra = hit.token if hit.strategy == CONCURRENCY else hit.burst
        args.append(
            f"{tag_of(hit.strategy)} {hit.amount} {hit.window_ms} {hit.cost} "
            f"{int(hit.enforce)} {extra}"
        )
    return keys, args


def acquire_call(hits: Sequence[Hit], sha: str) -> tuple[list[str], list[Any], bytes | None]:
    """An acquire's ``KEYS``, ``ARGV`` and packed ``EVALSHA`` (``None``: to be packed).

    A ``Batch`` (a repeat caller's kept hits) keeps its call: built once, sent many times.
    """
    if type(hits) is Batch:
        wire = hits.wire
        if wire is not None and wire[0] == sha:
            return wire[1]  # type: ignore[no-any-return]
        keys, args = script_args(hits, "acquire")
        call = keys, args, evalsha_command(sha, keys, args)
        hits.wire = (sha, call)
        return call
    keys, args = script_args(hits, "acquire")
    return keys, args, None


class UnfitReply(Exception):
    """A well-framed reply that does not fit its call: wrong length, shape or types."""


def parse_reply(reply: Any, count: int) -> list[Usage]:
    """The script's answer: one ``Usage`` per hit, each stamped with the time of the decision.

    ``reply`` is 4 integers per hit, the time, and the call's token (checked by whoever
    sent the call). Anything else raises ``UnfitReply``.
    """
    if type(reply) is not list or len(reply) != count * 4 + 2:
        raise UnfitReply(
            f"expected {count * 4 + 2} integers for {count} hit(s), got {_shape(reply)}"
        )
    now = reply[-2]
    if count == 1:  # one limit: the common case, without the loop
        fits, remaining, reset, wait = reply[0], reply[1], reply[2], reply[3]
        if not (
            type(fits) is type(remaining) is type(reset) is type(wait) is type(now) is int
            and 0 <= fits <= 1
            and reset >= 0
            and wait >= -1
        ):
            raise UnfitReply(f"hit 1 answered {reply[:4]!r} at {now!r}")
        return [Usage(fits == 1, remaining, reset, wait if wait >= 0 else None, now)]
    if type(now) is not int:
        raise UnfitReply(f"the time is {now!r}")
    usages = []
    for i in range(0, count * 4, 4):  # the script answers integers: no conversion needed
        fits, remaining, reset, wait = reply[i : i + 4]
        if not (
            type(fits) is type(remaining) is type(reset) is type(wait) is int
            and 0 <= fits <= 1
            and reset >= 0
            and wait >= -1
        ):
            raise UnfitReply(f"hit {i // 4 + 1} answered {reply[i : i + 4]!r}")
        usages.append(Usage(fits == 1, remaining, reset, wait if wait >= 0 else None, now))
    return usages


def _shape(reply: Any) -> str:
    if type(reply) is list:
        return f"a list of {len(reply)}: {reply[:12]!r}"
    return f"{type(reply).__name__} {reply!r:.100}"
