"""Which model generate.py (and `python -m rnnjax.poetry evaluate`) uses: ``--checkpoint``, else the
better of the training run and the shipped model, by the validation perplexity each recorded.

A short training run must not replace the shipped model until it has measured better, and the user
is told on stderr which folder wrote the poem and which flag takes the other one.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from rnnjax.poetry.errors import UserError

__all__ = ["CheckpointChoice", "choose_checkpoint", "TRAINED_CHECKPOINT", "SHIPPED_CHECKPOINT"]

# The default model: a training run's folder (train.py's default, relative to the working directory, as
# train.py writes it; also the repository's own) and the shipped model, found relative to this package
# so that generate.py works from any directory. `choose_checkpoint` picks among those that exist.
REPO_ROOT = Path(__file__).resolve().parents[2]
TRAINED_CHECKPOINT = "checkpoints/lstm"
SHIPPED_CHECKPOINT = REPO_ROOT / "pretrained" / "tang-lstm"


@dataclasses.dataclass(frozen=True)
class CheckpointChoice:
    """Which model `choose_checkpoint` picked, what it recorded, and what to tell the user on stderr."""

    path: Path
    step: int | None = None
    val_loss: float | None = None
    notes: tuple[str, ...] = ()

    @property
    def summary(self) -> str:
        """'PATH (step N, validation perplexity P)': the line generate prints to stderr."""
        return f"{_shown(self.path)} ({_quality(self.step, self.val_loss)})"


def _shown(path: Path) -> str:
    """A path as the user would type it: relative to the working directory when under it."""
    path = Path(path)
    if not path.is_absolute():
        return str(path)
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _quality(step: int | None, val_loss: float | None) -> str:
    where = "step unknown" if step is None else f"step {step}"
    if val_loss is None or not math.isfinite(val_loss):
        return f"{where}, no validation perplexity recorded"
    return f"{where}, validation perplexity {math.exp(min(val_loss, 700)):.1f}"


def _default_candidates() -> list[Path]:
    """The training folder (here, then in the repository), then the shipped model: existing folders, once each."""
    out, seen = [], set()
    for cand in (Path(TRAINED_CHECKPOINT), REPO_ROOT / TRAINED_CHECKPOINT, Path(SHIPPED_CHECKPOINT)):
        if cand.is_dir() and cand.resolve() not in seen:
            seen.add(cand.resolve())
            out.append(cand if not cand.is_absolute() else Path(_shown(cand)))
    return out


def choose_checkpoint(path: str | None = None) -> CheckpointChoice:
    """--checkpoint, else the best default: the candidate with the lower recorded validation perplexity.

    Candidates are `checkpoints/lstm` (a training run) and the shipped `pretrained/tang-lstm`. A folder
    with no saved step yet (a run stopped before its first save) is skipped with a note. A candidate
    that recorded a validation perplexity beats one that did not; on a tie, or when neither recorded
    one, the training run wins. The notes name each candidate not taken and the flag that takes it.
    """
    from rnnjax.poetry.checkpoint import has_steps, recorded_quality  # orbax: only when a model loads

    if path is not None:
        if not path.strip():
            raise UserError("--checkpoint is empty: give a folder, or leave the flag out for the default")
        return CheckpointChoice(Path(path), *recorded_quality(path))
    notes, usable = [], []
    for cand in _default_candidates():
        if not has_steps(cand):
            notes.append(f"note: skipped {cand}: it holds no saved step yet (a training run stopped before "
                         "its first save, or not a checkpoint folder)")
            continue
        usable.append(CheckpointChoice(cand, *recorded_quality(cand)))
    if not usable:
        raise UserError(f"no checkpoint found at {TRAINED_CHECKPOINT} or {_shown(SHIPPED_CHECKPOINT)}: train "
                        "one with `python train.py` or pass --checkpoint DIR")

    def rank(k: int):
        loss = usable[k].val_loss
        known = loss is not None and math.isfinite(loss)
        return (not known, loss if known else 0.0, k)

    best = min(range(len(usable)), key=rank)
    for k, other in enumerate(usable):
        if k != best:
            notes.append(f"note: not using {other.summary}: --checkpoint {_shown(other.path)} uses it")
    return dataclasses.replace(usable[best], notes=tuple(notes))
