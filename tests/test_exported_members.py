from __future__ import annotations

import ratemw


def test_public_names_are_exported_and_sorted() -> None:
    assert ratemw.__all__ == sorted(ratemw.__all__, key=str)
    for name in ratemw.__all__:
        assert hasattr(ratemw, name), name


def test_contract_names_are_public() -> None:
    contract = {
        "Limiter",
        "RateLimitMiddleware",
        "WSGIRateLimitMiddleware",
        "Rule",
        "keys",
        "RateLimitExceeded",
        "ConfigurationError",
        "StorageError",
    }
    assert contract <= set(ratemw.__all__)


def test_error_tree() -> None:
    assert issubclass(ratemw.ConfigurationError, ratemw.RatemwError)
    assert issubclass(ratemw.StorageError, ratemw.RatemwError)
    assert issubclass(ratemw.RateLimitExceeded, ratemw.RatemwError)


def test_errors_are_shown_from_the_public_module() -> None:
    """Tracebacks say ``ratemw.ConfigurationError``, not a private module's name."""
    for name in ("RatemwError", "ConfigurationError", "StorageError", "RateLimitExceeded"):
        assert getattr(ratemw, name).__module__ == "ratemw", name
    assert issubclass(ratemw.StorageCallError, ratemw.StorageError)


def test_strategies_are_a_public_extension_point() -> None:
    from ratemw import strategies
    from ratemw.storage import _strategies  # the path docs once named: still importable
    from ratemw.storage import strategies as storage_strategies

    assert strategies.register_strategy is storage_strategies.register_strategy
    assert _strategies.register_strategy is strategies.register_strategy
    assert {"Strategy", "register_strategy"} <= set(strategies.__all__)
    for name in strategies.__all__:
        assert hasattr(strategies, name), name


def test_middlewares_say_what_they_wrap() -> None:
    limiter = ratemw.Limiter()

    def app(*args: object) -> None: ...

    shown = repr(ratemw.RateLimitMiddleware(app, limiter=limiter))
    assert shown.startswith("RateLimitMiddleware(<function")
    assert "limiter=Limiter(storage='memory://'" in shown
    assert "WSGIRateLimitMiddleware(" in repr(ratemw.WSGIRateLimitMiddleware(app, limiter=limiter))
