#!/usr/bin/env python
"""Validation perplexity against minutes of training, several runs in one plot (for docs/).

Minutes are equal-wall-clock minutes: a run's steps times its size's quiet-machine seconds per step
(`bench/step_cost.py`), so runs that shared the machine with other work compare fairly.

    python bench/plot_curves.py --out docs/size_curves.png --mark 144.4="shipped before" --mark 115=target \\
        /work/runs/size/cos-6e-3-drop0.2-2x256=0.31 /work/runs/size/cos-3e-3-drop0.2-2x512=0.62
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def val_curve(run_dir: Path) -> tuple[list[int], list[float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("val_ppl") is not None]
    return [r["step"] for r in rows], [r["val_ppl"] for r in rows]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="DIR=SECONDS_PER_STEP")
    p.add_argument("--out", required=True)
    p.add_argument("--title", default="validation perplexity at equal wall-clock")
    p.add_argument("--ymax", type=float, default=300)
    p.add_argument("--mark", action="append", default=[], metavar="PPL=LABEL",
                   help="a dashed horizontal line, e.g. 144.4='shipped before' (repeatable)")
    args = p.parse_args()

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for spec in args.runs:
        folder, _, sps = spec.rpartition("=")
        steps, ppl = val_curve(Path(folder))
        minutes = [s * float(sps) / 60 for s in steps]
        ax.plot(minutes, ppl, marker=".", label=f"{Path(folder).name} (best {min(ppl):.1f})")
    for mark in args.mark:
        value, _, label = mark.partition("=")
        ax.axhline(float(value), color="grey", linestyle="--", linewidth=0.8)
        ax.annotate(f"{label} ({float(value):g})", (0, float(value)), xycoords=("axes fraction", "data"),
                    xytext=(4, 2), textcoords="offset points", fontsize=8, color="grey")
    ax.set_xlabel("minutes (steps x quiet-machine seconds per step)")
    ax.set_ylabel("validation perplexity")
    ax.set_ylim(top=args.ymax)
    ax.grid(alpha=0.3)
    ax.set_title(args.title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
