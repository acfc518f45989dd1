"""``docs/for-your-callers.md``: every example is valid Python, and those that need no network
run, in order, in one namespace (a block preceded by ``<!-- no-test -->`` calls a real API)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

PAGE = Path(__file__).resolve().parents[2] / "docs" / "for-your-callers.md"
FENCE = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)
NO_TEST = "<!-- no-test -->"


def blocks() -> list[tuple[int, str, bool]]:
    """(line of the block's first line, 0-based; code; whether it runs) per python block."""
    text = PAGE.read_text("utf-8")
    found = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        found.append((text.count("\n", 0, match.start(1)), match.group(1), before != NO_TEST))
    return found


def test_the_page_has_the_examples_it_promises() -> None:
    code = "\n".join(code for _, code, _ in blocks())
    for needed in ("httpx.Client(transport=RateLimitTransport()", "AsyncRateLimitTransport()",
                   'session.mount("https://", RateLimitAdapter(', "except RateLimited",
                   "parse_rate_limit("):  # fmt: skip
        assert needed in code, needed


def test_the_examples_compile_and_the_offline_ones_run() -> None:
    namespace: dict[str, Any] = {"__name__": "docs"}
    ran = 0
    for line, code, runs in blocks():
        compiled = compile("\n" * line + code, str(PAGE), "exec")
        if runs:
            exec(compiled, namespace)
            ran += 1
    assert ran >= 3
    assert namespace["slept"] == [30.0]
