"""``ratemw.client`` as a package (``ratemw/client/__init__.py``): its public names, and that
httpx and requests stay optional."""

from __future__ import annotations

import doctest
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import ratemw
import ratemw.client
from ratemw.client import _policies

ROOT = Path(__file__).resolve().parents[2]

# Makes the named top-level modules impossible to import, as if they were not installed.
BLOCK = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {blocked!r}:
            raise ImportError(f"No module named {{name!r}} (blocked)")
sys.meta_path.insert(0, Block())
"""


def run_without(blocked: set[str], code: str) -> subprocess.CompletedProcess[str]:
    script = BLOCK.format(blocked=blocked) + textwrap.dedent(code)
    return subprocess.run(
        [sys.executable, "-W", "error", "-c", script], cwd=ROOT, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip


def test_the_client_needs_neither_httpx_nor_requests() -> None:
    result = run_without({"httpx", "httpx2", "requests"}, """
        import sys
        import ratemw.client
        from ratemw.client import Policy, RateLimited, parse_rate_limit
        [policy] = parse_rate_limit({"RateLimit": '"a";r=0;t=5'})
        assert policy == Policy("a", None, None, 0, 5.0, "draft-10"), policy
        loaded = {"httpx", "httpx2", "requests"} & set(sys.modules)
        assert not loaded, loaded
        for name, extra in [("RateLimitTransport", "httpx"), ("AsyncRateLimitTransport", "httpx"),
                            ("RateLimitAdapter", "requests")]:
            try:
                getattr(ratemw.client, name)
            except ImportError as error:
                assert f"pip install 'ratemw[{extra}]'" in str(error), error
            else:
                raise AssertionError(name)
    """)  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_httpx2_alone_will_do() -> None:
    result = run_without({"httpx"}, """
        import httpx2
        from ratemw.client import RateLimitTransport

        assert issubclass(RateLimitTransport, httpx2.BaseTransport)
        seen = []
        def handler(request):
            seen.append(request)
            if len(seen) == 1:
                return httpx2.Response(429, headers={"Retry-After": "0"})
            return httpx2.Response(200)
        transport = RateLimitTransport(httpx2.MockTransport(handler), sleep=seen.append)
        with httpx2.Client(transport=transport) as client:
            assert client.get("https://api.example/").status_code == 200
        assert len(seen) == 3, seen  # two requests, one sleep
    """)  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_public_names_are_sorted_and_resolve() -> None:
    names = ratemw.client.__all__
    assert names == sorted(names)
    assert set(names) == {
        "AsyncRateLimitTransport", "Policy", "RateLimitAdapter", "RateLimitTransport",
        "RateLimited", "parse_rate_limit",
    }  # fmt: skip
    for name in names:
        assert getattr(ratemw.client, name).__module__.startswith("ratemw.client")
    assert set(names) <= set(dir(ratemw.client))
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        ratemw.client.Nope  # noqa: B018


@pytest.mark.parametrize("name", ratemw.client.__all__)
def test_every_public_name_has_a_docstring_with_an_example(name: str) -> None:
    doc = getattr(ratemw.client, name).__doc__ or ""
    assert "Example" in doc, name


def test_rate_limited_is_a_ratemw_error_shown_from_the_public_module() -> None:
    assert issubclass(ratemw.client.RateLimited, ratemw.RatemwError)
    assert ratemw.client.RateLimited.__module__ == "ratemw.client"


def test_the_examples_in_docstrings_run() -> None:
    result = doctest.testmod(_policies)
    assert result.attempted >= 2
    assert result.failed == 0
