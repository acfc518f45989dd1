"""Finding and reading a configuration file: ``ratemw.toml``, or ``[tool.ratemw]`` in
``pyproject.toml``.

Every error names the file, and where in it the TOML is wrong.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

from ratemw.errors import ConfigurationError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

__all__ = ["CONFIG_FILES", "find", "parse", "read", "tomllib"]

CONFIG_FILES = ("ratemw.toml", "pyproject.toml")

_TOML_WHERE = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)\s*$")


def find(path: str | os.PathLike[str] | None) -> Path:
    """The file to read: ``path`` itself, or the first of ``CONFIG_FILES`` in a directory."""
    if path is not None and not Path(path).is_dir():
        return Path(path)
    folder = Path(path) if path is not None else Path()
    for name in CONFIG_FILES:
        candidate = folder / name
        if name == "pyproject.toml" and candidate.is_file():
            if _has_tool_table(candidate):
                return candidate
        elif candidate.is_file():
            return candidate
    where = str(folder.resolve()) + (" (the current directory)" if path is None else "")
    raise ConfigurationError(
        f"no ratemw configuration in {where}: expected a ratemw.toml, or a [tool.ratemw] "
        "table in pyproject.toml"
    )


def _has_tool_table(path: Path) -> bool:
    try:
        document = parse(path.read_text("utf-8"), str(path))
    except (OSError, ConfigurationError):
        return True  # let load() report what is wrong with it
    return isinstance(document.get("tool"), dict) and "ratemw" in document["tool"]


def parse(text: str, source: str) -> dict[str, Any]:
    """The TOML document in ``text``; an error names ``source`` and the line and column."""
    try:
        document: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        found = _TOML_WHERE.search(message)
        if found is None:
            raise ConfigurationError(f"{source}: invalid TOML: {message}") from None
        where = f"line {found[1]}, column {found[2]}" if found[1] else "end of file"
        raise ConfigurationError(
            f"{source}: {where}: invalid TOML: {message[: found.start()]}"
        ) from None
    return document


def read(found: Path) -> tuple[dict[str, Any], str]:
    """The settings table of ``found``, and the prefix that names its keys in messages.

    A ``pyproject.toml`` holds them in its ``[tool.ratemw]`` table; any other file holds
    nothing else.
    """
    source = str(found)
    try:
        text = found.read_text("utf-8")
    except OSError as exc:
        raise ConfigurationError(f"{source}: cannot read the file: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigurationError(f"{source}: not UTF-8 text: {exc.reason}") from None
    document = parse(text, source)
    if found.name != "pyproject.toml":
        return document, ""
    tool = document.get("tool")
    table = tool.get("ratemw") if isinstance(tool, dict) else None
    if not isinstance(table, dict):
        raise ConfigurationError(f"{source}: no [tool.ratemw] table")
    return table, "tool.ratemw."
