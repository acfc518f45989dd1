"""The ``ratemw`` command: check a configuration, inspect or reset one caller's counts.

::

    ratemw check [CONFIG] [--ping]
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
import os
import sys
from collections.abc import Sequence

from ratemw.cli.check import run_check
from ratemw.cli.counts import run_inspect, run_reset
from ratemw.cli.demo import run_demo
from ratemw.errors import RatemwError

__all__ = ["main"]


def _selector_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="CONFIG",
        help="a ratemw.toml or pyproject.toml supplying storage, strategy, "
        "key prefix and (for --app, --default, --rule) the limit",
    )
    parser.add_argument("--storage", metavar="URI", help="storage URI, e.g. redis://host:6379")
    parser.add_argument(
        "--limit", metavar="LIMIT", help="the limit as declared, e.g. '5/minute;100/hour'"
    )
    parser.add_argument(
        "--key",
        required=True,
        metavar="IDENTITY",
        help="what the key function returns: a client address (203.0.113.7), "
        "h:<value> for keys.header(), ...",
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--route", metavar="TEMPLATE", help="@limiter.limit on this route")
    where.add_argument("--scope", metavar="NAME", help="@limiter.shared_limit(scope=NAME)")
    where.add_argument("--rule", metavar="PATTERN", help="Rule(PATTERN, ...)")
    where.add_argument("--default", metavar="TEMPLATE", help="default_limits on this route")
    where.add_argument("--app", action="store_true", help="application_limits")
    parser.add_argument("--method", metavar="M", help="the method, for --per-method limits")
    parser.add_argument(
        "--per-method",
        action="store_true",
        help="the limit counts each method apart (per_method=True)",
    )
    parser.add_argument("--strategy", metavar="S", help="the limiter's strategy")
    parser.add_argument("--key-prefix", metavar="P", help="the limiter's key_prefix")
    parser.add_argument("--json", action="store_true", help="print JSON")


def build_parser() -> argparse.ArgumentParser:
    """The ``ratemw`` argument parser."""
    from ratemw import __version__

    parser = argparse.ArgumentParser(
        prog="ratemw",
        description="Check ratemw configuration; inspect or reset a caller's rate-limit counts.",
    )
    parser.add_argument("--version", action="version", version=f"ratemw {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check = commands.add_parser(
        "check",
        help="validate a configuration file and print the effective settings",
        description="Validate ratemw.toml (or [tool.ratemw] in pyproject.toml) and print the "
        "effective configuration. Exits 1 naming the bad value.",
    )
    check.add_argument(
        "config",
        nargs="?",
        metavar="CONFIG",
        help="the file (default: search the current directory)",
    )
    check.add_argument(
        "--ping",
        action="store_true",
        help="also connect to the storage and run its script once (counting "
        "nothing): exit 1 if it cannot be reached",
    )
    inspect = commands.add_parser(
        "inspect",
        help="show a caller's usage, remaining and reset, consuming nothing",
        description="Show one caller's usage of a limit without consuming any of it.",
    )
    _selector_options(inspect)
    reset = commands.add_parser(
        "reset",
        help="clear a caller's counts (e.g. a customer blocked by mistake)",
        description="Forget one caller's counts of a limit.",
    )
    _selector_options(reset)
    commands.add_parser("demo", help="run the demo (from a checkout of the repository)")
    return parser


_SIGPIPE_STATUS = 128 + 13  # what a shell reports for a process ended by SIGPIPE

_COMMANDS = {
    "check": run_check,
    "inspect": run_inspect,
    "reset": run_reset,
    "demo": run_demo,
}


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
        print(
            f"ratemw {args.command}: error: --per-method and --method go together "
            "(a per-method limit counts each method apart)",
            file=sys.stderr,
        )
        return 2
    try:
        return _COMMANDS[args.command](args, sys.stdout)
    except RatemwError as exc:
        print(f"ratemw {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`ratemw check | head`): stop quietly, as `yes | head` does.
        # Python would complain again when it flushes stdout at exit; point it at nothing.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return _SIGPIPE_STATUS


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
