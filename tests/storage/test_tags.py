"""Tags: the one table by which storage keys and the Redis script tell strategies apart.

A strategy goes by its ``tag`` attribute (the built-in ones: ``fw``, ``mw``, ``sw``, ``gc``,
``cc``), or by its name if it has none; its Lua sets ``checks[tag]``, ``consumes[tag]`` and
``refunds[tag]``. No two strategies may go by one tag.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from ratemw import ConfigurationError
from ratemw.storage import Hit, MemoryStorage
from ratemw.storage.redis import RedisStorage, compose_script
from ratemw.storage.redis.script import script_args
from ratemw.storage.strategies import STRATEGY_IMPLEMENTATIONS, register_strategy, tag_of
from tests.redis_servers import RedisServer
from tests.storage.test_custom_strategy import LEAKY_LUA, LeakyCounter
from tests.storage.test_storage_contract import TEST_OPTIONS, key


class Tagged(LeakyCounter):
    """The leaky counter again, going by a short tag of its own."""

    name = "leaky-tagged"
    tag = "lk"
    lua = LEAKY_LUA.replace("'leaky-counter'", "'lk'")


@pytest.fixture
def restore() -> Iterator[None]:
    before = dict(STRATEGY_IMPLEMENTATIONS)
    try:
        yield
    finally:
        STRATEGY_IMPLEMENTATIONS.clear()
        STRATEGY_IMPLEMENTATIONS.update(before)


def test_the_built_in_strategies_go_by_their_tags() -> None:
    assert {name: tag_of(name) for name in sorted(STRATEGY_IMPLEMENTATIONS)} == {
        "concurrency": "cc",
        "fixed-window": "fw",
        "gcra": "gc",
        "moving-window": "mw",
        "sliding-window-counter": "sw",
    }
    assert tag_of("not-registered") == "not-registered"


@pytest.mark.parametrize(
    ("name", "tag", "words"),
    [
        pytest.param("mine", "fw", "'fixed-window'", id="a built-in's tag"),
        pytest.param("mine", "two words", "tag 'two words'", id="white space"),
        pytest.param("mine", "", "tag ''", id="empty"),
        pytest.param("mine", 7, "tag 7", id="not a string"),
        pytest.param("leaky", "other", "'other'", id="another of one's own"),
    ],
)
def test_a_tag_another_strategy_goes_by_or_not_a_word_is_refused(
    restore: None, name: str, tag: Any, words: str
) -> None:
    class Other(LeakyCounter):
        pass

    Other.name, Other.tag = "other", "other"  # type: ignore[attr-defined]
    register_strategy(Other())

    class Mine(LeakyCounter):
        pass

    Mine.name, Mine.tag = name, tag  # type: ignore[attr-defined]
    with pytest.raises(ConfigurationError, match=words):
        register_strategy(Mine())
    assert name not in STRATEGY_IMPLEMENTATIONS


def test_a_strategy_of_ones_own_goes_by_its_tag_in_keys_and_lua(
    restore: None, redis_standalone_clean: RedisServer
) -> None:
    register_strategy(Tagged())
    assert tag_of("leaky-tagged") == "lk"
    assert "checks['lk']" in compose_script().text
    hit = Hit(key(), 2, 60_000, 1, "leaky-tagged")
    assert script_args([hit], "acquire")[1][1].startswith("lk ")
    storage = RedisStorage(redis_standalone_clean.url, blocked_cache_size=0, **TEST_OPTIONS)
    memory = MemoryStorage()
    try:
        for _ in range(3):
            ours, theirs = memory.acquire([hit])[0], storage.acquire([hit])[0]
            assert (ours.fits, ours.remaining, ours.wait_ms) == (
                theirs.fits,
                theirs.remaining,
                theirs.wait_ms,
            )
    finally:
        storage.close()
