"""The arguments of ``acquire.lua`` and its answer, and requests that span cluster slots.

Pure functions: no I/O. The storages send what these build and hand back what Redis said,
after checking it: a reply that does not fit its call raises ``UnfitReply``, and
``call_fault`` tells an error of the call (the script refused its arguments) from an outage.
"""

from __future__ import annotations

import hashlib
from collections.abc import Generator, Sequence
from importlib import resources
from typing import Any

from redis.exceptions import ClusterCrossSlotError, ResponseError

from ratemw.errors import StorageCallError
from ratemw.storage._base import CONCURRENCY, Batch, Hit, Usage
from ratemw.storage._resp import evalsha_command

SCRIPT = resources.files("ratemw.storage").joinpath("acquire.lua").read_text("utf-8")
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode("utf-8")).hexdigest()
_TAGS = {
    "fixed-window": "fw",
    "moving-window": "mw",
    "sliding-window-counter": "sw",
    "gcra": "gc",
    CONCURRENCY: "cc",
}
STRATEGIES = frozenset(_TAGS)  # what acquire.lua counts by itself
_EXTENSIONS = "-- ratemw: strategies of your own are inserted here --"


def compose_script() -> tuple[str, str]:
    """``acquire.lua`` with the Lua of every registered strategy that has some, and its SHA1.

    A strategy of your own serves Redis when it has a ``lua`` attribute: Lua source that
    sets ``checks[name]``, ``consumes[name]`` and ``refunds[name]`` (see docs/strategies.md).
    """
    from ratemw.storage._strategies import STRATEGY_IMPLEMENTATIONS

    fragments = [
        lua
        for name, strategy in sorted(STRATEGY_IMPLEMENTATIONS.items())
        if name not in _TAGS and isinstance(lua := getattr(strategy, "lua", None), str)
    ]
    if not fragments:
        return SCRIPT, SCRIPT_SHA
    script = SCRIPT.replace(_EXTENSIONS, "\n".join([_EXTENSIONS, *fragments]), 1)
    return script, hashlib.sha1(script.encode("utf-8")).hexdigest()


def serves(strategy: str) -> bool:
    """Whether the Redis storage can count ``strategy`` (built in, or registered with Lua)."""
    if strategy in _TAGS:
        return True
    from ratemw.storage._strategies import STRATEGY_IMPLEMENTATIONS

    return isinstance(getattr(STRATEGY_IMPLEMENTATIONS.get(strategy), "lua", None), str)


def _tag(hit: Hit) -> str:
    tag = _TAGS.get(hit.strategy)
    if tag is None and serves(hit.strategy):
        return hit.strategy  # a strategy of your own goes by its name
    if tag is None:
        raise StorageCallError(
            f"the Redis storage cannot count strategy {hit.strategy!r} (key {hit.key!r}); "
            f"it counts {sorted(STRATEGIES)}"
        )
    return tag


def script_args(hits: Sequence[Hit], mode: str, stamp: int = 0) -> tuple[list[str], list[Any]]:
    """``KEYS`` and ``ARGV`` of ``acquire.lua`` for ``hits``."""
    keys = [hit.key for hit in hits]
    args: list[Any] = [f"{mode} {stamp}"]
    for hit in hits:
        extra = hit.token if hit.strategy == CONCURRENCY else hit.burst
        args.append(
            f"{_TAGS.get(hit.strategy) or _tag(hit)} {hit.amount} {hit.window_ms} {hit.cost} "
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
            and 0 <= fits <= 1 and reset >= 0 and wait >= -1
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
            and 0 <= fits <= 1 and reset >= 0 and wait >= -1
        ):
            raise UnfitReply(f"hit {i // 4 + 1} answered {reply[i : i + 4]!r}")
        usages.append(Usage(fits == 1, remaining, reset, wait if wait >= 0 else None, now))
    return usages


def _shape(reply: Any) -> str:
    if type(reply) is list:
        return f"a list of {len(reply)}: {reply[:12]!r}"
    return f"{type(reply).__name__} {reply!r:.100}"


# Error codes of a server that is unwell (or of a deployment that cannot serve anyone), not of
# one call: the circuit breaker counts these.
_OUTAGE_CODES = frozenset({
    "LOADING", "READONLY", "MASTERDOWN", "CLUSTERDOWN", "OOM", "BUSY", "TRYAGAIN",
    "NOREPLICAS", "MOVED", "ASK", "MISCONF", "NOAUTH", "WRONGPASS", "NOPERM", "NOSCRIPT",
    "UNKILLABLE", "EXECABORT",
})  # fmt: skip
# What a script error caused by the call's data says (Redis 7 and earlier).
_CALL_MARKS = ("ratemw:", "user_script:", "Error running script", "WRONGTYPE")


