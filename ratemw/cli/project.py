"""The project the ``ratemw`` command runs in: its modules importable, its configuration loaded."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ratemw.config import Config, load

__all__ = ["load_config", "project_importable"]


@contextmanager
def project_importable(config: str | None) -> Iterator[None]:
    """Let import paths in the file name the project's modules, as ``python -m`` would.

    The current directory and the configuration's directory are on ``sys.path`` while the
    file is loaded (its hooks are imported then), and only then.
    """
    saved = list(sys.path)
    folders = [Path.cwd()]
    if config is not None:
        path = Path(config).resolve()
        folders.append(path if path.is_dir() else path.parent)
    for folder in folders:
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        sys.path[:] = saved


def load_config(config: str | None) -> Config:
    """Load ``config`` (``None``: search the current directory) with the project importable."""
    with project_importable(config):
        return load(config)
