"""``ratemw inspect`` and ``ratemw reset``: one caller's counts of one limit, in shared storage.

The command finds the counts the way the middleware would: the same limit groups, bucket,
hashed key and storage keys.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from ratemw.cli.project import load_config
from ratemw.cli.report import build_report, print_report
from ratemw.config import Config
from ratemw.engine.hits import KeyHasher, make_hit, storage_key
from ratemw.engine.plans import PlannedPolicy, dated, key_tail
from ratemw.errors import ConfigurationError
from ratemw.limiter import Limiter
from ratemw.policy.groups import LimitGroup, groups_from
from ratemw.storage.base import Hit

__all__ = ["run_inspect", "run_reset"]

#: What inspect and reset say when the key has no counts: a wrong key, or a path given where
#: the route's template was meant, finds none.
_NOTHING = (
    "nothing matched: no {what} for key {key!r} in {bucket!r} (check the key, the limit, and "
    "that --route is the route's template, such as /items/{{id}}, not a path)"
)


def _limiter(args: argparse.Namespace) -> tuple[Limiter, Config | None]:
    config: Config | None = None
    if args.config is not None:
        config = load_config(args.config)
    base = config.limiter if config is not None else None
    storage = args.storage or (base.storage_uri if base is not None else None)
    if storage is None:
        raise ConfigurationError("no storage: pass --storage URI or --config CONFIG")
    if storage.split("://", 1)[0].lower() == "memory":
        raise ConfigurationError(
            "memory:// counts live inside each app process, out of this command's reach; "
            "inspect and reset need a shared storage such as redis://"
        )
    options: dict[str, Any] = {}
    if config is not None and isinstance(config.settings.get("storage_options"), dict):
        options = dict(config.settings["storage_options"])
    limiter = Limiter(
        storage=storage,
        strategy=args.strategy or (base.strategy if base is not None else "fixed-window"),
        key_prefix=args.key_prefix or (base.key_prefix if base is not None else "ratemw"),
        storage_options=options,
    )
    return limiter, config


def _group(args: argparse.Namespace, limiter: Limiter, config: Config | None) -> LimitGroup:
    limit = args.limit or _limit_from_config(args, config)
    options: dict[str, Any] = {"per_method": args.per_method}
    if args.scope is not None:
        groups = groups_from(
            "shared", limit, bucket=args.scope, name_prefix=f"{args.scope}-", **options
        )
    elif args.rule is not None:
        groups = groups_from("rule", limit, bucket=args.rule, **options)
    elif args.app:
        groups = groups_from("application", limit, bucket="*", name_prefix="app-", **options)
    elif args.default is not None:
        groups = groups_from("default", limit, **options)
    else:
        groups = groups_from("route", limit, **options)
    # Refuse what the limiter would (a burst without GCRA), before touching storage.
    Limiter(strategy=limiter.settings.strategy, default_limits=limit)
    return groups[0]


def _limit_from_config(args: argparse.Namespace, config: Config | None) -> str:
    if config is not None:
        limiter = config.limiter
        found: Sequence[LimitGroup] = ()
        if args.app:
            found = limiter.settings.application_groups
        elif args.default is not None:
            found = limiter.settings.default_groups
        elif args.rule is not None:
            found = [g for r in config.rules if r.path == args.rule for g in r.groups]
        limits = [g.limit for g in found if isinstance(g.limit, str)]
        if limits:
            return ";".join(limits)
    raise ConfigurationError(
        "no limit: pass --limit (e.g. --limit '5/minute;100/hour'); with --config it can be "
        "left out for --app, --default and --rule"
    )


def _template(args: argparse.Namespace) -> str:
    template: str | None = args.route if args.route is not None else args.default
    return template or ""


def _hits(
    args: argparse.Namespace, limiter: Limiter, group: LimitGroup
) -> tuple[str, list[tuple[str, Hit]]]:
    """The bucket, and the named hits of a one-unit request, as the middleware builds them."""
    method = (args.method or "GET").upper()
    bucket = group.storage_bucket(_template(args), method)
    digest = KeyHasher()(args.key)
    settings = limiter.settings
    found: list[tuple[str, Hit]] = []
    for quota in group.quotas or ():
        tail = key_tail(settings.strategy, bucket, quota)
        if quota.calendar is not None:  # the period it is now (a billing day callable: the 1st)
            day = quota.calendar.billing_day
            now = PlannedPolicy(quota, quota.name, tail, "")
            dated_now = dated(now, settings.clock_ms(), day if isinstance(day, int) else 1)
            quota, tail = dated_now.quota, dated_now.key_tail
        key = storage_key(settings, digest, tail)
        found.append((group.name_prefix + quota.name, make_hit(settings, key, quota, 1, True)))
    return bucket, found


def run_inspect(args: argparse.Namespace, out: TextIO) -> int:
    """Print the caller's usage of the limit, consuming none of it."""
    limiter, config = _limiter(args)
    bucket, named = _hits(args, limiter, _group(args, limiter, config))
    storage = limiter.backends.sync
    try:
        counted = storage.exists([hit.key for _, hit in named])
        usages = storage.peek([hit for _, hit in named])
    finally:
        storage.close()
    report = build_report(args, limiter, bucket, named, usages)
    report["counted"] = counted > 0
    if args.json:
        print(json.dumps(report, indent=2), file=out)
    else:
        print_report(report, out)
    if not counted:
        print(_NOTHING.format(what="counts", key=args.key, bucket=bucket), file=sys.stderr)
        return 1
    return 0


def run_reset(args: argparse.Namespace, out: TextIO) -> int:
    """Clear the caller's counts of the limit, and say which."""
    limiter, config = _limiter(args)
    bucket, named = _hits(args, limiter, _group(args, limiter, config))
    storage = limiter.backends.sync
    try:
        cleared = [(name, hit) for name, hit in named if storage.clear(hit.key)]
    finally:
        storage.close()
    if args.json:
        print(json.dumps({"cleared": [hit.key for _, hit in cleared]}, indent=2), file=out)
    elif cleared:
        names = ", ".join(name for name, _ in cleared)
        print(f"cleared {names} of {args.key} in {bucket}", file=out)
    if not cleared:
        print(_NOTHING.format(what="counts to clear", key=args.key, bucket=bucket), file=sys.stderr)
        return 1
    return 0
