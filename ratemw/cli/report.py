"""What ``ratemw inspect`` reports of one caller's counts: as JSON, or as a table."""

from __future__ import annotations

import argparse
from typing import Any, TextIO

from ratemw.limiter import Limiter
from ratemw.policy.decision import ceil_seconds
from ratemw.storage.base import Hit, Usage

__all__ = ["build_report", "print_report"]


def _policy(name: str, hit: Hit, usage: Usage) -> dict[str, Any]:
    used = max(hit.amount - usage.remaining, 0)
    return {
        "name": name,
        "quota": hit.amount,
        "window": hit.window_ms // 1000,
        "used": used,
        "remaining": max(usage.remaining, 0),
        # Nothing counted means nothing to wait for, whatever the strategy's arithmetic.
        "reset": ceil_seconds(usage.reset_ms) if used else 0,
        "blocked": not usage.fits,
        "retry_after": (
            None if usage.fits or usage.wait_ms is None else max(1, ceil_seconds(usage.wait_ms))
        ),
        "storage_key": hit.key,
    }


def build_report(
    args: argparse.Namespace,
    limiter: Limiter,
    bucket: str,
    named: list[tuple[str, Hit]],
    usages: list[Usage],
) -> dict[str, Any]:
    """The report of ``args.key``'s counts: one policy per named hit, with its usage."""
    policies = [_policy(name, hit, usage) for (name, hit), usage in zip(named, usages, strict=True)]
    return {
        "storage": limiter.settings.storage_name,
        "strategy": limiter.settings.strategy,
        "key": args.key,
        "bucket": bucket,
        "policies": policies,
    }


def _status(policy: dict[str, Any]) -> str:
    if not policy["blocked"]:
        return "ok"
    if policy["retry_after"] is None:
        return "blocked"
    return f"blocked, retry in {policy['retry_after']} s"


def print_report(report: dict[str, Any], out: TextIO) -> None:
    """Print ``report`` to ``out`` as a table, one row per policy, then the storage keys."""
    print(
        f"{report['key']} in {report['bucket']} ({report['storage']}, {report['strategy']})",
        file=out,
    )
    header = ("policy", "quota", "window", "used", "remaining", "reset", "status")
    rows = [header]
    for p in report["policies"]:
        rows.append(
            (
                p["name"],
                str(p["quota"]),
                f"{p['window']} s",
                str(p["used"]),
                str(p["remaining"]),
                f"{p['reset']} s",
                _status(p),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  " + "  ".join(cells).rstrip(), file=out)
    for p in report["policies"]:
        print(f"  storage key: {p['storage_key']}", file=out)
