"""The strategies' old import path (docs once named it): see ``ratemw.strategies``."""

from __future__ import annotations

from ratemw.storage.strategies import (
    GCRA,
    STRATEGY_IMPLEMENTATIONS,
    Concurrency,
    FixedWindow,
    MovingWindow,
    SlidingWindowCounter,
    Strategy,
    register_strategy,
    tag_of,
)

__all__ = [
    "GCRA",
    "STRATEGY_IMPLEMENTATIONS",
    "Concurrency",
    "FixedWindow",
    "MovingWindow",
    "SlidingWindowCounter",
    "Strategy",
    "register_strategy",
    "tag_of",
]
