"""The project's ``Limiter``: settings name it (``RATEMW_LIMITER``), views decorate with it."""

from __future__ import annotations

import os

from ratemw import Limiter
from ratemw.contrib.django import user_or_ip

limiter = Limiter(
    storage=os.environ.get("RATEMW_STORAGE", "memory://"),
    default_limits="20/minute",
    key=user_or_ip(),  # signed-in users by account, everyone else by address
)
