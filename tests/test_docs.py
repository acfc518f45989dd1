"""The documentation: its examples run, and the site builds without a warning.

Every ```python block of the getting-started pages (and of the testing page) runs, in order,
in one namespace per page, in a fresh interpreter, as if the page were a script: a page's
examples are a program a reader can paste. A block preceded by ``<!-- no-test -->`` is skipped
(use it sparingly). Tracebacks point at the Markdown file and line.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
RUN = [
    *sorted(DOCS.glob("getting-started/*.md")),
    DOCS / "testing.md",
    DOCS / "strategies.md",
    DOCS / "tiers.md",
]
OURS = [
    DOCS / name
    for name in ("index.md", "strategies.md", "headers-and-errors.md", "operations.md",
                 "testing.md", "migration.md", "reference.md")
]
NO_TEST = "<!-- no-test -->"
FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)

# Runs a page's blocks as the __main__ module, so that Django's ROOT_URLCONF = __name__ and
# pickling work as in a script. Each block is compiled with its Markdown line numbers.
RUNNER = """
import re, sys, types
path, starts = sys.argv[1], [int(n) for n in sys.argv[2:]]
with open(path, encoding="utf-8") as page:
    text = page.read()
lines = text.splitlines(keepends=True)
module = types.ModuleType("__main__")
module.__file__ = path
sys.modules["__main__"] = module
for start in starts:
    body = []
    for line in lines[start:]:
        if line.rstrip() == "```":
            break
        body.append(line)
    code = compile("\\n" * start + "".join(body), path, "exec")
    exec(code, module.__dict__)
"""


def blocks(page: Path) -> list[tuple[int, str, bool]]:
    """(line of the block's first code line, 0-based; code; runs) for each python block."""
    text = page.read_text("utf-8")
    found = []
    for match in FENCE.finditer(text):
        first_line = text.count("\n", 0, match.start(1))
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        found.append((first_line, match.group(1), before.strip() != NO_TEST))
    return found


def test_every_getting_started_page_is_here_and_mostly_tested() -> None:
    names = {page.name for page in DOCS.glob("getting-started/*.md")}
    assert names >= {"starlette.md", "fastapi.md", "flask.md", "django.md"}
    for page in DOCS.glob("getting-started/*.md"):
        found = blocks(page)
        assert sum(runs for _, _, runs in found) >= 3, f"{page.name}: too few runnable examples"
    for page in RUN:
        found = blocks(page)
        assert any(runs for _, _, runs in found), f"{page.name}: no runnable example"
        assert sum(not runs for _, _, runs in found) <= 2, f"{page.name}: too many no-test"


@pytest.mark.parametrize("page", RUN, ids=lambda p: str(p.relative_to(DOCS)))
def test_examples_run(page: Path, tmp_path: Path) -> None:
    starts = [str(line) for line, _, runs in blocks(page) if runs]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RATEMW_", "DJANGO_"))}
    env["PYTHONWARNINGS"] = "error"
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, str(page), *starts],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env,
    )
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.mark.parametrize("page", OURS, ids=lambda p: p.name)
def test_other_examples_are_valid_python(page: Path) -> None:
    for line, code, _ in blocks(page):
        compile("\n" * line + code, str(page), "exec")


def test_site_builds_strictly(tmp_path: Path) -> None:
    if importlib.util.find_spec("mkdocs") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("mkdocs is not installed: pip install -e '.[docs]'")
        pytest.skip("mkdocs is not installed (pip install -e '.[docs]')")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's banner, not a warning of ours
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
         str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stderr[-6000:]
    assert (tmp_path / "site" / "getting-started" / "fastapi" / "index.html").is_file()
    assert (tmp_path / "site" / "reference" / "index.html").is_file()
