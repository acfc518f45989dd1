"""The in-memory storage: all-or-nothing, bounded, reclaiming, thread-safe."""

from __future__ import annotations

import threading

from ratemw.storage import Hit, MemoryStorage
from ratemw.testing import FakeClock


def hit(key: str, amount: int = 2, window_ms: int = 1_000, enforce: bool = True) -> Hit:
    return Hit(
        key=key,
        amount=amount,
        window_ms=window_ms,
        cost=1,
        strategy="fixed-window",
        enforce=enforce,
    )


def test_a_denied_batch_consumes_nothing() -> None:
    storage = MemoryStorage(clock=FakeClock())
    storage.acquire([hit("tight", amount=1)])
    roomy = hit("roomy", amount=10)
    usages = storage.acquire([roomy, hit("tight", amount=1)])
    assert [u.fits for u in usages] == [True, False]
    # The roomy limit was not charged for the refused request.
    assert usages[0].remaining == 10
    assert storage.peek([roomy])[0].remaining == 10


def test_a_shadow_hit_without_room_does_not_block_the_batch() -> None:
    storage = MemoryStorage(clock=FakeClock())
    storage.acquire([hit("shadow", amount=1)])
    usages = storage.acquire([hit("real", amount=5), hit("shadow", amount=1, enforce=False)])
    assert [u.fits for u in usages] == [True, False]
    assert storage.peek([hit("real", amount=5)])[0].remaining == 4


def test_key_count_is_bounded_under_a_flood() -> None:
    storage = MemoryStorage(max_keys=100, clock=FakeClock())
    for i in range(5_000):
        storage.acquire([hit(f"flood-{i}")])
    assert len(storage) <= 100


def test_an_active_key_survives_a_flood_of_new_keys() -> None:
    clock = FakeClock()
    storage = MemoryStorage(max_keys=50, clock=clock)
    storage.acquire([hit("attacker", amount=1, window_ms=60_000)])
    for i in range(1_000):
        storage.acquire([hit(f"flood-{i}", window_ms=60_000)])
        # The blocked caller keeps trying, which keeps its key fresh.
        assert not storage.acquire([hit("attacker", amount=1, window_ms=60_000)])[0].fits


def test_expired_keys_are_reclaimed_before_live_ones_are_evicted() -> None:
    clock = FakeClock()
    storage = MemoryStorage(max_keys=10, clock=clock)
    for i in range(10):
        storage.acquire([hit(f"old-{i}")])
    clock.advance(5)  # every old key's window has ended
    storage.acquire([hit("new")])
    assert len(storage) <= 10
    assert storage.evictions == 0


def test_threads_never_over_admit() -> None:
    storage = MemoryStorage()
    admitted = []
    barrier = threading.Barrier(16)

    def worker() -> None:
        barrier.wait()
        for _ in range(50):
            if storage.acquire([hit("shared", amount=100, window_ms=60_000)])[0].fits:
                admitted.append(1)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admitted) == 100


def test_clear_and_reset() -> None:
    storage = MemoryStorage(clock=FakeClock())
    storage.acquire([hit("a", amount=1)])
    storage.acquire([hit("b", amount=1)])
    storage.clear("a")
    assert storage.acquire([hit("a", amount=1)])[0].fits
    storage.reset()
    assert len(storage) == 0


def test_a_million_distinct_keys_stay_within_the_bound() -> None:
    import resource

    clock = FakeClock()
    storage = MemoryStorage(max_keys=10_000, clock=clock)
    blocked = hit("blocked-caller", amount=1, window_ms=3_600_000)
    assert storage.acquire([blocked])[0].fits
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    for i in range(1_000_000):
        storage.acquire([hit(f"flood-{i}", window_ms=3_600_000)])
        if i % 1_000 == 0:
            # The caller that matters keeps trying and stays refused all along.
            assert not storage.acquire([blocked])[0].fits
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before
    assert len(storage) <= 10_000
    # Holding a million keys would take hundreds of MB; the bound keeps it to a few.
    assert grown < 64 * 1024
