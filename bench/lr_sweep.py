#!/usr/bin/env python
"""Learning rate x schedule x dropout (and model size) at equal wall-clock: runs train.py once per
configuration, one after the other, then prints validation perplexity at the chosen minutes.

Equal wall-clock is counted in steps: every configuration of one model size costs the same per step,
so `--minutes` are turned into steps with `--seconds-per-step`, measured beforehand on a quiet machine
for that size (`python train.py --precision bfloat16 --max-steps 150 ...` prints real tokens/s). The
runs then compare fairly even when the machine is shared, and the wall-clock each one really took is
printed beside it. Each run's folder is kept: rerunning the script resumes unfinished runs and skips
finished ones, so a sweep may span sessions.

    python bench/lr_sweep.py --out /work/runs/sweep --minutes 15 30
    python bench/lr_sweep.py --out /work/runs/sweep --report-only      # the table from what exists
    # model size at equal wall-clock, one session's share at a time (bench/step_cost.py: 2x512 costs 2.0x):
    # (a value that starts with "-" needs "=", or argparse takes it for a flag)
    python bench/lr_sweep.py --out /work/runs/size --configs cos-3e-3-drop0.2 --minutes 60 180 \
        --seconds-per-step 0.62 --extra="--hidden-dim 512" --tag=-2x512 --time-budget 120
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def recipe(lr: str, schedule: str, *extra: str) -> list[str]:
    """train.py flags that name the whole learning-rate recipe, so that no run leans on train.py's
    defaults: when the default became cosine, the constant runs that passed only --lr silently
    became cos-N runs (the 30-minute ones of 2026-11-29 did, to the digit)."""
    warmup = "0" if schedule == "constant" else "200"
    return ["--lr", lr, "--schedule", schedule, "--warmup-steps", warmup, *extra]


# name -> train.py flags. Decaying schedules end at the sweep's last step (train.py's default
# --decay-steps is --max-steps), so a 15-minute reading of a 30-minute run is mid-decay.
CONFIGS = {
    "const-1e-3": recipe("1e-3", "constant"),  # the tutorial's recipe
    "const-3e-3": recipe("3e-3", "constant"),  # the shipped model's once (resumed at 3e-3 by hand)
    "const-6e-3": recipe("6e-3", "constant"),
    "cos-3e-3": recipe("3e-3", "cosine"),
    "lin-3e-3": recipe("3e-3", "linear"),
    "cos-6e-3": recipe("6e-3", "cosine"),
    "cos-3e-3-drop0.2": recipe("3e-3", "cosine", "--dropout", "0.2"),
    "cos-6e-3-drop0.2": recipe("6e-3", "cosine", "--dropout", "0.2"),
}
COMMON = ["--precision", "bfloat16", "--sample-every", "0", "--save-every", "500", "--no-progress",
          "--epochs", "1000"]


def curve(run_dir: Path) -> list[dict]:
    """metrics.jsonl's validation lines: step, val_ppl, wall_time."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("val_ppl") is not None]


def ppl_at(rows: list[dict], step: int) -> float | None:
    """Validation perplexity of the last evaluation at or before `step` (None if the run never got there)."""
    done = [r for r in rows if r["step"] <= step]
    if not done or rows[-1]["step"] < step:
        return None
    return done[-1]["val_ppl"]


def _run(cmd: list[str]) -> int:
    """train.py's exit code. Ctrl-C reaches train.py too (same terminal), which finishes its step,
    saves and exits 130: wait for that instead of letting subprocess.run kill it mid-save."""
    proc = subprocess.Popen(cmd, cwd=ROOT)
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:
            continue


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="/work/runs/sweep", help="one folder per configuration in here")
    p.add_argument("--minutes", type=float, nargs="+", default=[15, 30], help="readings; the last one is the run length")
    p.add_argument("--seconds-per-step", type=float, default=0.31,
                   help="quiet-machine seconds per step of this model size in bfloat16 (2x256: 0.31)")
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--extra", default="", help="more train.py flags for every run (e.g. a model size)")
    p.add_argument("--tag", default="", help="suffix of the run folders (e.g. the model size)")
    p.add_argument("--time-budget", type=float, metavar="MINUTES",
                   help="stop each unfinished run after this many minutes of this call (it resumes next time)")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args()

    marks = [round(m * 60 / args.seconds_per_step) for m in args.minutes]
    eval_every = max(marks[0] // 10, 1)
    out = Path(args.out)
    for name in args.configs:
        run_dir = out / (name + args.tag)
        if args.report_only:
            continue
        rows = curve(run_dir)
        if rows and rows[-1]["step"] >= marks[-1]:
            continue
        cmd = [sys.executable, str(ROOT / "train.py"), *COMMON, *CONFIGS[name], *args.extra.split(),
               "--max-steps", str(marks[-1]), "--eval-every", str(eval_every), "--checkpoint-dir", str(run_dir)]
        if args.time_budget:
            cmd += ["--time-budget", str(args.time_budget)]
        print("$", " ".join(cmd[1:]), flush=True)
        code = _run(cmd)
        if code in (130, 143):  # train.py saved on Ctrl-C / SIGTERM: the same command resumes
            print(f"{name}: stopped and saved; rerun the same command to resume", file=sys.stderr)
            return code
        if code:
            print(f"{name}: train.py failed (exit {code}); see its message above", file=sys.stderr)
            return code

    print(f"\nvalidation perplexity at equal wall-clock ({args.seconds_per_step} s/step on a quiet machine: "
          + ", ".join(f"{m:g} min = step {s}" for m, s in zip(args.minutes, marks)) + ")\n")
    print("| run | flags | " + " | ".join(f"{m:g} min" for m in args.minutes) + " | real wall-clock |")
    print("|---|---|" + "---|" * len(marks) + "---|")
    for name in args.configs:
        rows = curve(out / (name + args.tag))
        cells = [ppl_at(rows, s) for s in marks]
        shown = [f"{c:.1f}" if c is not None and math.isfinite(c) else "-" for c in cells]
        wall = f"{rows[-1]['wall_time'] / 60:.1f} min to step {rows[-1]['step']}" if rows else "-"
        print(f"| {name}{args.tag} | `{' '.join(CONFIGS[name] + args.extra.split())}` | " + " | ".join(shown)
              + f" | {wall} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
