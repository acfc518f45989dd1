"""Helpers the Flask and Django tests share.

Their asserts are rewritten by pytest (see ``tests/contrib/__init__.py``), so a failure shows
the values compared.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from tests.contrib.live_server import Reply


def codes(client: Any, *paths: str, method: str = "get", **extra: Any) -> list[int]:
    """Statuses of ``paths``, requested in turn with a Flask or Django test client."""
    return [getattr(client, method.lower())(p, **extra).status_code for p in paths]


def recorded_lines(produced: list[int]) -> Iterator[str]:
    """A three-line body that notes in ``produced`` each line as it is made."""
    for n in range(3):
        produced.append(n)
        yield f"line {n}\n"


def assert_third_item_refused(replies: list[Reply], instance: str) -> None:
    """The example's items route (2/minute), requested three times over HTTP.

    The third reply is the 429, as problem+json naming ``instance``.
    """
    assert [r.status for r in replies] == [200, 200, 429]
    assert replies[0].headers["ratelimit"] == '"per-minute";r=1;t=60'
    refused = replies[2]
    assert refused.headers["content-type"] == "application/problem+json"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert json.loads(refused.body)["instance"] == instance
