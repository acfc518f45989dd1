"""The ``ratemw`` command: check a configuration, inspect or reset one caller's counts.

::

    ratemw check [CONFIG]
    ratemw inspect --storage redis://localhost:6379 --limit 5/minute --key 203.0.113.7 \\
        --route /search
    ratemw reset   --storage redis://localhost:6379 --limit 5/minute --key 203.0.113.7 \\
        --route /search
    ratemw demo

``--key`` takes the identity as the key function returns it: the client address for
``keys.client_ip()`` (``203.0.113.7``; an IPv6 client's /64 network, ``2001:db8:1:2::/64``),
``h:<value>`` for ``keys.header(...)`` (``h:sk_live_123``). The command hashes it the way the
middleware does. One selector names the counts: ``--route TEMPLATE`` (a ``@limiter.limit``
on that route), ``--scope NAME`` (``@limiter.shared_limit(scope=NAME)``), ``--rule PATTERN``
(a ``Rule``), ``--default TEMPLATE`` (``default_limits`` on that route) or ``--app``
(``application_limits``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from ratemw._core import _hit, storage_key
from ratemw._exceptions import ConfigurationError, RatemwError
from ratemw._groups import LimitGroup, groups_from
from ratemw._limiter import Limiter
from ratemw.config import Config, load
from ratemw.storage._base import Hit, Usage

__all__ = ["main"]

_SELECTORS = ("route", "scope", "rule", "app", "default")


def _ceil_seconds(ms: int) -> int:
    return -(-ms // 1000) if ms > 0 else 0


# -- check --------------------------------------------------------------------------------------


def _describe_limits(groups: Sequence[LimitGroup]) -> str:
    return "; ".join(
        g.limit if isinstance(g.limit, str) else _name(g.limit) for g in groups
    ) or "(none)"


def _name(obj: Any) -> str:
    if obj is None:
        return "(none)"
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if module and qualname and not isinstance(obj, type) and hasattr(obj, "__code__"):
        return f"{module}:{qualname}"
    return repr(obj)


def _describe(config: Config) -> list[tuple[str, str]]:
    limiter = config.limiter
    sources = {"storage": "RATEMW_STORAGE", "enabled": "RATEMW_ENABLED"}
    env = {k: v for k, v in sources.items() if v in config.overrides}
    rows = [
        ("storage", limiter.storage_uri_redacted),
        ("strategy", limiter.strategy),
        ("default_limits", _describe_limits(limiter.default_groups)),
        ("application_limits", _describe_limits(limiter.application_groups)),
        ("key", _name(limiter.key)),
        ("headers", ", ".join(limiter.header_modes) or "none"),
        ("failure_mode", limiter.failure_mode),
        ("shadow", str(limiter.shadow).lower()),
        ("enabled", str(limiter.enabled).lower()),
        ("key_prefix", limiter.key_prefix),
        ("near_limit_ratio", f"{limiter.near_limit_ratio_permille / 1000:g}"),
        ("on_breach", _name(limiter.on_breach)),
        ("on_near_limit", _name(limiter.on_near_limit)),
        ("on_storage_error", _name(limiter.on_storage_error)),
        ("metrics", _name(limiter.metrics)),
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


def _check(args: argparse.Namespace, out: TextIO) -> int:
    config = _load(args.config)
    print(f"{config.source}: OK", file=out)
    rows = _describe(config)
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}", file=out)
    print(f"  rules ({len(config.rules)})", file=out)
    for rule in config.rules:
        print(f"    {_describe_rule(rule)}", file=out)
    return 0


@contextmanager
def _project_importable(config: str | None) -> Iterator[None]:
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


def _load(config: str | None) -> Config:
    with _project_importable(config):
        return load(config)


# -- inspect and reset --------------------------------------------------------------------------


def _limiter(args: argparse.Namespace) -> tuple[Limiter, Config | None]:
    config: Config | None = None
    if args.config is not None:
        config = _load(args.config)
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
        groups = groups_from("shared", limit, bucket=args.scope, name_prefix=f"{args.scope}-",
                             **options)
    elif args.rule is not None:
        groups = groups_from("rule", limit, bucket=args.rule, **options)
    elif args.app:
        groups = groups_from("application", limit, bucket="*", name_prefix="app-", **options)
    elif args.default is not None:
        groups = groups_from("default", limit, **options)
    else:
        groups = groups_from("route", limit, **options)
    # Refuse what the limiter would (a burst without GCRA), before touching storage.
    Limiter(strategy=limiter.strategy, default_limits=limit)
    return groups[0]


def _limit_from_config(args: argparse.Namespace, config: Config | None) -> str:
    if config is not None:
        limiter = config.limiter
        found: Sequence[LimitGroup] = ()
        if args.app:
            found = limiter.application_groups
        elif args.default is not None:
            found = limiter.default_groups
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
    digest = limiter.hash_key(args.key)
    found: list[tuple[str, Hit]] = []
    for quota in group.quotas or ():
        key = storage_key(limiter, digest, bucket, quota)
        found.append((group.name_prefix + quota.name, _hit(limiter, key, quota, 1, True)))
    return bucket, found


def _report(
    args: argparse.Namespace,
    limiter: Limiter,
    bucket: str,
    named: list[tuple[str, Hit]],
    usages: list[Usage],
) -> dict[str, Any]:
    policies = []
    for (name, hit), usage in zip(named, usages, strict=True):
        used = max(hit.amount - usage.remaining, 0)
        policies.append({
            "name": name,
            "quota": hit.amount,
            "window": hit.window_ms // 1000,
            "used": used,
            "remaining": max(usage.remaining, 0),
            # Nothing counted means nothing to wait for, whatever the strategy's arithmetic.
            "reset": _ceil_seconds(usage.reset_ms) if used else 0,
            "blocked": not usage.fits,
            "retry_after": (
                None if usage.fits or usage.wait_ms is None
                else max(1, _ceil_seconds(usage.wait_ms))
            ),
            "storage_key": hit.key,
        })
    return {
        "storage": limiter.storage_uri_redacted,
        "strategy": limiter.strategy,
        "key": args.key,
        "bucket": bucket,
        "policies": policies,
    }


def _print_report(report: dict[str, Any], out: TextIO) -> None:
    print(
        f"{report['key']} in {report['bucket']} "
        f"({report['storage']}, {report['strategy']})",
        file=out,
    )
    header = ("policy", "quota", "window", "used", "remaining", "reset", "status")
    rows = [header]
    for p in report["policies"]:
        if not p["blocked"]:
            status = "ok"
        elif p["retry_after"] is None:
            status = "blocked"
        else:
            status = f"blocked, retry in {p['retry_after']} s"
        rows.append((p["name"], str(p["quota"]), f"{p['window']} s", str(p["used"]),
                     str(p["remaining"]), f"{p['reset']} s", status))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  " + "  ".join(cells).rstrip(), file=out)
    for p in report["policies"]:
        print(f"  storage key: {p['storage_key']}", file=out)


def _inspect(args: argparse.Namespace, out: TextIO) -> int:
    limiter, config = _limiter(args)
    bucket, named = _hits(args, limiter, _group(args, limiter, config))
    try:
        usages = limiter.backends.sync.peek([hit for _, hit in named])
    finally:
        limiter.backends.sync.close()
    report = _report(args, limiter, bucket, named, usages)
    if args.json:
        print(json.dumps(report, indent=2), file=out)
    else:
        _print_report(report, out)
    return 0


def _reset(args: argparse.Namespace, out: TextIO) -> int:
    limiter, config = _limiter(args)
    bucket, named = _hits(args, limiter, _group(args, limiter, config))
    storage = limiter.backends.sync
    try:
        for _, hit in named:
            storage.clear(hit.key)
    finally:
        storage.close()
    if args.json:
        print(json.dumps({"cleared": [hit.key for _, hit in named]}, indent=2), file=out)
    else:
        names = ", ".join(name for name, _ in named)
        print(f"cleared {names} of {args.key} in {bucket}", file=out)
    return 0


# -- demo ---------------------------------------------------------------------------------------


def _demo(args: argparse.Namespace, out: TextIO) -> int:
    # The demo serves examples.starlette_app by import path: the checkout must stay importable.
    with _project_importable(None):
        try:
            from examples import demo  # type: ignore[import-not-found, unused-ignore]
        except ImportError as exc:
            missing = getattr(exc, "name", None)
            if missing in ("uvicorn", "httpx2"):
                print(f"ratemw demo needs {missing}: pip install 'ratemw[demo]'",
                      file=sys.stderr)
            else:
                print(
                    "ratemw demo runs examples/demo.py from ratemw's source repository: clone "
                    "it, then run `make demo` (or `python -m examples.demo`) at its root",
                    file=sys.stderr,
                )
            return 1
        result: int = demo.main()
    return result


# -- the parser ---------------------------------------------------------------------------------


def _selector_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="CONFIG",
                        help="a ratemw.toml or pyproject.toml supplying storage, strategy, "
                             "key prefix and (for --app, --default, --rule) the limit")
    parser.add_argument("--storage", metavar="URI", help="storage URI, e.g. redis://host:6379")
    parser.add_argument("--limit", metavar="LIMIT",
                        help="the limit as declared, e.g. '5/minute;100/hour'")
    parser.add_argument("--key", required=True, metavar="IDENTITY",
                        help="what the key function returns: a client address (203.0.113.7), "
                             "h:<value> for keys.header(), ...")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--route", metavar="TEMPLATE", help="@limiter.limit on this route")
    where.add_argument("--scope", metavar="NAME", help="@limiter.shared_limit(scope=NAME)")
    where.add_argument("--rule", metavar="PATTERN", help="Rule(PATTERN, ...)")
    where.add_argument("--default", metavar="TEMPLATE", help="default_limits on this route")
    where.add_argument("--app", action="store_true", help="application_limits")
    parser.add_argument("--method", metavar="M", help="the method, for --per-method limits")
    parser.add_argument("--per-method", action="store_true",
                        help="the limit counts each method apart (per_method=True)")
    parser.add_argument("--strategy", metavar="S", help="the limiter's strategy")
    parser.add_argument("--key-prefix", metavar="P", help="the limiter's key_prefix")
    parser.add_argument("--json", action="store_true", help="print JSON")


def build_parser() -> argparse.ArgumentParser:
    """The ``ratemw`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="ratemw",
        description="Check ratemw configuration; inspect or reset a caller's rate-limit counts.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check = commands.add_parser(
        "check", help="validate a configuration file and print the effective settings",
        description="Validate ratemw.toml (or [tool.ratemw] in pyproject.toml) and print the "
                    "effective configuration. Exits 1 naming the bad value.",
    )
    check.add_argument("config", nargs="?", metavar="CONFIG",
                       help="the file (default: search the current directory)")
    inspect = commands.add_parser(
        "inspect", help="show a caller's usage, remaining and reset, consuming nothing",
        description="Show one caller's usage of a limit without consuming any of it.",
    )
    _selector_options(inspect)
    reset = commands.add_parser(
        "reset", help="clear a caller's counts (e.g. a customer blocked by mistake)",
        description="Forget one caller's counts of a limit.",
    )
    _selector_options(reset)
    commands.add_parser("demo", help="run the demo (from a checkout of the repository)")
    return parser


_COMMANDS = {"check": _check, "inspect": _inspect, "reset": _reset, "demo": _demo}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``ratemw`` command; returns the exit status.

    Example::

        from ratemw.cli import main

        status = main(["check", "ratemw.toml"])
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse has printed
        return exc.code if isinstance(exc.code, int) else 2
    if args.command in ("inspect", "reset") and bool(args.per_method) != bool(args.method):
        parser.print_usage(sys.stderr)
        print(f"ratemw {args.command}: error: --per-method and --method go together "
              "(a per-method limit counts each method apart)", file=sys.stderr)
        return 2
    try:
        return _COMMANDS[args.command](args, sys.stdout)
    except RatemwError as exc:
        print(f"ratemw {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
