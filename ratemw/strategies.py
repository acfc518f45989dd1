"""Strategies: how a quota counts, and how to add one of your own.

A strategy keeps a small state per storage key and answers, for one hit, whether it fits and
what the headers should say. The built-in ones are ``fixed-window``, ``moving-window``,
``sliding-window-counter`` and ``gcra``; ``"N concurrent"`` quotas use ``concurrency``.

Example::

    from ratemw import Limiter
    from ratemw.strategies import register_strategy

    register_strategy(MyStrategy())   # name, check, consume, refund, expires (tag, lua)
    limiter = Limiter(strategy=MyStrategy.name)

See docs/strategies.md for the protocol, and for the Lua a strategy brings to count on Redis.
"""

from __future__ import annotations

from ratemw.storage.base import CONCURRENCY, STRATEGIES, Hit, Usage
from ratemw.storage.strategies import (
    GCRA,
    Concurrency,
    FixedWindow,
    MovingWindow,
    SlidingWindowCounter,
    Strategy,
    register_strategy,
    tag_of,
)

__all__ = [
    "CONCURRENCY",
    "GCRA",
    "STRATEGIES",
    "Concurrency",
    "FixedWindow",
    "Hit",
    "MovingWindow",
    "SlidingWindowCounter",
    "Strategy",
    "Usage",
    "register_strategy",
    "tag_of",
]
