"""The ``Limiter`` (and middleware options) Django's settings configure, built once per process.

``settings.RATEMW_LIMITER`` names a ``Limiter`` (a dotted path, or the object itself);
``settings.RATEMW`` holds ``Limiter`` keyword arguments (callables may be dotted paths, rules
may be dicts) and the middleware's ``handler``. Changing either setting (``override_settings``
in tests) rebuilds it.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from django.core.signals import setting_changed  # type: ignore[import-untyped]
from django.utils.module_loading import import_string  # type: ignore[import-untyped]

from ratemw.engine import Planner
from ratemw.errors import ConfigurationError, RateLimitExceeded
from ratemw.limiter import Limiter
from ratemw.policy.rules import Rule

__all__ = ["Config", "current", "get_limiter"]

DjangoExceededHandler = Callable[[Any, RateLimitExceeded], Any]

_SETTINGS = ("RATEMW", "RATEMW_LIMITER")
_MIDDLEWARE_OPTIONS = frozenset({"handler"})
_CALLABLE_OPTIONS = frozenset(
    {"key", "on_breach", "on_near_limit", "on_storage_error", "clock", "handler"}
)


@dataclass(frozen=True)
class Config:
    limiter: Limiter
    handler: DjangoExceededHandler | None
    planner: Planner


_lock = threading.Lock()
_config: Config | None = None


def _import(value: Any, what: str) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return import_string(value)
    except ImportError as exc:
        raise ConfigurationError(f"{what}: cannot import {value!r}: {exc}") from None


def _import_callable(value: Any, what: str) -> Any:
    """A callable option given in settings, perhaps as a dotted path.

    A path naming a class (``"ratemw.keys.client_ip"``) means an instance made with no
    arguments: calling the class per request would make a new key every time.
    """
    found = _import(value, what)
    if isinstance(value, str) and isinstance(found, type):
        found = found()
    if found is not None and not callable(found):
        raise ConfigurationError(f"{what} must be callable, got {found!r}")
    return found


def _rule(value: Any) -> Rule:
    if isinstance(value, Rule):
        return value
    if isinstance(value, Mapping):
        try:
            return Rule(**value)
        except TypeError as exc:
            raise ConfigurationError(
                f"settings.RATEMW['rules']: bad rule {value!r}: {exc}"
            ) from None
    raise ConfigurationError(
        f"settings.RATEMW['rules']: bad rule {value!r}: expected a ratemw.Rule or a dict such "
        "as {'path': '/api/*', 'limit': '100/minute'}"
    )


def _limiter_from_options(options: dict[str, Any]) -> Limiter:
    known = set(inspect.signature(Limiter).parameters)
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigurationError(
            f"unknown settings.RATEMW key(s) {unknown}; expected some of "
            f"{sorted(known | _MIDDLEWARE_OPTIONS)}"
        )
    for name in _CALLABLE_OPTIONS & set(options):
        options[name] = _import_callable(options[name], f"settings.RATEMW[{name!r}]")
    if "rules" in options:
        options["rules"] = [_rule(rule) for rule in options["rules"]]
    return Limiter(**options)


def _load() -> Config:
    from django.conf import settings  # type: ignore[import-untyped]

    dotted = getattr(settings, "RATEMW_LIMITER", None)
    options = dict(getattr(settings, "RATEMW", None) or {})
    handler = _import_callable(options.pop("handler", None), "settings.RATEMW['handler']")
    if dotted is not None:
        if options:
            raise ConfigurationError(
                "settings.RATEMW_LIMITER names the limiter, so settings.RATEMW may only hold "
                f"middleware options {sorted(_MIDDLEWARE_OPTIONS)}, not {sorted(options)}"
            )
        limiter = _import(dotted, "settings.RATEMW_LIMITER")
        if not isinstance(limiter, Limiter):
            raise ConfigurationError(
                f"settings.RATEMW_LIMITER must name a ratemw.Limiter, got {limiter!r}"
            )
    elif options:
        limiter = _limiter_from_options(options)
    else:
        raise ConfigurationError(
            "ratemw is not configured: set settings.RATEMW_LIMITER = 'dotted.path.to.limiter' "
            "or settings.RATEMW = {'default_limits': '100/minute', ...}"
        )
    return Config(limiter, handler, Planner())


def current() -> Config:
    config = _config
    if config is None:
        config = _build_once()
    return config


def _build_once() -> Config:
    global _config
    # One Limiter per process: with memory storage, two would keep two sets of counts.
    with _lock:
        if _config is None:
            _config = _load()
            from ratemw.contrib._django_usage import usage_view

            _config.limiter.exempt(usage_view)  # the usage endpoint counts nothing
        return _config


def _settings_changed(*, setting: str, **kwargs: Any) -> None:
    global _config
    if setting in _SETTINGS:
        with _lock:
            _config = None


setting_changed.connect(_settings_changed, dispatch_uid="ratemw.contrib.django")


def get_limiter() -> Limiter:
    """The ``Limiter`` the settings configure (built once per process from ``RATEMW``).

    Example::

        from ratemw.contrib.django import get_limiter

        limiter = get_limiter()

        @limiter.limit("5/minute")
        def search(request): ...
    """
    return current().limiter
