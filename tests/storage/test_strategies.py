"""The strategies' arithmetic, through the memory storage on a controllable clock."""

from __future__ import annotations

from copy import deepcopy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ratemw.storage import STRATEGIES, Hit, MemoryStorage
from ratemw.testing import FakeClock

WINDOW_MS = 10_000
AMOUNT = 5

steps = st.lists(
    st.tuples(st.integers(min_value=0, max_value=4_000), st.integers(min_value=1, max_value=3)),
    min_size=1,
    max_size=60,
)


def hit(strategy: str, cost: int = 1, amount: int = AMOUNT, key: str = "k") -> Hit:
    return Hit(key=key, amount=amount, window_ms=WINDOW_MS, cost=cost, strategy=strategy)


def probe(storage: MemoryStorage, at_ms: int) -> MemoryStorage:
    """A copy of the storage's state, seen at another time (the original is untouched)."""
    copy = MemoryStorage(clock=lambda: at_ms)
    copy._data = deepcopy(storage._data)
    return copy


def admitted_within_limit(strategy: str, admitted: list[tuple[int, int]]) -> None:
    """No admitted set of requests exceeds what the strategy allows."""
    if strategy == "moving-window":
        for t, _ in admitted:
            used = sum(c for s, c in admitted if t - WINDOW_MS < s <= t)
            assert used <= AMOUNT
    elif strategy == "gcra":
        # Token-bucket conformance: over any span, at most burst + span * rate units.
        for a, _ in admitted:
            for b, _ in admitted:
                if a <= b:
                    units = sum(c for s, c in admitted if a <= s <= b)
                    assert units * WINDOW_MS <= AMOUNT * WINDOW_MS + (b - a) * AMOUNT
    elif strategy == "fixed-window":
        # Windows start at the first hit after the previous one ended.
        end = None
        used = 0
        for t, c in admitted:
            if end is None or t >= end:
                end, used = t + WINDOW_MS, 0
            used += c
            assert used <= AMOUNT
    else:
        for t, _ in admitted:
            start = t - t % WINDOW_MS
            curr = sum(c for s, c in admitted if start <= s <= t)
            prev = sum(c for s, c in admitted if start - WINDOW_MS <= s < start)
            # weighted count, scaled by the window to stay exact
            assert prev * (WINDOW_MS - (t - start)) + curr * WINDOW_MS <= AMOUNT * WINDOW_MS


@pytest.mark.parametrize("strategy", STRATEGIES)
@settings(max_examples=150, deadline=None)
@given(steps=steps)
def test_never_over_admits_and_waits_are_exact(strategy: str, steps: list[tuple[int, int]]) -> None:
    clock = FakeClock()
    storage = MemoryStorage(clock=clock)
    admitted: list[tuple[int, int]] = []
    for delta, cost in steps:
        clock.advance(delta / 1000)
        [usage] = storage.acquire([hit(strategy, cost)])
        if usage.fits:
            admitted.append((clock(), cost))
            assert usage.wait_ms == 0
            continue
        assert usage.wait_ms is not None and usage.wait_ms > 0
        # Not a millisecond earlier ...
        assert not probe(storage, clock() + usage.wait_ms - 1).peek([hit(strategy, cost)])[0].fits
        # ... and exactly then, it fits.
        assert probe(storage, clock() + usage.wait_ms).peek([hit(strategy, cost)])[0].fits
    admitted_within_limit(strategy, admitted)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_cost_above_quota_can_never_fit(strategy: str) -> None:
    storage = MemoryStorage(clock=FakeClock())
    [usage] = storage.acquire([hit(strategy, cost=AMOUNT + 1)])
    assert not usage.fits
    assert usage.wait_ms is None
    assert usage.remaining == AMOUNT


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_remaining_counts_down_to_zero(strategy: str) -> None:
    clock = FakeClock(start=1_800_000_000.0)  # a window boundary for the sliding counter
    storage = MemoryStorage(clock=clock)
    seen = [storage.acquire([hit(strategy)])[0].remaining for _ in range(AMOUNT)]
    assert seen == [4, 3, 2, 1, 0]
    denied = storage.acquire([hit(strategy)])[0]
    assert not denied.fits and denied.remaining == 0


