"""The ``ratemw`` command: check, inspect and reset, against a real Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.testclient import TestClient

from ratemw import Limiter, RateLimitMiddleware, Rule, keys
from ratemw.cli import main
from tests.conftest import ok
from tests.redis_servers import RedisServer

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "cust-42"
IDENTITY = "h:" + API_KEY  # what keys.header("X-API-Key") returns for this caller


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


# -- check ------------------------------------------------------------------------------------


def test_check_prints_the_effective_configuration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RATEMW_STORAGE", raising=False)
    monkeypatch.setenv("RATEMW_ENABLED", "false")
    path = tmp_path / "ratemw.toml"
    path.write_text(
        textwrap.dedent("""\
        storage = "redis://:hunter2@cache.internal:6379/0"
        strategy = "moving-window"
        default_limits = ["100/minute", "2000/hour"]
        key = { type = "header", name = "X-API-Key" }
        exempt_paths = ["/healthz", "/ready*"]

        [[rules]]
        path = "/api/*"
        limit = "10/second"
        methods = ["POST"]
        """)
    )
    status, out, err = run(capsys, "check", str(path))
    assert (status, err) == (0, "")
    assert out == textwrap.dedent(f"""\
        {path}: OK
          storage             redis://:***@cache.internal:6379/0
          strategy            moving-window
          default_limits      100/minute; 2000/hour
          application_limits  (none)
          key                 keys.header('x-api-key')
          headers             draft-10
          failure_mode        allow
          shadow              false
          enabled             false  (from RATEMW_ENABLED)
          key_prefix          ratemw
          near_limit_ratio    0.8
          on_breach           (none)
          on_near_limit       (none)
          on_storage_error    (none)
          metrics             (none)
          count_preflight     false (CORS preflights pass uncounted)
          exempt_paths        /healthz, /ready*
          HEAD                counted as GET
          rules (1)
            /api/*  10/second  methods=POST
        """)
    assert "hunter2" not in out


@pytest.mark.parametrize(
    ("text", "error"),
    [
        pytest.param(
            'default_limits = "5/fortnight"\n',
            "default_limits: invalid limit '5/fortnight': no granularity matched for fortnight; "
            "expected e.g. '5/minute', '10 per 5 seconds', '10/second burst 20', "
            "'5 concurrent', or several joined by ';'",
            id="bad limit",
        ),
        pytest.param(
            '[[rules]]\npath = "/api/*"\nlimit = "1/minute"\nmethods = ["GRAB"]\n',
            "rules[0].methods: unknown HTTP method(s) ['GRAB']; expected some of ['CONNECT', "
            "'DELETE', 'GET', 'HEAD', 'OPTIONS', 'PATCH', 'POST', 'PUT', 'TRACE', 'WEBSOCKET']",
            id="bad rule method",
        ),
        pytest.param(
            'failure_mode = "open"\n',
            "failure_mode: unknown failure_mode 'open'; expected one of "
            "['allow', 'deny', 'fallback']",
            id="bad failure mode",
        ),
    ],
)
def test_check_reports_the_bad_value_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, error: str
) -> None:
    path = tmp_path / "ratemw.toml"
    path.write_text(text)
    assert run(capsys, "check", str(path)) == (1, "", f"ratemw check: error: {path}: {error}\n")


def test_check_searches_the_current_directory_and_imports_project_hooks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shop_hooks.py").write_text("def breach(request, exc):\n    pass\n")
    (tmp_path / "pyproject.toml").write_text('[tool.ratemw]\non_breach = "shop_hooks:breach"\n')
    status, out, err = run(capsys, "check")
    assert (status, err) == (0, "")
    assert out.startswith("pyproject.toml: OK\n")
    assert "  on_breach           shop_hooks:breach\n" in out
    assert str(tmp_path) not in sys.path  # the project was importable while loading only
    sys.modules.pop("shop_hooks", None)


def test_check_without_a_configuration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert run(capsys, "check") == (
        1,
        "",
        f"ratemw check: error: no ratemw configuration in {tmp_path.resolve()} (the current "
        "directory): expected a ratemw.toml, or a [tool.ratemw] table in pyproject.toml\n",
    )
    elsewhere = tmp_path / "deploy"
    elsewhere.mkdir()
    status, _, err = run(capsys, "check", str(elsewhere))
    assert status == 1
    assert f"no ratemw configuration in {elsewhere.resolve()}:" in err


def python_m_ratemw(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RATEMW_")}
    return subprocess.run(
        [sys.executable, "-m", "ratemw", *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_python_m_ratemw_check(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('default_limits = "100/minute"\n')
    result = python_m_ratemw("check", str(good))
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith(f"{good}: OK\n")
    bad = tmp_path / "bad.toml"
    bad.write_text('default_limits = "100/minute"\nshadow = "sometimes"\n')
    result = python_m_ratemw("check", str(bad))
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        f"ratemw check: error: {bad}: shadow: expected true or false, got 'sometimes' (string)\n"
    )


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    import ratemw

    assert run(capsys, "--version") == (0, f"ratemw {ratemw.__version__}\n", "")


def test_a_reader_that_goes_away_ends_the_output_quietly(tmp_path: Path) -> None:
    """``ratemw check | head -1``: no BrokenPipeError traceback."""
    config = tmp_path / "ratemw.toml"
    # Enough rules that the output overflows the pipe's buffer after the reader has left.
    rules = "".join(f'[[rules]]\npath = "/r{n}/*"\nlimit = "1/second"\n' for n in range(3000))
    config.write_text('default_limits = "100/minute"\n' + rules)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RATEMW_")}
    pipeline = f"{sys.executable} -m ratemw check {config} | head -c 1"
    result = subprocess.run(
        ["bash", "-c", pipeline], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env
    )
    assert result.stdout == str(config)[0]
    assert "Traceback" not in result.stderr
    assert "BrokenPipeError" not in result.stderr


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "inspect", "--storage", "redis://x", "--key", "k")
    assert status == 2
    assert "one of the arguments --route --scope --rule --default --app is required" in err
    status, _, err = run(
        capsys,
        "inspect",
        "--storage",
        "redis://x",
        "--key",
        "k",
        "--route",
        "/",
        "--limit",
        "1/second",
        "--method",
        "GET",
    )
    assert status == 2
    assert "--per-method and --method go together" in err
    assert run(capsys, "--help")[0] == 0


def test_memory_storage_is_out_of_reach(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(
        capsys, "inspect", "--storage", "memory://", "--limit", "1/second", "--key", "k", "--app"
    ) == (
        1,
        "",
        "ratemw inspect: error: memory:// counts live inside each app process, out of this "
        "command's reach; inspect and reset need a shared storage such as redis://\n",
    )


# -- inspect and reset against a real Redis -----------------------------------------------------


@pytest.fixture
def redis_url(redis_standalone_clean: RedisServer) -> str:
    return redis_standalone_clean.url


App = Callable[[Limiter], list[Route]]


def route_app(limiter: Limiter) -> list[Route]:
    return [Route("/search", limiter.limit("3/minute;100/hour")(ok))]


def scope_app(limiter: Limiter) -> list[Route]:
    shared = limiter.shared_limit("3/minute;100/hour", scope="search")

    async def find(request: Any) -> Any:
        return await ok(request)

    return [Route("/search", shared(ok)), Route("/find", shared(find))]


def rule_app(limiter: Limiter) -> list[Route]:
    limiter.reconfigure(rules=[Rule("/se*", "3/minute;100/hour")])
    return [Route("/search", ok)]


def default_app(limiter: Limiter) -> list[Route]:
    limiter.reconfigure(default_limits="3/minute;100/hour")
    return [Route("/search", ok)]


def app_app(limiter: Limiter) -> list[Route]:
    limiter.reconfigure(application_limits="3/minute;100/hour")
    return [Route("/search", ok)]


def asgi_app(limiter: Limiter, routes: list[Route]) -> Starlette:
    """The app behind the middleware; its shutdown closes the Redis connections."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await limiter.backends.async_.aclose()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.add_middleware(RateLimitMiddleware, limiter=limiter)
    return app


SELECTORS = [
    pytest.param(route_app, ["--route", "/search"], "route:/search", "", id="route"),
    pytest.param(scope_app, ["--scope", "search"], "shared:search", "search-", id="scope"),
    pytest.param(rule_app, ["--rule", "/se*"], "rule:/se*", "", id="rule"),
    pytest.param(default_app, ["--default", "/search"], "default:/search", "", id="default"),
    pytest.param(app_app, ["--app"], "application:*", "app-", id="app"),
]


@pytest.fixture
def serve(redis_url: str) -> Iterator[Callable[[App], TestClient]]:
    clients: list[TestClient] = []

    def start(build: App) -> TestClient:
        # No local memory of refusals, so that the next request asks Redis (a worker that
        # remembers refusals sees a reset within a second: tests/storage/test_resets.py).
        # Generous timeouts: a loaded machine must not turn a slow reply into a fail-open.
        limiter = Limiter(
            storage=redis_url,
            key=keys.header("X-API-Key"),
            storage_options={
                "blocked_cache_size": 0,
                "socket_timeout": 5,
                "socket_connect_timeout": 5,
            },
        )
        client = TestClient(asgi_app(limiter, build(limiter)), headers={"X-API-Key": API_KEY})
        clients.append(client.__enter__())
        return client

    yield start
    for client in clients:
        client.__exit__(None, None, None)


@pytest.mark.parametrize(("build", "selector", "bucket", "prefix"), SELECTORS)
def test_inspect_then_reset_a_blocked_caller(
    serve: Callable[[App], TestClient],
    redis_url: str,
    capsys: pytest.CaptureFixture[str],
    build: App,
    selector: list[str],
    bucket: str,
    prefix: str,
) -> None:
    client = serve(build)
    assert [client.get("/search").status_code for _ in range(4)] == [200, 200, 200, 429]
    common = ["--storage", redis_url, "--limit", "3/minute;100/hour", "--key", IDENTITY, *selector]

    status, out, err = run(capsys, "inspect", *common, "--json")
    assert (status, err) == (0, "")
    report = json.loads(out)
    assert (report["key"], report["bucket"], report["strategy"]) == (
        IDENTITY,
        bucket,
        "fixed-window",
    )
    minute, hour = report["policies"]
    assert minute["name"] == f"{prefix}per-minute"
    assert (minute["quota"], minute["window"], minute["used"], minute["remaining"]) == (3, 60, 3, 0)
    assert minute["blocked"] is True
    assert 58 <= minute["reset"] <= 60
    assert minute["retry_after"] == minute["reset"]
    assert (hour["name"], hour["used"], hour["remaining"], hour["blocked"]) == (
        f"{prefix}per-hour",
        3,
        97,
        False,
    )
    assert 3598 <= hour["reset"] <= 3600

    assert run(capsys, "reset", *common) == (
        0,
        f"cleared {prefix}per-minute, {prefix}per-hour of {IDENTITY} in {bucket}\n",
        "",
    )
    assert client.get("/search").status_code == 200
    report = json.loads(run(capsys, "inspect", *common, "--json")[1])
    assert [(p["used"], p["remaining"], p["blocked"]) for p in report["policies"]] == [
        (1, 2, False),
        (1, 99, False),
    ]


def test_inspect_text_and_an_unknown_caller(
    serve: Callable[[App], TestClient], redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    client = serve(route_app)
    assert [client.get("/search").status_code for _ in range(4)] == [200, 200, 200, 429]
    common = ["--storage", redis_url, "--limit", "3/minute;100/hour", "--route", "/search"]
    status, out, _ = run(capsys, "inspect", *common, "--key", IDENTITY)
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == f"{IDENTITY} in route:/search ({redis_url}, fixed-window)"
    assert lines[1].split() == ["policy", "quota", "window", "used", "remaining", "reset", "status"]
    assert lines[2].split()[:6] == ["per-minute", "3", "60", "s", "3", "0"]
    assert lines[2].split()[-5:-2] == ["blocked,", "retry", "in"]
    assert lines[3].split()[:6] == ["per-hour", "100", "3600", "s", "3", "97"]
    assert lines[3].endswith("ok")
    assert lines[4].startswith("  storage key: ratemw:{")
    # A caller never seen has its whole quota and nothing to wait for; the command says it
    # matched no counts and exits non-zero (a wrong key is a mistake worth noticing).
    status, out, err = run(capsys, "inspect", *common, "--key", "h:nobody", "--json")
    report = json.loads(out)
    assert [(p["used"], p["remaining"], p["reset"]) for p in report["policies"]] == [
        (0, 3, 0),
        (0, 100, 0),
    ]
    assert (status, report["counted"]) == (1, False)
    assert err.startswith("nothing matched: no counts for key 'h:nobody' in 'route:/search'")


def test_inspect_and_reset_that_match_nothing_say_so(
    serve: Callable[[App], TestClient], redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    client = serve(route_app)
    assert [client.get("/search").status_code for _ in range(4)] == [200, 200, 200, 429]
    limit = ["--storage", redis_url, "--limit", "3/minute;100/hour"]
    # A wrong key, and a path where the route's template was meant: no counts, exit 1.
    for selector in (
        ["--key", "h:wrong", "--route", "/search"],
        ["--key", IDENTITY, "--route", "/search/"],
    ):
        for command in ("inspect", "reset"):
            status, out, err = run(capsys, command, *limit, *selector)
            assert status == 1, (command, selector)
            assert err.startswith("nothing matched: no counts"), err
            assert "--route is the route's template" in err
        status, out, _ = run(capsys, "reset", *limit, *selector, "--json")
        assert (status, json.loads(out)) == (1, {"cleared": []})
    # The caller is still blocked: nothing was cleared by mistake.
    assert client.get("/search").status_code == 429
    status, out, err = run(capsys, "reset", *limit, "--key", IDENTITY, "--route", "/search")
    assert (status, err) == (0, "")
    assert client.get("/search").status_code == 200
    # Cleared once, there is nothing left to clear.
    assert run(capsys, "reset", *limit, "--key", "h:gone", "--route", "/search")[0] == 1


def test_config_supplies_storage_strategy_prefix_and_limit(
    tmp_path: Path, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "ratemw.toml"
    config.write_text(
        f'storage = "{redis_url}"\nstrategy = "sliding-window-counter"\nkey_prefix = "shop"\n'
        'application_limits = "2/minute"\n'
    )
    from ratemw.config import load

    limiter = load(config, env={}).limiter
    limiter.backends.sync.close()
    with TestClient(asgi_app(limiter, [Route("/", ok)])) as client:
        assert [client.get("/").status_code for _ in range(3)] == [200, 200, 429]
    report = json.loads(
        run(capsys, "inspect", "--config", str(config), "--key", "testclient", "--app", "--json")[1]
    )
    assert report["strategy"] == "sliding-window-counter"
    assert report["policies"][0]["storage_key"].startswith("shop:{")
    assert report["policies"][0]["remaining"] == 0
    result = python_m_ratemw("reset", "--config", str(config), "--key", "testclient", "--app")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == "cleared app-per-minute of testclient in application:*\n"
    report = json.loads(
        run(capsys, "inspect", "--config", str(config), "--key", "testclient", "--app", "--json")[1]
    )
    assert report["policies"][0]["remaining"] == 2


def test_storage_down_is_an_error_not_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.redis_servers import find_free_port

    status, out, err = run(
        capsys,
        "inspect",
        "--storage",
        f"redis://127.0.0.1:{find_free_port()}",
        "--limit",
        "1/second",
        "--key",
        "k",
        "--app",
    )
    assert (status, out) == (1, "")
    assert err.startswith("ratemw inspect: error: ")
    assert "Traceback" not in err


@pytest.mark.parametrize("alive", [True, False], ids=["reachable", "unreachable"])
def test_check_ping_connects_to_the_storage(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    alive: bool,
) -> None:
    """``check`` validates the file; ``--ping`` also proves the storage answers."""
    from tests.redis_servers import find_free_port

    monkeypatch.delenv("RATEMW_STORAGE", raising=False)
    if alive:
        url = request.getfixturevalue("redis_standalone_clean").url
    else:
        url = f"redis://:s3cret@127.0.0.1:{find_free_port()}"
    config = tmp_path / "ratemw.toml"
    config.write_text(f'storage = "{url}"\ndefault_limits = "100/minute"\n')
    assert run(capsys, "check", str(config))[0] == 0  # the file alone is fine either way
    status, out, err = run(capsys, "check", str(config), "--ping")
    if alive:
        assert (status, err) == (0, "")
        assert out.startswith(f"{url}: reachable, script loaded\n{config}: OK\n")
    else:
        assert (status, out) == (1, "")
        assert err.startswith("ratemw check: error: Redis storage redis://127.0.0.1:")
        assert "Connection refused" in err
        assert "s3cret" not in err


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_a_limiter_checks_its_storage_at_start_up(redis_standalone_clean: Any) -> None:
    from ratemw import StorageError
    from tests.redis_servers import find_free_port

    good = Limiter(storage=redis_standalone_clean.url)
    good.check_storage()
    await good.acheck_storage()
    await good.backends.async_.aclose()
    good.backends.sync.close()
    bad = Limiter(storage=f"redis://127.0.0.1:{find_free_port()}")
    with pytest.raises(StorageError):
        bad.check_storage()
    with pytest.raises(StorageError):
        await bad.acheck_storage()
    await bad.backends.async_.aclose()


def test_demo_from_the_repository() -> None:
    result = python_m_ratemw("demo")
    assert result.returncode == 0, result.stderr
    assert "HTTP/1.1 429 Too Many Requests" in result.stdout


def test_demo_elsewhere_explains(tmp_path: Path) -> None:
    result = python_m_ratemw("demo", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == (
        "ratemw demo runs examples/demo.py from ratemw's source repository: clone it, then "
        "run `make demo` (or `python -m examples.demo`) at its root\n"
    )
