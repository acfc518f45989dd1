"""Requests whose hits span Redis Cluster slots: one script call per slot, all or nothing.

All of one caller's keys share a hash tag (its hashed identity), so nearly every request is
one call. A request whose limits count different identities (per user and per address) spans
slots: it is then counted slot by slot, and what earlier slots took is handed back if a later
one refuses. Pure: the storages send the calls these yield.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any

from ratemw.storage.base import Hit, Usage, any_refused, unconsumed
from ratemw.storage.redis.script import parse_reply, script_args

__all__ = ["Calls", "refund_calls", "slot_by_slot", "slot_groups"]


def slot_groups(hits: Sequence[Hit]) -> list[list[int]]:
    """Indices of hits grouped by hash tag (each group lands in one cluster slot)."""
    groups: dict[str, list[int]] = {}
    for index, hit in enumerate(hits):
        start = hit.key.find("{")
        end = hit.key.find("}", start + 1)
        tag = hit.key[start + 1 : end] if 0 <= start < end - 1 else hit.key
        groups.setdefault(tag, []).append(index)
    return list(groups.values())


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
        reply = yield script_args(part, "peek" if refused else mode, clock=stamp)
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
                usages[i] = unconsumed(usages[i], hits[i])
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
