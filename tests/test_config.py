"""Configuration files: ratemw.toml and [tool.ratemw], their errors and the environment."""

from __future__ import annotations

import inspect
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from ratemw import ConfigurationError, Limiter, RateLimitMiddleware, Rule, keys
from ratemw.config import Config, load, loads
from ratemw.testing import FakeClock
from tests.conftest import make_client

GOOD = """\
storage = "memory://"
strategy = "sliding-window-counter"
default_limits = ["2/minute", "100/hour"]
application_limits = "1000/hour"
headers = ["draft-10", "legacy"]
failure_mode = "deny"
shadow = false
enabled = true
key_prefix = "shop"
key = { type = "client_ip", trusted_proxies = ["10.0.0.0/8"], ipv6_prefix = 56 }
storage_options = { max_keys = 500 }

[[rules]]
path = "/static/*"
limit = "300/minute"

[[rules]]
path = "/api/*"
limit = ["10/minute", "100/hour"]
methods = ["POST"]
per_method = true
shadow = true
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text), "utf-8")
    return path


def test_ratemw_toml_builds_the_limiter_and_rules(tmp_path: Path) -> None:
    config = load(write(tmp_path, "ratemw.toml", GOOD), env={})
    limiter = config.limiter
    assert isinstance(config, Config)
    assert config.source == tmp_path / "ratemw.toml"
    assert limiter.strategy == "sliding-window-counter"
    assert [g.limit for g in limiter.default_groups] == ["2/minute", "100/hour"]
    assert [g.limit for g in limiter.application_groups] == ["1000/hour"]
    assert limiter.header_modes == ("draft-10", "legacy")
    assert limiter.failure_mode == "deny"
    assert limiter.key_prefix == "shop"
    assert isinstance(limiter.key, keys.client_ip)
    assert limiter.key.ipv6_prefix == 56
    assert limiter.backends.sync.max_keys == 500  # type: ignore[attr-defined]
    assert [r.path for r in config.rules] == ["/static/*", "/api/*"]
    assert limiter.rules == config.rules
    api = config.rules[1]
    assert api.limit == "10/minute;100/hour"
    assert api.methods == frozenset({"POST"})
    assert api.groups[0].per_method and api.groups[0].shadow


def test_the_loaded_limiter_enforces_defaults_and_rules(tmp_path: Path) -> None:
    text = 'default_limits = "2/minute"\n[[rules]]\npath = "/static/*"\nlimit = "1/minute"\n'
    config = load(write(tmp_path, "ratemw.toml", text), env={})
    client = make_client(config.limiter)
    assert [client.get("/").status_code for _ in range(3)] == [200, 200, 429]
    assert [client.get("/static/a.css").status_code for _ in range(2)] == [404, 429]


def test_pyproject_tool_table(tmp_path: Path) -> None:
    write(
        tmp_path,
        "pyproject.toml",
        """\
        [project]
        name = "shop"

        [tool.ratemw]
        default_limits = "100/minute"
        key = { type = "header", name = "X-API-Key" }

        [[tool.ratemw.rules]]
        path = "/api/*"
        limit = "10/second"
        """,
    )
    config = load(tmp_path / "pyproject.toml", env={})
    assert isinstance(config.limiter.key, keys.header)
    assert config.limiter.key.name == "x-api-key"
    assert [r.path for r in config.rules] == ["/api/*"]


def test_search_prefers_ratemw_toml_then_pyproject(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "pyproject.toml", '[project]\nname = "x"\n')
    with pytest.raises(ConfigurationError) as error:
        load(env={})
    assert str(error.value) == (
        f"no ratemw configuration in {tmp_path.resolve()} (the current directory): expected a "
        "ratemw.toml, or a [tool.ratemw] table in pyproject.toml"
    )
    write(tmp_path, "pyproject.toml", '[tool.ratemw]\nkey_prefix = "from-pyproject"\n')
    assert load(env={}).limiter.key_prefix == "from-pyproject"
    assert load(tmp_path, env={}).limiter.key_prefix == "from-pyproject"
    write(tmp_path, "ratemw.toml", 'key_prefix = "from-ratemw-toml"\n')
    config = load(env={})
    assert config.limiter.key_prefix == "from-ratemw-toml"
    assert config.source == Path("ratemw.toml")


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "ratemw.toml", 'storage = "memory://"\nenabled = true\n')
    config = load(path, env={"RATEMW_STORAGE": "redis://cache:6379/2", "RATEMW_ENABLED": "0"})
    assert config.limiter.storage_uri == "redis://cache:6379/2"
    assert config.limiter.enabled is False
    assert config.overrides == ("RATEMW_STORAGE", "RATEMW_ENABLED")
    for text, expected in [("TRUE", True), ("1", True), ("false", False), ("", True)]:
        assert load(path, env={"RATEMW_ENABLED": text}).limiter.enabled is expected


@pytest.mark.parametrize(
    ("env", "message"),
    [
        pytest.param(
            {"RATEMW_ENABLED": "yes"},
            "environment variable RATEMW_ENABLED: expected true, false, 1 or 0, got 'yes'",
            id="enabled not a boolean",
        ),
        pytest.param(
            {"RATEMW_STORAGE": "mongodb://db"},
            "environment variable RATEMW_STORAGE: unknown storage scheme 'mongodb' in "
            "'mongodb://db'; supported schemes: memory, redis, redis+cluster, redis+sentinel, "
            "redis+unix, rediss, valkey, valkey+cluster, valkey+sentinel, valkey+unix, valkeys",
            id="storage scheme",
        ),
    ],
)
def test_bad_environment_names_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError) as error:
        loads('default_limits = "1/second"', env=env)
    assert str(error.value) == message


def on_breach(request: Any, exc: Any) -> None:
    """A hook the configuration names by import path."""


def test_hooks_and_key_functions_by_import_path() -> None:
    config = loads(
        textwrap.dedent("""\
            on_breach = "tests.test_config:on_breach"
            on_storage_error = "tests.test_config.on_breach"
            key = { type = "header", name = "X-API-Key", fallback = "tests.test_config:on_breach" }
            """),
        env={},
    )
    assert config.limiter.on_breach is on_breach
    assert config.limiter.on_storage_error is on_breach
    assert config.limiter.key.fallback is on_breach  # type: ignore[attr-defined]


def test_metrics_prometheus_shortcut() -> None:
    pytest.importorskip("prometheus_client")
    from prometheus_client import REGISTRY

    config = loads('metrics = "prometheus"', env={})
    try:
        assert type(config.limiter.metrics).__name__ == "PrometheusMetrics"
    finally:
        metrics: Any = config.limiter.metrics
        for collector in (
            metrics.requests,
            metrics.policy_denials,
            metrics.storage_errors,
            metrics.shadow_policy_denials,
            metrics.decision_seconds,
        ):
            REGISTRY.unregister(collector)


# Every Limiter keyword argument but the clock (tests only) is a key; the list follows Limiter.
VALID = ", ".join(sorted(set(inspect.signature(Limiter).parameters) - {"clock"}))
RULE_KEYS = (
    "path, limit, methods, per_method, shadow, key, cost, exempt_when, deduct_when, "
    "failure_mode, block"
)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            'default_limits = "5/fortnight"',
            "ratemw.toml: default_limits: invalid limit '5/fortnight': no granularity matched "
            "for fortnight; expected e.g. '5/minute', '10 per 5 seconds', '10/second burst 20', "
            "'5 concurrent', or several joined by ';'",
            id="bad limit string",
        ),
        pytest.param(
            'default_limits = ["5/minute", 10]',
            "ratemw.toml: default_limits: expected a limit string such as '100/minute' or a "
            "list of them, got ['5/minute', 10] (array)",
            id="limit not a string",
        ),
        pytest.param(
            'colour = "blue"',
            f"ratemw.toml: unknown key 'colour'; valid keys: {VALID}",
            id="unknown key",
        ),
        pytest.param(
            'defualt_limits = "5/minute"',
            "ratemw.toml: unknown key 'defualt_limits' (did you mean 'default_limits'?); "
            f"valid keys: {VALID}",
            id="unknown key with a suggestion",
        ),
        pytest.param(
            'shadow = "yes"',
            "ratemw.toml: shadow: expected true or false, got 'yes' (string)",
            id="bool as string",
        ),
        pytest.param(
            'strategy = "leaky-bucket"',
            "ratemw.toml: strategy: unknown strategy 'leaky-bucket'; expected one of "
            "['fixed-window', 'moving-window', 'sliding-window-counter', 'gcra']",
            id="strategy",
        ),
        pytest.param(
            'failure_mode = "panic"',
            "ratemw.toml: failure_mode: unknown failure_mode 'panic'; expected one of "
            "['allow', 'deny', 'fallback']",
            id="failure mode",
        ),
        pytest.param(
            'storage = "memory://"\nstorage_options = { max_keys = 0 }',
            "ratemw.toml: storage_options: invalid max_keys 0 for memory storage: expected a "
            "positive integer",
            id="storage option",
        ),
        pytest.param(
            'key = { type = "header", nme = "X-API-Key" }',
            "ratemw.toml: key: unknown key 'nme' (did you mean 'name'?); valid keys: type, "
            "name, fallback",
            id="key table unknown key",
        ),
        pytest.param(
            'key = { type = "header" }',
            "ratemw.toml: key: missing 'name' (type = 'header' needs it)",
            id="key table missing name",
        ),
        pytest.param(
            'key = { type = "cookie" }',
            "ratemw.toml: key.type: unknown key type 'cookie'; expected one of "
            "['client_ip', 'header']",
            id="key type",
        ),
        pytest.param(
            'key = { type = "client_ip", trusted_proxies = ["10.0.0.300"] }',
            "ratemw.toml: key: invalid trusted proxy '10.0.0.300': expected an IP address or "
            "network such as '10.0.0.1' or '10.0.0.0/8'",
            id="trusted proxy",
        ),
        pytest.param(
            'on_breach = "tests.test_config:nowhere"',
            "ratemw.toml: on_breach: 'tests.test_config:nowhere': 'tests.test_config' has no "
            "attribute 'nowhere'",
            id="hook attribute",
        ),
        pytest.param(
            'on_breach = "no_such_module_xyz:hook"',
            "ratemw.toml: on_breach: 'no_such_module_xyz:hook': cannot import "
            "'no_such_module_xyz': No module named 'no_such_module_xyz'",
            id="hook module",
        ),
        pytest.param(
            'key = "ratemw.keys:client_ip"',
            "ratemw.toml: key: 'ratemw.keys:client_ip' names <class 'ratemw.keys.client_ip'>, "
            "which is not a function",
            id="key names a class",
        ),
        pytest.param(
            '[[rules]]\npath = "api/*"\nlimit = "1/second"',
            "ratemw.toml: rules[0].path: rule path 'api/*' can never match: request paths start "
            "with '/' (e.g. '/api/*')",
            id="rule path",
        ),
        pytest.param(
            '[[rules]]\npath = "/a"\nlimit = "1/second"\n[[rules]]\npath = "/b"\nlimit = "1/eon"',
            "ratemw.toml: rules[1].limit: invalid limit '1/eon': no granularity matched for "
            "eon; expected e.g. '5/minute', '10 per 5 seconds', '10/second burst 20', "
            "'5 concurrent', or several joined by ';'",
            id="second rule's limit",
        ),
        pytest.param(
            '[[rules]]\npath = "/a"\nlimit = "1/second"\nmethods = ["FETCH"]',
            "ratemw.toml: rules[0].methods: unknown HTTP method(s) ['FETCH']; expected some of "
            "['CONNECT', 'DELETE', 'GET', 'HEAD', 'OPTIONS', 'PATCH', 'POST', 'PUT', 'TRACE', "
            "'WEBSOCKET']",
            id="rule method",
        ),
        pytest.param(
            '[[rules]]\npath = "/a"\nlimits = "1/second"',
            "ratemw.toml: rules[0]: unknown key 'limits' (did you mean 'limit'?); valid keys: "
            f"{RULE_KEYS}",
            id="rule unknown key",
        ),
        pytest.param(
            '[[rules]]\npath = "/a"',
            "ratemw.toml: rules[0]: missing 'limit' (a rule needs path and limit)",
            id="rule without limit",
        ),
        pytest.param(
            'default_limits = "10/second burst 20"',
            "ratemw.toml: default_limits: limit '10/second burst 20' has a burst, which only "
            "strategy='gcra' counts (this limiter uses 'fixed-window')",
            id="burst needs gcra",
        ),
        pytest.param(
            'default_limits = "5/minute"\nshadow = \nenabled = true\n',
            "ratemw.toml: line 2, column 10: invalid TOML: Invalid value",
            id="syntax error with line",
        ),
        pytest.param(
            'default_limits = "5/minute',
            "ratemw.toml: end of file: invalid TOML: Unterminated string",
            id="syntax error at the end",
        ),
    ],
)
def test_errors_name_the_file_the_key_and_the_value(text: str, message: str) -> None:
    with pytest.raises(ConfigurationError) as error:
        loads(text, env={})
    assert str(error.value) == message


def test_pyproject_errors_name_the_tool_table(tmp_path: Path) -> None:
    path = write(tmp_path, "pyproject.toml", '[tool.ratemw]\ndefault_limits = "5/fortnight"\n')
    with pytest.raises(
        ConfigurationError,
        match=r"pyproject.toml: tool\.ratemw\.default_limits: "
        r"invalid limit '5/fortnight'",
    ):
        load(path, env={})
    write(tmp_path, "pyproject.toml", '[tool.ratemw]\nstorge = "memory://"\n')
    with pytest.raises(
        ConfigurationError,
        match=r"pyproject.toml: tool\.ratemw: unknown key "
        r"'storge' \(did you mean 'storage'\?\)",
    ):
        load(path, env={})
    write(tmp_path, "pyproject.toml", '[project]\nname = "x"\n')
    with pytest.raises(ConfigurationError, match=r"pyproject.toml: no \[tool.ratemw\] table$"):
        load(path, env={})


def test_missing_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"nope.toml: cannot read the file: No such"):
        load(tmp_path / "nope.toml", env={})


def test_toml_is_read_with_tomllib_or_tomli_on_python_310() -> None:
    from ratemw import config

    expected = "tomllib" if sys.version_info >= (3, 11) else "tomli"
    assert config.tomllib.__name__ == expected
    assert config.tomllib.loads('a = "b"') == {"a": "b"}


def test_limiter_and_rules_are_usable_with_the_middleware(tmp_path: Path) -> None:
    config = load(
        write(tmp_path, "ratemw.toml", '[[rules]]\npath = "/*"\nlimit = "1/minute"'), env={}
    )
    assert all(isinstance(rule, Rule) for rule in config.rules)
    limiter = Limiter(clock=FakeClock(), rules=config.rules)  # rules reusable elsewhere
    client = make_client(limiter)
    assert [client.get("/").status_code for _ in range(2)] == [200, 429]
    assert RateLimitMiddleware  # the documented way: add_middleware(..., limiter=config.limiter)


def test_the_example_in_the_operations_guide_loads() -> None:
    page = Path(__file__).parent.parent.joinpath("docs", "operations.md").read_text("utf-8")
    example = page.split("```toml\n", 1)[1].split("```", 1)[0]
    assert 'on_breach = "myapp.hooks:on_breach"' in example
    assert 'metrics = "prometheus"' in example
    example = example.replace("myapp.hooks:on_breach", "tests.test_config:on_breach")
    example = example.replace('metrics = "prometheus"', "")  # not in the global registry
    config = loads(example, env={})
    assert config.limiter.strategy == "sliding-window-counter"
    assert [r.path for r in config.rules] == ["/static/*", "/api/*"]
    assert config.limiter.on_breach is on_breach


def test_breaker_settings() -> None:
    config = loads("breaker = { threshold = 5, backoff = 1.0, max_backoff = 30 }", env={})
    assert config.limiter.breaker.threshold == 5
    with pytest.raises(ConfigurationError) as error:
        loads("breaker = { treshold = 5 }", env={})
    assert str(error.value).startswith("ratemw.toml: breaker: ")
    assert "'treshold'" in str(error.value)


def test_rules_take_a_failure_mode() -> None:
    config = loads(
        '[[rules]]\npath = "/pay/*"\nlimit = "5/minute"\nfailure_mode = "deny"\n', env={}
    )
    assert config.rules[0].groups[0].failure_mode == "deny"
    with pytest.raises(ConfigurationError) as info:
        loads('[[rules]]\npath = "/pay/*"\nlimit = "5/minute"\nfailure_mode = "panic"\n', env={})
    assert "'panic'" in str(info.value) and "failure_mode" in str(info.value)
