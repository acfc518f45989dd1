"""The Python strategies and ``acquire.lua`` give the same answers, exactly.

Hypothesis makes sequences of operations on a few keys (each counted by one strategy, with
its quota): acquires and peeks of batches of hits (costs, shadow hits, concurrency tokens, a
key named twice),
refunds of earlier acquires at their stamps, slot releases, the clock moving on between them
by a few milliseconds or by whole windows. Each sequence runs through the memory storage (the
Python strategies, on a clock the test holds) and through ``acquire.lua`` on a real
``redis-server``, with the same clock passed in as the script's time, and every ``Usage``
field of every answer must be equal: no tolerance.

Redis expires keys on its own (real) clock, which this test's clock does not follow: each
call runs in a ``MULTI`` that then reads the TTLs the script set (they must outlast what the
memory storage still counts, on the test's clock) and ``PERSIST``s the keys, so that nothing
expires behind the test's back. Expiry only reclaims memory: decisions compare times stored
in the keys with the clock.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ratemw.storage import Hit, MemoryStorage, Usage
from ratemw.storage.base import any_refused
from ratemw.storage.redis import SCRIPT, SCRIPT_SHA
from ratemw.storage.redis.script import Script, parse_reply, script_args
from ratemw.storage.strategies import STRATEGY_IMPLEMENTATIONS, tag_of
from tests.redis_servers import RedisServer

TOKEN = 10**15  # the call token the script echoes (one call at a time here)
# Deterministic, and quick: every example is a few dozen round trips to a local server.
EXACT = settings(
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
STRATEGIES = ["fixed-window", "moving-window", "sliding-window-counter", "gcra", "concurrency"]
_runs = itertools.count()


@dataclass(frozen=True)
class Quota:
    """A key's strategy and quota (a real key names both: one key, one strategy)."""

    strategy: str
    amount: int
    window_ms: int
    burst: int


@dataclass(frozen=True)
class Step:
    advance_ms: int
    op: str  # "acquire", "peek", "refund" (an earlier acquire's hits, at its stamp), "release"
    hits: tuple[tuple[int, int, bool, str], ...]  # (key index, cost, enforce, token)
    earlier: int  # which earlier acquire a refund hands back


