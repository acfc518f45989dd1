"""The documentation: its examples run, and the site builds without a warning.

Every ```python block of the getting-started pages (and of the testing, strategies and tiers
pages) runs, in order, in one namespace per page, in a fresh interpreter, as if the page were a
script: a page's examples are a program a reader can paste. A block preceded by
``<!-- no-test -->`` is skipped (use it sparingly). A block preceded by ``<!-- file -->`` is a
file of the reader's project, named by its first line (``# myproject/views.py``): it is written
there, in the run's working directory (on ``sys.path``, with an ``__init__.py`` in each
folder), for the page's code to import. Tracebacks point at the Markdown file and line (for a
file, at its written copy, whose line numbers are the Markdown's).

The install line (``pip install ...`` in a ``sh`` block) of a getting-started page, the home
page and the README is what their reader installs: the page's imports import, and its examples
run, with only what that line installs importable (besides the standard library).

Every ```python block of every page and of the README is valid Python, and a block that is a
whole file (its first line a ``# name.py`` comment) reads no name it does not define or import.
"""

from __future__ import annotations

import ast
import builtins
import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
from packaging.requirements import Requirement

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
RUN = [
    *sorted(DOCS.glob("getting-started/*.md")),
    DOCS / "testing.md",
    DOCS / "limits-from-code.md",
    DOCS / "strategies.md",
    DOCS / "tiers.md",
    DOCS / "calendar-quotas.md",
]
PAGES = [*sorted(DOCS.rglob("*.md")), README]
# Whether ratemw is on PyPI: until it is, install lines install it from a checkout
# (`pip install "path/to/ratemw[flask]"`), since `pip install ratemw` fails. Flip it with the
# first release, and the install lines with it.
ON_PYPI = False
# Pages whose install line is what their reader installs before anything else on the page.
INSTALLING = [*sorted(DOCS.glob("getting-started/*.md")), DOCS / "index.md", README]
NO_TEST = "<!-- no-test -->"
FILE = "<!-- file -->"
FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
SHELL_FENCE = re.compile(r"^```(?:sh|shell|bash)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
FILE_NAME = re.compile(r"#[ \t]*([\w.-]+(?:/[\w.-]+)*\.py)\b")

# Installed in the interpreters below: the distributions a page's install line leaves out
# (their top-level modules, in DOCS_NOT_INSTALLED) cannot be imported, as for a reader.
FINDER = """
import json, os, sys

class NotInstalled:
    modules = frozenset(json.loads(os.environ.get("DOCS_NOT_INSTALLED", "[]")))

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in self.modules:
            raise ModuleNotFoundError(
                f"No module named {name!r}: the page's install line does not install it",
                name=name,
            )
        return None

sys.meta_path.insert(0, NotInstalled())
"""

# Runs a page's blocks as the __main__ module, so that pickling works as in a script. Each
# block is compiled with its Markdown line numbers.
RUNNER = (
    FINDER
    + """
import types
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
)

# Runs each argument, an import statement of a page.
IMPORTER = (
    FINDER
    + """
for statement in sys.argv[1:]:
    exec(statement, {})
"""
)


class Block(NamedTuple):
    line: int  # the block's first code line, 0-based
    code: str
    mark: str  # the line just above the fence: NO_TEST, FILE or anything else

    @property
    def runs(self) -> bool:
        return self.mark not in (NO_TEST, FILE)

    @property
    def file_name(self) -> str | None:
        """The file the block is, when its first line names one: ``# myproject/urls.py``."""
        match = FILE_NAME.match(self.code)
        return match.group(1) if match else None


def blocks(page: Path) -> list[Block]:
    text = page.read_text("utf-8")
    found = []
    for match in FENCE.finditer(text):
        first_line = text.count("\n", 0, match.start(1))
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        found.append(Block(first_line, match.group(1), before.strip()))
    return found


def write_files(page: Path, directory: Path) -> None:
    """Write the page's ``<!-- file -->`` blocks where their first lines say."""
    for block in blocks(page):
        if block.mark != FILE:
            continue
        assert block.file_name, f"{page.name}:{block.line}: a file block names its file first"
        target = directory / block.file_name
        for folder in reversed(target.relative_to(directory).parents[:-1]):
            (directory / folder).mkdir(exist_ok=True)
            (directory / folder / "__init__.py").touch()
        target.write_text("\n" * block.line + block.code, "utf-8")


# -- install lines ----------------------------------------------------------------------------


def install_lines(page: Path) -> list[list[str]]:
    """The arguments of each ``pip install`` in the page's shell blocks."""
    found = []
    for match in SHELL_FENCE.finditer(page.read_text("utf-8")):
        for line in match.group(1).splitlines():
            words = shlex.split(line, comments=True)
            if words[:2] == ["python", "-m"]:
                words = words[2:]
            if words[:2] == ["pip", "install"]:
                found.append(words[2:])
    return found


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement(argument: str) -> tuple[str, frozenset[str]]:
    """The distribution and extras a ``pip install`` argument names; a path is ratemw's
    checkout (``.``, ``path/to/ratemw[flask]``)."""
    path, _, extras = argument.partition("[")
    if path == "." or "/" in path:
        return "ratemw", frozenset(e.strip() for e in extras.rstrip("]").split(",") if e.strip())
    parsed = Requirement(argument)
    return canonical(parsed.name), frozenset(parsed.extras)


def requires(name: str, extras: frozenset[str]) -> list[str]:
    if name == "ratemw":  # from the checkout's pyproject.toml, the source of truth
        project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]
        optional = project["optional-dependencies"]
        unknown = sorted(extras - set(optional))
        assert not unknown, f"ratemw has no extra {unknown}: it has {sorted(optional)}"
        return [*project["dependencies"], *(r for extra in sorted(extras) for r in optional[extra])]
    try:
        return importlib.metadata.requires(name) or []
    except importlib.metadata.PackageNotFoundError:  # not installed here: nothing to import
        return []


def installed_by(arguments: list[str]) -> set[str]:
    """Every distribution ``pip install *arguments`` installs, dependencies included."""
    todo = [requirement(a) for a in arguments if not a.startswith("-")]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        for text in requires(name, extras):
            needed = Requirement(text)
            if needed.marker is None or any(
                needed.marker.evaluate({"extra": extra}) for extra in (*extras, "")
            ):
                todo.append((canonical(needed.name), frozenset(needed.extras)))
    return {name for name, _ in seen}


def not_installed(page: Path) -> list[str]:
    """Top-level modules of the distributions installed here that the page's install lines
    leave out (none, for a page not in INSTALLING)."""
    if page not in INSTALLING:
        return []
    lines = install_lines(page)
    assert lines, f"{page.name}: no `pip install` line"
    installed = set().union(*(installed_by(arguments) for arguments in lines))
    return sorted(
        module
        for module, distributions in importlib.metadata.packages_distributions().items()
        if module not in sys.stdlib_module_names
        and not any(canonical(d) in installed for d in distributions)
    )


def page_env(page: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RATEMW_", "DJANGO_"))}
    env["PYTHONWARNINGS"] = "error"
    env["DOCS_NOT_INSTALLED"] = json.dumps(not_installed(page))
    return env


# -- names ------------------------------------------------------------------------------------


def unbound_names(code: str) -> set[str]:
    """Names the code reads that no statement of it binds and that are not builtins.

    Scopes are not told apart (a name bound anywhere counts as bound everywhere): this finds
    a missing import, not every mistake.
    """
    tree = ast.parse(code)
    bound = set(dir(builtins)) | {"__file__", "__name__"}
    read = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (read if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.alias):
            if node.name == "*":
                return set()  # a star import binds names we cannot see
            bound.add((node.asname or node.name).partition(".")[0])
        elif isinstance(node, ast.ExceptHandler | ast.MatchAs | ast.MatchStar) and node.name:
            bound.add(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            bound.add(node.rest)
    return read - bound


def parsed(code: str) -> ast.Module:
    """The code's syntax tree; an empty one when it is not Python (its own test says so)."""
    try:
        return ast.parse(code)
    except SyntaxError:
        return ast.Module(body=[], type_ignores=[])


def imports(code: str) -> list[ast.Import | ast.ImportFrom]:
    """The code's absolute import statements."""
    return [
        node
        for node in ast.walk(parsed(code))
        if isinstance(node, ast.Import) or (isinstance(node, ast.ImportFrom) and not node.level)
    ]


def imported_top_levels(node: ast.Import | ast.ImportFrom) -> set[str]:
    """The top-level modules an import statement imports."""
    if isinstance(node, ast.ImportFrom):
        return {(node.module or "").partition(".")[0]}
    return {alias.name.partition(".")[0] for alias in node.names}


# -- tests ------------------------------------------------------------------------------------


def test_every_getting_started_page_is_here_and_mostly_tested() -> None:
    names = {page.name for page in DOCS.glob("getting-started/*.md")}
    assert names >= {"starlette.md", "fastapi.md", "flask.md", "django.md"}
    for page in DOCS.glob("getting-started/*.md"):
        found = blocks(page)
        assert sum(b.runs for b in found) >= 3, f"{page.name}: too few runnable examples"
    for page in RUN:
        found = blocks(page)
        assert any(b.runs for b in found), f"{page.name}: no runnable example"
        assert sum(b.mark == NO_TEST for b in found) <= 2, f"{page.name}: too many no-test"


@pytest.mark.parametrize("page", RUN, ids=lambda p: str(p.relative_to(DOCS)))
def test_examples_run(page: Path, tmp_path: Path) -> None:
    write_files(page, tmp_path)
    starts = [str(b.line) for b in blocks(page) if b.runs]
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, str(page), *starts],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=page_env(page),
    )
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.mark.parametrize("page", INSTALLING, ids=lambda p: str(p.relative_to(ROOT)))
def test_install_line_installs_what_the_page_imports(page: Path, tmp_path: Path) -> None:
    # Imports of installed distributions' modules, not of the reader's own (myproject.views).
    distributed = importlib.metadata.packages_distributions()
    statements = sorted(
        {
            ast.unparse(node)
            for block in blocks(page)
            for node in imports(block.code)
            if imported_top_levels(node) <= distributed.keys()
        }
    )
    assert statements, f"{page.name}: no imports to check"
    result = subprocess.run(
        [sys.executable, "-c", IMPORTER, *statements],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=page_env(page),
    )
    assert result.returncode == 0, (
        f"{page.name}: install line(s) {install_lines(page)}\n{result.stderr[-4000:]}"
    )


@pytest.mark.parametrize("page", INSTALLING, ids=lambda p: str(p.relative_to(ROOT)))
def test_install_lines_install_ratemw_as_it_can_be_installed(page: Path) -> None:
    assert install_lines(page), f"{page.name}: no `pip install` line"
    for arguments in install_lines(page):
        named = [a for a in arguments if not a.startswith("-") and requirement(a)[0] == "ratemw"]
        assert named, f"{page.name}: `pip install {' '.join(arguments)}` does not install ratemw"
        by_path = [a for a in named if a.partition("[")[0] == "." or "/" in a]
        if ON_PYPI:
            assert not by_path, f"{page.name}: ratemw is on PyPI: install {by_path} by name"
        else:
            assert by_path == named, (
                f"{page.name}: ratemw is not on PyPI yet: `pip install {' '.join(named)}` fails; "
                "install it from a checkout (path/to/ratemw)"
            )


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_example_is_valid_python(page: Path) -> None:
    for block in blocks(page):
        compile("\n" * block.line + block.code, str(page), "exec")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_files_import_what_they_use(page: Path) -> None:
    for block in blocks(page):
        if block.file_name:
            unbound = unbound_names(block.code)
            assert not unbound, (
                f"{page.relative_to(ROOT)}:{block.line + 1}: {block.file_name} uses "
                f"{sorted(unbound)} without importing or defining them"
            )


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_django_middleware_is_added_to_the_projects_own(page: Path) -> None:
    # A MIDDLEWARE list pasted whole would drop Django's own middleware (sessions, CSRF,
    # authentication): the docs show the project's list, with `...` for what it already has.
    for block in blocks(page):
        for node in ast.walk(parsed(block.code)):
            if (
                isinstance(node, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "MIDDLEWARE" for t in node.targets)
                and isinstance(node.value, ast.List)
            ):
                assert any(
                    isinstance(item, ast.Constant) and item.value is Ellipsis
                    for item in node.value.elts
                ), f"{page.relative_to(ROOT)}:{block.line + node.lineno}: MIDDLEWARE replaced whole"


def test_readme_declaring_limits_runs(tmp_path: Path) -> None:
    text = README.read_text("utf-8")
    start = text.index("\n## Declaring limits\n")
    end = text.index("\n## ", start + 1)
    first, last = text.count("\n", 0, start), text.count("\n", 0, end)
    starts = [str(b.line) for b in blocks(README) if first < b.line < last]
    assert len(starts) >= 2
    # Starlette builds the middleware (and checks its rules) on the first request: build it.
    check = "\nmodule.app.build_middleware_stack()\n"
    result = subprocess.run(
        [sys.executable, "-c", RUNNER + check, str(README), *starts],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=page_env(README),
    )
    assert result.returncode == 0, result.stderr[-4000:]


def test_site_builds_strictly(tmp_path: Path) -> None:
    if importlib.util.find_spec("mkdocs") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("mkdocs is not installed: pip install -e '.[docs]'")
        pytest.skip("mkdocs is not installed (pip install -e '.[docs]')")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's banner, not a warning of ours
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(ROOT / "mkdocs.yml"),
            "--site-dir",
            str(tmp_path / "site"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-6000:]
    assert (tmp_path / "site" / "getting-started" / "fastapi" / "index.html").is_file()
    assert (tmp_path / "site" / "reference" / "index.html").is_file()
