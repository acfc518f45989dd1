"""The strategy of one's own in docs/strategies.md: its Python and its Lua answer alike.

The page's examples of the section "A strategy of your own" run here, in order, as
``tests/test_docs.py`` runs pages; the strategy they register is then held to the same exact
equivalence as the built-in ones (``test_equivalence.py``): the memory storage with its Python
methods, and ``acquire.lua`` composed with its Lua on a real ``redis-server``, on one clock.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings

from ratemw.storage.redis import compose_script, serves
from ratemw.storage.strategies import STRATEGY_IMPLEMENTATIONS, tag_of
from tests.redis_servers import RedisServer
from tests.storage.test_equivalence import EXACT, Lua, Quota, Step, run, scenarios

PAGE = Path(__file__).resolve().parents[2] / "docs" / "strategies.md"
SECTION = "## A strategy of your own"
FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


@pytest.fixture
def documented() -> Iterator[Any]:
    """The section's examples, run in order in one namespace; its strategy, registered."""
    text = PAGE.read_text("utf-8")
    section = text[text.index(SECTION) :].split("\n## ", 1)[0]
    blocks = FENCE.findall(section)
    assert len(blocks) >= 2, "the section shows the Python and the Lua"
    namespace: dict[str, Any] = {"__name__": "strategies_page"}
    before = dict(STRATEGY_IMPLEMENTATIONS)
    try:
        for block in blocks:
            exec(compile(block, str(PAGE), "exec"), namespace)
        added = [name for name in STRATEGY_IMPLEMENTATIONS if name not in before]
        assert len(added) == 1, added
        yield STRATEGY_IMPLEMENTATIONS[added[0]]
    finally:
        STRATEGY_IMPLEMENTATIONS.clear()
        STRATEGY_IMPLEMENTATIONS.update(before)


def test_the_documented_strategy_goes_by_its_name_on_redis(documented: Any) -> None:
    assert serves(documented.name)
    assert tag_of(documented.name) == documented.name  # it has no tag of its own
    assert f"checks['{documented.name}']" in compose_script().text


def test_the_documented_lua_answers_as_the_documented_python(
    documented: Any, redis_standalone_clean: RedisServer
) -> None:
    lua = Lua(redis_standalone_clean.client(), compose_script())

    @settings(EXACT, max_examples=150)
    @given(scenarios([documented.name, "fixed-window"]))
    def check(scenario: tuple[int, list[Quota], list[Step]]) -> None:
        run(lua, *scenario)

    try:
        check()
    finally:
        lua.client.close()
