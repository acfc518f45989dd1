"""``ratemw check``: validate a configuration file and print the effective settings."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, TextIO

from ratemw.cli.project import load_config
from ratemw.config import Config
from ratemw.policy.groups import LimitGroup

__all__ = ["run_check"]


def _describe_limits(groups: Sequence[LimitGroup]) -> str:
    return (
        "; ".join(g.limit if isinstance(g.limit, str) else _name(g.limit) for g in groups)
        or "(none)"
    )


def _name(obj: Any) -> str:
    if obj is None:
        return "(none)"
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if module and qualname and not isinstance(obj, type) and hasattr(obj, "__code__"):
        return f"{module}:{qualname}"
    return repr(obj)


def _describe(config: Config) -> list[tuple[str, str]]:
    limiter = config.limiter.settings
    sources = {"storage": "RATEMW_STORAGE", "enabled": "RATEMW_ENABLED"}
    env = {k: v for k, v in sources.items() if v in config.overrides}
    rows = [
        ("storage", limiter.storage_name),
        ("strategy", limiter.strategy),
        ("default_limits", _describe_limits(limiter.default_groups)),
        ("application_limits", _describe_limits(limiter.application_groups)),
        ("key", _name(limiter.key)),
        ("headers", ", ".join(limiter.header_modes) or "none"),
        ("failure_mode", limiter.failure_mode),
        ("shadow", str(limiter.shadow).lower()),
        ("enabled", str(limiter.enabled).lower()),
        ("key_prefix", limiter.key_prefix),
        ("near_limit_ratio", f"{limiter.near_limit_permille / 1000:g}"),
        ("on_breach", _name(limiter.on_breach)),
        ("on_near_limit", _name(limiter.on_near_limit)),
        ("on_storage_error", _name(limiter.on_storage_error)),
        ("metrics", _name(limiter.metrics)),
        # The safe defaults: what is not counted unless asked.
        (
            "count_preflight",
            "true" if limiter.count_preflight else "false (CORS preflights pass uncounted)",
        ),
        ("exempt_paths", ", ".join(e.path for e in limiter.exempt_paths) or "(none)"),
        ("HEAD", "counted as GET"),
    ]
    return [(k, f"{v}  (from {env[k]})" if k in env else v) for k, v in rows]


def _describe_rule(rule: Any) -> str:
    group = rule.groups[0]
    parts = [f"{rule.path}  {rule.limit}"]
    if rule.methods:
        parts.append("methods=" + ",".join(sorted(rule.methods)))
    if group.per_method:
        parts.append("per_method")
    if group.shadow:
        parts.append("shadow")
    if group.key is not None:
        parts.append(f"key={_name(group.key)}")
    return "  ".join(parts)


def run_check(args: argparse.Namespace, out: TextIO) -> int:
    """Print the file's settings and rules to ``out``; a bad value raises. With ``--ping``,
    the storage must answer too (a ``StorageError`` says why it did not)."""
    config = load_config(args.config)
    if getattr(args, "ping", False):
        try:
            config.limiter.check_storage()
        finally:
            config.limiter.backends.sync.close()
        print(f"{config.limiter.storage_uri_redacted}: reachable, script loaded", file=out)
    print(f"{config.source}: OK", file=out)
    rows = _describe(config)
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}", file=out)
    print(f"  rules ({len(config.rules)})", file=out)
    for rule in config.rules:
        print(f"    {_describe_rule(rule)}", file=out)
    return 0
