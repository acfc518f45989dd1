"""``ratemw demo``: run ``examples/demo.py`` from a checkout of the repository."""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from ratemw.cli.project import project_importable

__all__ = ["run_demo"]


def run_demo(args: argparse.Namespace, out: TextIO) -> int:
    """Run the demo; 1, with what to do printed, when it cannot be imported."""
    # The demo serves examples.starlette_app by import path: the checkout must stay importable.
    with project_importable(None):
        try:
            from examples import demo  # type: ignore[import-not-found, unused-ignore]
        except ImportError as exc:
            missing = getattr(exc, "name", None)
            if missing in ("uvicorn", "httpx2"):
                print(f"ratemw demo needs {missing}: pip install 'ratemw[demo]'", file=sys.stderr)
            else:
                print(
                    "ratemw demo runs examples/demo.py from ratemw's source repository: clone "
                    "it, then run `make demo` (or `python -m examples.demo`) at its root",
                    file=sys.stderr,
                )
            return 1
        result: int = demo.main()
    return result