def quotas(large: bool, names: list[str] = STRATEGIES) -> st.SearchStrategy[Quota]:
    amounts = st.integers(1, 10**9) if large else st.integers(1, 8)
    windows = st.integers(1, 10**6) if large else st.sampled_from([1, 2, 3, 7, 10, 250, 1000])

    def fit(strategy: str, amount: int, window: int, burst: int) -> Quota:
        # What the script counts exactly: quota x window up to 2^52 (the Limiter's own
        # bounds are tighter still).
        if strategy in ("sliding-window-counter", "gcra"):
            amount = max(min(amount, 2**52 // window), 1)
            burst = min(burst, 2**52 // window)
        return Quota(strategy, amount, window, burst if strategy == "gcra" else 0)

    return st.builds(
        fit,
        st.sampled_from(names),
        amounts,
        windows,
        st.one_of(st.just(0), st.integers(1, 12) if not large else st.integers(1, 10**9)),
    )


def steps(keys: int, large: bool) -> st.SearchStrategy[list[Step]]:
    cost = st.integers(1, 10**9 + 2) if large else st.integers(1, 10)
    hit = st.tuples(st.integers(0, keys - 1), cost, st.booleans(), st.sampled_from("abc"))
    # A key may come twice in one batch: two limits on one counter count a request once.
    batch = st.lists(hit, min_size=1, max_size=keys + 1).map(tuple)
    advance = st.one_of(
        st.integers(0, 5),
        st.integers(0, 1_200),
        st.integers(0, 2 * 10**6) if large else st.integers(1_000, 5_000),
    )
    step = st.builds(
        Step,
        advance,
        st.sampled_from(["acquire", "acquire", "acquire", "peek", "refund", "release"]),
        batch,
        st.integers(0, 30),
    )
    return st.lists(step, min_size=1, max_size=25)


@st.composite
def scenarios(
    draw: st.DrawFn, names: list[str] = STRATEGIES
) -> tuple[int, list[Quota], list[Step]]:
    large = draw(st.booleans())
    keys = draw(st.lists(quotas(large, names), min_size=1, max_size=3))
    start = 1_700_000_000_000 + draw(st.integers(0, 10**7))
    return start, keys, draw(steps(len(keys), large))


class Lua:
    """``acquire.lua`` on a real server, on the test's clock, one ``MULTI`` per call.

    ``script``: the script as composed with strategies of one's own (``compose_script``).
    """

    def __init__(self, client: redis.Redis, script: Script | None = None) -> None:
        script = script or Script(SCRIPT, SCRIPT_SHA)
        self.client = client
        self.sha = script.sha
        client.script_load(script.text)

    def call(
        self, hits: list[Hit], mode: str, clock: int, stamp: int = 0
    ) -> tuple[Any, dict[str, int]]:
        """The script's reply, and the TTL it left on each key (ms; -1: none set)."""
        keys, args = script_args(hits, mode, stamp, clock)
        named = list(dict.fromkeys(keys))  # a key a batch names twice is looked at once
        pipe = self.client.pipeline(transaction=True)
        for key in named:
            pipe.exists(key)
        pipe.evalsha(self.sha, len(keys), *keys, *args, TOKEN)
        for key in named:
            pipe.pttl(key)
            pipe.persist(key)
        found = pipe.execute()
        existed, reply, ttls = found[: len(named)], found[len(named)], found[len(named) + 1 :: 2]
        assert reply[-1] == TOKEN
        for key, was, ttl in zip(named, existed, ttls, strict=True):
            assert was or ttl != -1, f"the script made {key!r} without a time to live"
        return reply, dict(zip(named, ttls, strict=True))


def as_tuple(usage: Usage) -> tuple[Any, ...]:
    return (usage.fits, usage.remaining, usage.reset_ms, usage.wait_ms, usage.stamp_ms)


def run(lua: Lua, start: int, quotas: list[Quota], steps: list[Step]) -> None:
    now = [start]
    memory = MemoryStorage(clock=lambda: now[0])
    names = [f"eq{next(_runs)}:{{caller}}:{i}:{tag_of(q.strategy)}" for i, q in enumerate(quotas)]
    acquired: list[tuple[list[Hit], int]] = []
    for number, step in enumerate(steps):
        now[0] += step.advance_ms
        hits = [
            Hit(names[i], q.amount, q.window_ms, cost, q.strategy, enforce, q.burst, token)
            for i, cost, enforce, token in step.hits
            for q in [quotas[i]]
        ]
        where = f"step {number} ({step.op} at {now[0] - start} ms)"
        if step.op in ("refund", "release"):
            if step.op == "refund" and acquired:
                hits, stamp = acquired[step.earlier % len(acquired)]
            else:
                stamp = 0  # a release: concurrency slots by token, anything else by no stamp
            memory.refund(hits, stamp)
            _, ttls = lua.call(hits, "refund", now[0], stamp)
        else:
            ours = memory.acquire(hits) if step.op == "acquire" else memory.peek(hits)
            reply, ttls = lua.call(hits, step.op, now[0])
            theirs = parse_reply(reply, len(hits))
            assert [as_tuple(u) for u in ours] == [as_tuple(u) for u in theirs], where
            if step.op == "acquire" and not any_refused(hits, ours):
                acquired.append((hits, ours[0].stamp_ms))
        for name, ttl in ttls.items():
            # Redis must keep a key at least as long as memory still counts it.
            entry = memory._data.get(name)
            if ttl > 0 and entry is not None:
                assert ttl >= entry[1] - now[0], (where, name)


def test_python_strategies_and_the_script_answer_alike(
    redis_standalone_clean: RedisServer,
) -> None:
    lua = Lua(redis_standalone_clean.client())

    @settings(EXACT, max_examples=400)
    @given(scenarios())
    def check(scenario: tuple[int, list[Quota], list[Step]]) -> None:
        run(lua, *scenario)

    try:
        check()
    finally:
        lua.client.close()


def test_the_script_knows_the_strategies_by_their_tags() -> None:
    # One table of tags: the strategies' own. The script's tables are keyed by them.
    for name in STRATEGIES:
        tag = tag_of(name)
        assert tag == STRATEGY_IMPLEMENTATIONS[name].tag  # type: ignore[attr-defined]
        assert f"{tag} = " in SCRIPT.split("local checks = {", 1)[1].split("}", 1)[0]


@pytest.mark.parametrize(
    ("head", "words"),
    [
        pytest.param("refund 5 -1", "time", id="negative clock"),
        pytest.param("refund 5 1e9", "time", id="clock not digits"),
        pytest.param(f"refund 5 {2**51 + 1}", "time", id="clock past 2^51"),
        pytest.param("acquire 5 7", "ARGV[1]", id="acquire with two times"),
        pytest.param("refund 5 7 8", "ARGV[1]", id="three times"),
    ],
)
def test_the_refund_clock_is_checked_like_every_argument(
    redis_standalone_clean: RedisServer, head: str, words: str
) -> None:
    with redis_standalone_clean.client() as client:
        with pytest.raises(redis.ResponseError) as caught:
            client.eval(SCRIPT, 1, "eq:{c}:k", head, "fw 5 60000 1 1 0", TOKEN)
        assert str(caught.value).startswith("ratemw:") and words in str(caught.value)
        assert client.dbsize() == 0


def test_a_refund_on_the_clock_given_hands_back_as_of_that_clock(
    redis_standalone_clean: RedisServer,
) -> None:
    # A GCRA refund depends on when it happens: on the clock given, not the server's (whose
    # clock is decades later: the bucket would be found long refilled, and left full).
    with redis_standalone_clean.client() as client:
        lua = Lua(client)
        two = [Hit("eq:{c}:g", 2, 1_000, 2, "gcra", burst=4)]
        for remaining in (2, 0):
            reply, _ = lua.call(two, "acquire", 10_000)
            assert parse_reply(reply, 1)[0].remaining == remaining
        lua.call(two, "refund", 10_400, stamp=10_000)  # 0.8 units came back meanwhile
        reply, _ = lua.call([Hit("eq:{c}:g", 2, 1_000, 1, "gcra", burst=4)], "peek", 10_400)
        assert as_tuple(parse_reply(reply, 1)[0]) == (True, 2, 1_100, 0, 10_400)
