"""Limiter configuration: every bad value is refused at start-up, naming it."""

from __future__ import annotations

from typing import Any

import pytest

from ratemw import ConfigurationError, Limiter, Rule


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        pytest.param({"default_limits": "5/fortnight"}, "5/fortnight", id="bad default limit"),
        pytest.param({"application_limits": ["1/second", "x"]}, "'x'", id="bad app limit"),
        pytest.param({"default_limits": "0/minute"}, "0/minute", id="zero quota"),
        pytest.param({"strategy": "leaky"}, "leaky", id="unknown strategy"),
        pytest.param({"storage": "mongodb://localhost"}, "mongodb", id="unknown scheme"),
        pytest.param({"storage": "localhost:6379"}, "localhost:6379", id="not a URI"),
        pytest.param({"failure_mode": "explode"}, "explode", id="unknown failure mode"),
        pytest.param({"headers": "draft-99"}, "draft-99", id="unknown header mode"),
        pytest.param({"key": "client_ip"}, "client_ip", id="key not callable"),
        pytest.param({"on_breach": 3}, "3", id="hook not callable"),
        pytest.param({"key_prefix": ""}, "''", id="empty key prefix"),
        pytest.param({"storage": "memory://?max_keys=-1"}, "-1", id="bad max_keys"),
        pytest.param({"near_limit_ratio": 1.5}, "1.5", id="bad near-limit ratio"),
        pytest.param({"default_limits": 5}, "5", id="limit not a string"),
        pytest.param({"default_limits": "5/0 minutes"}, "5/0 minutes", id="a window of zero"),
        pytest.param({"default_limits": "5 per 0 seconds"}, "0 seconds", id="zero seconds"),
        pytest.param(
            {"default_limits": "1 per 100000000 years"}, "100000000 years", id="window too long"
        ),
        pytest.param(
            {"default_limits": "10000000000000000/second"},
            "10000000000000000",
            id="amount too large",
        ),
        pytest.param(
            {"default_limits": "1000000/year", "strategy": "sliding-window-counter"},
            "1000000/year",
            id="too large for a sliding window to count exactly",
        ),
        pytest.param(
            {"default_limits": "10/second burst 10000000000000", "strategy": "gcra"},
            "burst 10000000000000",
            id="a burst too large for GCRA to count exactly",
        ),
        pytest.param({"fallback_limits": "garbage"}, "garbage", id="bad fallback limits"),
        pytest.param({"fallback_limits": 5}, "5", id="fallback limits not a string"),
    ],
)
def test_bad_configuration_names_the_value(kwargs: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Limiter(**kwargs)
    assert named in str(info.value)


@pytest.mark.parametrize(
    ("args", "kwargs", "named"),
    [
        pytest.param(("5/minute",), {"cost": 0}, "0", id="zero cost"),
        pytest.param(("5/minute",), {"cost": "two"}, "two", id="cost not int"),
        pytest.param(("5/minute",), {"methods": ["FETCH"]}, "FETCH", id="unknown method"),
        pytest.param(("5/minute",), {"methods": []}, "methods=[]", id="no methods"),
        pytest.param(("five per minute",), {}, "five per minute", id="bad limit"),
        pytest.param(("5/minute",), {"exempt_when": True}, "True", id="exempt_when not callable"),
        pytest.param(("5/minute",), {"error_message": 5}, "5", id="error_message not text"),
        pytest.param((lambda r: "5/minute",), {"fallback": "nope"}, "nope", id="bad fallback"),
        pytest.param((lambda r: "5/minute",), {}, "has no fallback", id="nothing to fall back on"),
    ],
)
def test_bad_decorator_arguments(args: tuple[Any, ...], kwargs: dict[str, Any], named: str) -> None:
    limiter = Limiter()
    with pytest.raises(ConfigurationError) as info:
        limiter.limit(*args, **kwargs)
    assert named in str(info.value)


def test_shared_limit_needs_a_scope() -> None:
    with pytest.raises(ConfigurationError, match="scope"):
        Limiter().shared_limit("5/minute", scope="")


@pytest.mark.parametrize(
    ("path", "kwargs", "named"),
    [
        pytest.param("api/*", {}, "api/*", id="no leading slash"),
        pytest.param("/api /*", {}, "white space", id="space"),
        pytest.param("/api/*", {"methods": []}, "methods=[]", id="no methods"),
        pytest.param("/api/*", {"methods": ["GRAB"]}, "GRAB", id="unknown method"),
    ],
)
def test_rules_that_can_never_match_are_refused(
    path: str, kwargs: dict[str, Any], named: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        Rule(path, "5/minute", **kwargs)
    assert named in str(info.value)


def test_rules_must_be_rule_objects() -> None:
    with pytest.raises(ConfigurationError, match="Rule"):
        Limiter(rules=[("/api/*", "5/minute")])  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("/api/*", "/api/users", True),
        ("/api/*", "/api/v1/items/3", True),
        ("/api/*", "/apiary", False),
        ("/static/*.css", "/static/a/b.css", True),
        ("/health", "/health", True),
        ("/health", "/healthz", False),
        ("/a.b", "/aXb", False),
    ],
)
def test_rule_patterns(pattern: str, path: str, matches: bool) -> None:
    assert Rule(pattern, "1/second").matches(path) is matches


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        pytest.param("redis://u:s3cret@h:6379/0", "redis://u:***@h:6379/0", id="user info"),
        pytest.param("redis://h?password=s3cret&db=1", "redis://h?password=***&db=1", id="query"),
        pytest.param(
            "redis+sentinel://h/m?sentinel_password=s3cret",
            "redis+sentinel://h/m?sentinel_password=***",
            id="sentinel query",
        ),
        pytest.param("memory://", "memory://", id="nothing to hide"),
    ],
)
def test_passwords_never_show_in_the_storage_uri(uri: str, shown: str) -> None:
    limiter = Limiter(storage=uri)
    assert limiter.storage_uri_redacted == shown
    assert "s3cret" not in repr(limiter)
