"""Draw docs/img/benchmarks.png from the overheads recorded in docs/benchmarks.json.

    pip install matplotlib && python -m benchmarks.plot

The JSON holds the median per-request overheads (µs over the bare app) of one run of each
benchmark; update it from the benchmarks' output, then redraw.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "docs" / "benchmarks.json"
IMAGE = ROOT / "docs" / "img" / "benchmarks.png"
COLORS = {"ratemw": "#2a9d8f"}


def main() -> int:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("pip install matplotlib first", file=sys.stderr)
        return 1
    panels = json.loads(DATA.read_text("utf-8"))["panels"]
    rows = (len(panels) + 1) // 2
    figure, grid = plt.subplots(rows, 2, figsize=(10, 3.2 * rows))
    for ax, panel in zip(grid.flat, panels, strict=True):
        names = list(panel["overhead_us"])
        values = [panel["overhead_us"][n] for n in names]
        colors = [COLORS.get(n, "#9aa5b1") for n in names]
        bars = ax.barh(names, values, color=colors)
        ax.bar_label(bars, labels=[f"{v:,.0f} µs" for v in values], padding=3, fontsize=8)
        ax.set_title(panel["title"], fontsize=10)
        ax.set_xlabel("added µs per request (median)", fontsize=8)
        ax.set_xlim(0, max(values) * 1.35)
        ax.invert_yaxis()
        ax.tick_params(labelsize=8)
    figure.suptitle("What a rate limiter adds to each request (lower is better)", fontsize=11)
    figure.tight_layout()
    IMAGE.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(IMAGE, dpi=120)
    print(f"wrote {IMAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
