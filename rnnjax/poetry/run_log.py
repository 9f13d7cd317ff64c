"""A training folder's logs: `metrics.jsonl` (a JSON line a step), `samples.txt` (`step:poem`) and
`loss.png`, written by process 0 only. A resumed run first drops the lines logged after the step it
resumes from, so that no step appears twice.
"""
from __future__ import annotations

import json
from pathlib import Path

import jax

from rnnjax.poetry.files import atomic_write

__all__ = ["METRICS_NAME", "SAMPLES_NAME", "PLOT_NAME", "append_line", "metrics_step", "sample_step",
           "drop_lines_after", "plot_losses"]

METRICS_NAME = "metrics.jsonl"
SAMPLES_NAME = "samples.txt"
PLOT_NAME = "loss.png"


def append_line(path: Path, text: str) -> None:
    if jax.process_index() == 0:
        with open(path, "a", encoding="utf-8") as f:
            f.write(text + "\n")


def metrics_step(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def sample_step(line: str) -> int | None:
    head = line.split(":", 1)[0]
    return int(head) if head.isdigit() else None


def drop_lines_after(path: Path, step: int, step_of) -> None:
    """Keep the lines of `path` written at or before `step` (rewritten atomically, process 0 only).

    A run killed after logging step N but before saving it resumes from an earlier step and logs
    N again: without this, metrics.jsonl and samples.txt would hold N twice. A line cut short by the
    kill (no newline at its end) goes too.
    """
    if jax.process_index() != 0 or not path.is_file():
        return
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
    kept = [line for line in lines if line.endswith("\n") and (s := step_of(line)) is not None and s <= step]
    if len(kept) != len(lines):
        atomic_write(path, lambda f: f.write("".join(kept).encode("utf-8")))


def plot_losses(ckpt_dir) -> Path | None:
    """loss.png from metrics.jsonl (Agg canvas: no display, no global pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(ckpt_dir) / METRICS_NAME
    if not path.exists() or jax.process_index() != 0:
        return None
    by_step = {}  # one point per step, the last logged (files from before duplicates were dropped)
    for line in path.read_text(encoding="utf-8").splitlines():
        if metrics_step(line) is not None:
            row = json.loads(line)
            by_step[row["step"]] = row
    rows = [by_step[k] for k in sorted(by_step)]
    train_pts = [(r["step"], r["loss"]) for r in rows if r.get("loss") is not None]
    val_pts = [(r["step"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if train_pts:
        ax.plot(*zip(*train_pts), label="train loss")
    if val_pts:
        ax.plot(*zip(*val_pts), "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return atomic_write(Path(ckpt_dir) / PLOT_NAME, lambda f: fig.savefig(f, format="png", dpi=100))
