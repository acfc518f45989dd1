"""``python -m ratemw``: the ``ratemw`` command."""

from __future__ import annotations

import sys

from ratemw.cli import main

sys.exit(main())