def call_fault(error: BaseException) -> bool:
    """Whether a backend error is the call's own: the server answered, and refused the call.

    True for the script's refusal of an argument (``ratemw: ...``), any other Lua error in
    the script (a key holding the wrong type of value, data it cannot count), and keys of
    several cluster slots in one call. False for everything that says the server, not the
    call, is unwell (``LOADING``, ``READONLY``, ``CLUSTERDOWN``, ``OOM``, ``BUSY``, ...), for
    lost connections and timeouts, and for errors nobody expected.
    """
    if isinstance(error, ClusterCrossSlotError):
        return True
    if type(error) is not ResponseError:  # redis-py's subclasses name server states
        return False
    text = str(error)
    if text.split(" ", 1)[0] in _OUTAGE_CODES or "SCRIPT KILL" in text:  # a busy server
        return False
    return text.startswith("CROSSSLOT") or any(mark in text for mark in _CALL_MARKS)


def describe_hits(hits: Sequence[Hit], most: int = 4) -> str:
    """What a call sent, for messages: keys (hashed identities) and numbers, no secrets."""
    shown = [
        f"{hit.key!r} ({hit.strategy} {hit.amount!r} per {hit.window_ms!r} ms, "
        f"cost {hit.cost!r}, enforce {hit.enforce!r}, burst {hit.burst!r})"
        for hit in hits[:most]
    ]
    if len(hits) > most:
        shown.append(f"and {len(hits) - most} more")
    return "[" + ", ".join(shown) + "]" if shown else "[]"


def slot_groups(hits: Sequence[Hit]) -> list[list[int]]:
    """Indices of hits grouped by hash tag (each group lands in one cluster slot)."""
    groups: dict[str, list[int]] = {}
    for index, hit in enumerate(hits):
        start = hit.key.find("{")
        end = hit.key.find("}", start + 1)
        tag = hit.key[start + 1 : end] if 0 <= start < end - 1 else hit.key
        groups.setdefault(tag, []).append(index)
    return list(groups.values())


def any_refused(hits: Sequence[Hit], usages: Sequence[Usage]) -> bool:
    # Plain loops: this runs on every request, and nearly every time everything fitted.
    for usage in usages:
        if not usage.fits:
            break
    else:
        return False
    return any(not usage.fits and hit.enforce for usage, hit in zip(usages, hits, strict=True))


def _unconsumed(usage: Usage, hit: Hit) -> Usage:
    """The usage of a hit that fitted but was handed back: its units are free again."""
    if not usage.fits:
        return usage
    units = 1 if hit.strategy == CONCURRENCY else hit.cost
    return Usage(True, usage.remaining + units, usage.reset_ms, 0, usage.stamp_ms)


Calls = Generator[tuple[list[str], list[Any]], Any, list[Usage]]


def slot_by_slot(hits: Sequence[Hit], groups: list[list[int]], mode: str) -> Calls:
    """The calls of a request whose hits span cluster slots (one script call per slot).

    A generator: it yields each call's ``(keys, args)`` and is sent the reply. Slots are
    consumed in turn; when one refuses, what the earlier ones took is handed back and the
    rest are only peeked at, so the request consumes nothing anywhere (all-or-nothing). The
    first slot's server time is the clock of the whole request, so every hit carries one
    stamp (what a later ``refund(hits, stamp)`` needs).
    """
    usages: list[Usage] = [Usage(True, 0, 0, 0)] * len(hits)
    taken: list[int] = []
    stamp = 0
    refused = False
    for group in groups:
        part = [hits[i] for i in group]
        reply = yield script_args(part, "peek" if refused else mode, stamp)
        found = parse_reply(reply, len(part))
        stamp = found[0].stamp_ms
        for i, usage in zip(group, found, strict=True):
            usages[i] = usage
        if refused:
            continue
        if any_refused(part, found):
            refused = True
            for indices in _by_slot(hits, taken):
                yield script_args([hits[i] for i in indices], "undo", stamp)
            for i in taken:
                usages[i] = _unconsumed(usages[i], hits[i])
        elif mode == "acquire":
            # Only the hits that fitted were consumed (a shadow hit without room was not).
            taken += [i for i, u in zip(group, found, strict=True) if u.fits]
    return usages


def _by_slot(hits: Sequence[Hit], indices: list[int]) -> list[list[int]]:
    chosen = [hits[i] for i in indices]
    return [[indices[j] for j in group] for group in slot_groups(chosen)]


def refund_calls(hits: Sequence[Hit], stamp: int, mode: str) -> list[tuple[list[str], list[Any]]]:
    """The script calls handing back what ``hits`` took at ``stamp`` (one per slot)."""
    return [script_args([hits[i] for i in group], mode, stamp) for group in slot_groups(hits)]