def test_fixed_window_reset_is_the_window_end() -> None:
    clock = FakeClock()
    storage = MemoryStorage(clock=clock)
    assert storage.acquire([hit("fixed-window")])[0].reset_ms == WINDOW_MS
    clock.advance(2.5)
    usage = storage.acquire([hit("fixed-window")])[0]
    assert usage.reset_ms == WINDOW_MS - 2_500


def test_moving_window_frees_the_oldest_hit_first() -> None:
    clock = FakeClock()
    storage = MemoryStorage(clock=clock)
    for _ in range(AMOUNT):
        storage.acquire([hit("moving-window")])
        clock.advance(1)
    [usage] = storage.acquire([hit("moving-window")])
    # The first hit was 5 s ago; it leaves the 10 s window in 5 s.
    assert not usage.fits and usage.wait_ms == 5_000


def test_sliding_counter_weighs_the_previous_window() -> None:
    clock = FakeClock(start=1_800_000_000.0)
    storage = MemoryStorage(clock=clock)
    for _ in range(AMOUNT):
        assert storage.acquire([hit("sliding-window-counter")])[0].fits
    clock.advance(12.5)  # a quarter into the next window: the previous weighs 75% -> 3.75
    [usage] = storage.acquire([hit("sliding-window-counter")])
    assert usage.fits and usage.remaining == 0  # floor(5 - 3.75 - 1)
    [usage] = storage.acquire([hit("sliding-window-counter")])
    assert not usage.fits
    # Needs prev weight <= 5 - 1 - 1 = 3 units: 5 * (10 - e) / 10 <= 3  ->  e >= 4 s.
    assert usage.wait_ms == 1_500


def test_gcra_burst_and_steady_rate() -> None:
    clock = FakeClock()
    storage = MemoryStorage(clock=clock)
    bursty = Hit(key="g", amount=5, window_ms=WINDOW_MS, cost=1, strategy="gcra", burst=8)
    assert [storage.acquire([bursty])[0].fits for _ in range(9)] == [True] * 8 + [False]
    [denied] = storage.acquire([bursty])
    assert denied.wait_ms == 2_000  # one unit every 10 s / 5 = 2 s
    clock.advance(2)
    assert storage.acquire([bursty])[0].fits
    assert not storage.acquire([bursty])[0].fits


def test_gcra_cost_above_burst_never_fits() -> None:
    storage = MemoryStorage(clock=FakeClock())
    hit_ = Hit(key="g", amount=5, window_ms=WINDOW_MS, cost=9, strategy="gcra", burst=8)
    [usage] = storage.acquire([hit_])
    assert not usage.fits and usage.wait_ms is None


def test_gcra_uneven_emission_interval_is_exact() -> None:
    clock = FakeClock()
    storage = MemoryStorage(clock=clock)
    thirds = Hit(key="g", amount=3, window_ms=1_000, cost=1, strategy="gcra", burst=1)
    assert storage.acquire([thirds])[0].fits
    [denied] = storage.acquire([thirds])
    assert denied.wait_ms == 334  # 333.33 ms, rounded up
    clock.advance(0.333)
    assert not storage.acquire([thirds])[0].fits
    clock.advance(0.001)
    assert storage.acquire([thirds])[0].fits


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_refund_gives_back_what_was_taken(strategy: str) -> None:
    clock = FakeClock(start=1_800_000_000.0)
    storage = MemoryStorage(clock=clock)
    taken = storage.acquire([hit(strategy, cost=2)])[0]
    clock.advance(0.5)
    storage.refund([hit(strategy, cost=2)], taken.stamp_ms)
    assert storage.peek([hit(strategy)])[0].remaining == AMOUNT


def test_concurrency_slots_are_released_and_lapse() -> None:
    clock = FakeClock()
    storage = MemoryStorage(clock=clock)

    def slot(token: str) -> Hit:
        return Hit(key="c", amount=2, window_ms=30_000, cost=1, strategy="concurrency", token=token)

    assert storage.acquire([slot("a")])[0].fits
    assert storage.acquire([slot("b")])[0].remaining == 0
    refused = storage.acquire([slot("c")])[0]
    assert not refused.fits and refused.wait_ms == 1_000
    storage.release([slot("a")])
    assert storage.acquire([slot("c")])[0].fits
    clock.advance(30)  # slots of a crashed worker lapse
    assert storage.acquire([slot("d")])[0].remaining == 1
