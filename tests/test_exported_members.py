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
