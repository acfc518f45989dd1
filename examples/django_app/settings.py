"""Settings of the example project: just enough Django, plus ratemw's two lines."""

from __future__ import annotations

SECRET_KEY = "example-only-not-secret"  # an example, never deployed
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
ROOT_URLCONF = "examples.django_app.urls"
INSTALLED_APPS: list[str] = []
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

MIDDLEWARE = [
    "django.middleware.common.CommonMiddleware",
    # After AuthenticationMiddleware when you have it, so user_or_ip() sees request.user.
    "ratemw.contrib.django.RateLimitMiddleware",
]
RATEMW_LIMITER = "examples.django_app.limits.limiter"
