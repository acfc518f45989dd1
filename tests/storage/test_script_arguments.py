"""The storages refuse hits they cannot count, whole, before writing anything.

``acquire.lua`` checks every argument before its first write and answers an error reply
naming the bad one (``ratemw: ...``); the storages raise it as ``StorageCallError``, which
the circuit breaker does not count: one request's bad data never switches limiting off for
everyone. Every key the script writes carries a TTL. The memory storage refuses the same
hits, before touching its table.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis

from ratemw.errors import StorageCallError, StorageError
from ratemw.storage import Hit, MemoryStorage
from ratemw.storage.redis import SCRIPT, SCRIPT_SHA
from tests.redis_servers import RedisServer
from tests.storage.test_replies import Store
from tests.storage.test_storage_contract import key

WINDOW_MS = 60_000
YEAR_MS = 365 * 86_400_000


@pytest.fixture(params=[False, True], ids=["sync", "async"])
def asynchronous(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def bad(label: str, **fields: Any) -> Any:
    """A hit with ``fields`` replaced, and the words the refusal must contain."""
    words = fields.pop("words")
    hit = Hit(key(label), **{"amount": 5, "window_ms": WINDOW_MS, "cost": 1,
                             "strategy": "fixed-window", **fields})  # fmt: skip
    return pytest.param(hit, words, id=label)


# Hits no storage can count: (hit, words its refusal names).
INVALID = [
    bad("negative cost", cost=-1, words="cost"),
    bad("zero cost", cost=0, words="cost"),
    bad("fractional cost", cost=2.5, words="cost"),
    bad("bool cost", cost=True, words="cost"),
    bad("zero amount", amount=0, words="amount"),
    bad("negative amount", amount=-3, words="amount"),
    bad("fractional amount", amount=1.5, words="amount"),
    bad("zero window", window_ms=0, words="window"),
    bad("negative window", window_ms=-1_000, words="window"),
    bad("negative burst", strategy="gcra", burst=-1, words="burst"),
    bad("unknown strategy", strategy="leaky", words="leaky"),
    bad("negative cost, moving window", cost=-2, strategy="moving-window", words="cost"),
    bad("negative cost, sliding window", cost=-2, strategy="sliding-window-counter", words="cost"),
    bad("negative cost, gcra", cost=-2, strategy="gcra", words="cost"),
]
# Hits Redis cannot count exactly (Lua's doubles, Redis's TTLs); memory can.
TOO_LARGE = [
    bad("amount of 2^53", amount=2**53, words="amount"),
    bad("window of 100 million years", window_ms=100_000_000 * YEAR_MS, words="window"),
    bad("window of 2^51 + 1 ms", window_ms=2**51 + 1, words="window"),
    bad(
        "sliding window of a billion a day",
        amount=10**9,
        window_ms=86_400_000,
        strategy="sliding-window-counter",
        words="amount x window",
    ),
    bad(
        "gcra of a billion a day",
        amount=10**9,
        window_ms=86_400_000,
        strategy="gcra",
        words="burst x window",
    ),
    bad(
        "gcra burst too large for its window",
        burst=10**8,
        window_ms=10**8,
        strategy="gcra",
        words="burst",
    ),
    bad("cost with spaces", cost="1 1 1 1", words="is not"),
]


def _keys(server: RedisServer) -> dict[str, int]:
    with server.client() as admin:
        return {str(k): int(admin.pttl(k)) for k in admin.keys("*")}


@pytest.mark.parametrize(("hit", "words"), INVALID + TOO_LARGE)
def test_redis_refuses_a_hit_it_cannot_count_and_writes_nothing(
    asynchronous: bool, redis_standalone_clean: RedisServer, hit: Hit, words: str
) -> None:
    # The bad hit comes second: the first, valid one must not be counted either.
    good = Hit(key("good"), 5, WINDOW_MS, 1, "fixed-window")
    store = Store(asynchronous, redis_standalone_clean.url)
    try:
        for call in (
            lambda: store.acquire([good, hit]),
            lambda: store.refund([good, hit], 0),
            lambda: store.acquire([hit]),
        ):
            with pytest.raises(StorageCallError) as caught:
                call()
            message = str(caught.value)
            assert words in message, message
            assert hit.key in message or "ratemw:" in message, message
        assert _keys(redis_standalone_clean) == {}
        assert store.acquire([good])[0].remaining == 4  # the storage serves the next call
    finally:
        store.close()


@pytest.mark.parametrize(("hit", "words"), INVALID)
def test_memory_refuses_a_hit_it_cannot_count_and_keeps_its_table(hit: Hit, words: str) -> None:
    storage = MemoryStorage()
    good = Hit(key("good"), 5, WINDOW_MS, 1, "fixed-window")
    assert storage.acquire([good])[0].remaining == 4
    for call in (
        lambda: storage.acquire([good, hit]),
        lambda: storage.acquire([hit]),
        lambda: storage.peek([hit]),
        lambda: storage.refund([good, hit], 0),
    ):
        with pytest.raises(StorageCallError) as caught:
            call()
        assert words in str(caught.value) or hit.key in str(caught.value)
    assert len(storage) == 1
    assert storage.peek([good])[0].remaining == 4


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        pytest.param(["acquire 0", "fw 5 60000 1 1 0"], "arguments", id="no token"),
        pytest.param(["take 0", "fw 5 60000 1 1 0", "7"], "ARGV[1]", id="unknown mode"),
        pytest.param(["acquire -5", "fw 5 60000 1 1 0", "7"], "time", id="negative time"),
        pytest.param(["acquire 0", "fw 5 60000 1 1 0", "-7"], "token", id="negative token"),
        pytest.param(["acquire 0", "fw 5 60000 1 2 0", "7"], "enforce", id="enforce 2"),
        pytest.param(["acquire 0", "fw 5 60000 1 1", "7"], "is not", id="five fields"),
        pytest.param(["acquire 0", "fw 5 6e4 1 1 0", "7"], "window", id="window 6e4"),
        pytest.param(["acquire 0", "cc 5 60000 1 1 ", "7"], "token", id="no concurrency token"),
        pytest.param(["refund 0", "fw 5 60000 -1 1 0", "7"], "cost", id="refund, negative cost"),
        pytest.param(
            ["refund 0", "fw 5 60000 99999999999999999999 1 0", "7"],
            "cost",
            id="refund of a cost that cannot have been counted",
        ),
    ],
)
def test_the_script_names_the_argument_it_refuses(
    redis_standalone_clean: RedisServer, argv: list[str], words: str
) -> None:
    with redis_standalone_clean.client() as client:
        with pytest.raises(redis.ResponseError) as caught:
            client.eval(SCRIPT, 1, key(), *argv)
        assert str(caught.value).startswith("ratemw:") and words in str(caught.value)
    assert _keys(redis_standalone_clean) == {}


COUNTING = ["fixed-window", "moving-window", "sliding-window-counter", "gcra"]


@pytest.mark.parametrize("cost", [6, 10**15, 2**53 + 1, 10**30], ids=str)
@pytest.mark.parametrize("strategy", COUNTING)
def test_a_cost_larger_than_the_quota_never_fits_and_is_never_refused(
    asynchronous: bool, redis_standalone_clean: RedisServer, strategy: str, cost: int
) -> None:
    # However large, a cost is a number the quota can be compared with: it never fits, on
    # Redis as in memory, with the numbers of a quota left untouched. (Refusing it would
    # hand the request to the failure mode: under "allow", let through uncounted.)
    store = Store(asynchronous, redis_standalone_clean.url)
    memory = MemoryStorage()
    try:
        for storage in (store, memory):
            name = key()
            usage = storage.acquire([Hit(name, 5, WINDOW_MS, cost, strategy)])[0]
            assert (usage.fits, usage.remaining, usage.wait_ms) == (False, 5, None)
            assert storage.acquire([Hit(name, 5, WINDOW_MS, 1, strategy)])[0].remaining == 4
    finally:
        store.close()


@pytest.mark.parametrize("strategy", ["fixed-window", "moving-window"])
def test_large_counts_are_kept_to_the_unit(
    asynchronous: bool, redis_standalone_clean: RedisServer, strategy: str
) -> None:
    # A quota of 10^15 (the largest a limit may have) and a cost of 15 digits: counted, and
    # handed back, exactly (a moving-window entry once kept only 14 significant digits).
    amount, cost = 10**15, 123_456_789_012_345
    store = Store(asynchronous, redis_standalone_clean.url)
    try:
        hit = Hit(key(), amount, WINDOW_MS, cost, strategy)
        one = Hit(hit.key, amount, WINDOW_MS, 1, strategy)
        taken = store.acquire([hit])[0]
        assert (taken.fits, taken.remaining) == (True, amount - cost)
        assert store.acquire([one])[0].remaining == amount - cost - 1
        store.refund([hit], taken.stamp_ms)
        assert store.acquire([one])[0].remaining == amount - 2
    finally:
        store.close()


def test_one_key_counted_by_two_strategies_is_refused_before_any_write(
    redis_standalone_clean: RedisServer,
) -> None:
    # Consuming would write the key as a hash, then push to it as a list: refused up front.
    name = key()
    with redis_standalone_clean.client() as client:
        client.script_load(SCRIPT)
        with pytest.raises(redis.ResponseError, match="counted by 'fw' too"):
            client.evalsha(
                SCRIPT_SHA, 2, name, name, "acquire 0", "fw 5 60000 1 1 0", "mw 5 60000 1 1 0", "7"
            )
    assert _keys(redis_standalone_clean) == {}


def test_a_key_holding_another_type_is_the_calls_fault(
    asynchronous: bool, redis_standalone_clean: RedisServer
) -> None:
    name = key()
    with redis_standalone_clean.client() as client:
        client.set(name, "not a count")
    store = Store(asynchronous, redis_standalone_clean.url)
    try:
        for call in (
            lambda: store.acquire([Hit(name, 5, WINDOW_MS, 1, "fixed-window")]),
            lambda: store.refund([Hit(name, 5, WINDOW_MS, 1, "moving-window")], 0),
        ):
            with pytest.raises(StorageCallError, match=r"WRONGTYPE|holds a string"):
                call()
    finally:
        store.close()
    with redis_standalone_clean.client() as client:
        assert client.get(name) == "not a count"


STRATEGIES = ["fixed-window", "moving-window", "sliding-window-counter", "gcra", "concurrency"]
WINDOWS = [1, 1_000, 86_400_000, 100 * YEAR_MS, 2**51, 100_000_000 * YEAR_MS]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_key_written_carries_a_ttl(
    asynchronous: bool, redis_standalone_clean: RedisServer, strategy: str
) -> None:
    # From a millisecond to the longest window the script counts exactly, and beyond it
    # (refused: nothing written), for acquires and for the refunds after them.
    store = Store(asynchronous, redis_standalone_clean.url)
    try:
        for window in WINDOWS:
            hit = Hit(key(str(window)), 1, window, 1, strategy, token="t")
            refused: StorageError | None = None
            try:
                stamp = store.acquire([hit])[0].stamp_ms
                store.refund([hit], stamp)
                store.acquire([hit])
            except StorageError as exc:
                refused = exc
            ttls = _keys(redis_standalone_clean)
            # -2: a 1 ms window's key expired between KEYS and PTTL.
            assert all(ttl > 0 or ttl == -2 for ttl in ttls.values()), (window, ttls)
            if refused is not None:
                assert isinstance(refused, StorageCallError) and window > 2**51, refused
    finally:
        store.close()
    assert len(_keys(redis_standalone_clean)) >= 3  # the long windows' keys are still there
