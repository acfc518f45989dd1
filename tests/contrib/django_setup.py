"""Django, configured once in-process for the tests that need it (and only those).

Tests then point ``ROOT_URLCONF``, ``MIDDLEWARE`` and ``RATEMW_LIMITER`` at what they need
with ``override_settings``.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

urlpatterns: list[Any] = []  # the default URLconf: nothing routes

MIDDLEWARE = ["ratemw.contrib.django.RateLimitMiddleware"]


def configure_django() -> None:
    """Configure and set up Django for this process, once."""
    import django
    from django.conf import settings

    if settings.configured:
        return
    settings.configure(
        SECRET_KEY="ratemw-tests",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        MIDDLEWARE=MIDDLEWARE,
        INSTALLED_APPS=[],
        DATABASES={},
        USE_TZ=True,
    )
    django.setup()


@contextmanager
def project(
    limiter: Any,
    *patterns: Any,
    middleware: list[str] = MIDDLEWARE,
    **settings: Any,
) -> Iterator[types.ModuleType]:
    """Settings pointing at a URLconf of ``patterns`` and at ``limiter``."""
    from django.test import override_settings

    urlconf = types.ModuleType("urls")
    urlconf.urlpatterns = list(patterns)  # type: ignore[attr-defined]
    with override_settings(
        ROOT_URLCONF=urlconf, RATEMW_LIMITER=limiter, MIDDLEWARE=middleware, **settings
    ):
        yield urlconf
