"""The app's settings as typed dataclasses: one place for each default.

``ModelConfig`` is the shape of a :class:`~rnnjax.poetry.model.PoetryModel`, the part of a checkpoint's
``config.json`` that rebuilds the model without the dataset. ``TrainConfig`` is every training flag;
``train.py`` builds its command line from these fields (each field's metadata holds its help text),
so a default is written here and nowhere else.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from rnnjax.poetry.errors import UserError

CELLS = ("lstm", "gru", "rnn")
COMPUTE_PRECISIONS = ("float32", "bfloat16")  # what a training step computes in
PRECISIONS = ("auto", *COMPUTE_PRECISIONS)  # train.py --precision: see TrainConfig.precision
SCHEDULES = ("constant", "cosine", "linear")  # train.py --schedule: see rnnjax.poetry.training.lr_schedule
DEFAULT_DATA = "data/tang.npz"  # the prepared corpus: `python -m rnnjax.poetry data` writes it


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The tutorial's Net: Embedding -> `num_layers` recurrent layers -> Linear. Defaults are the tutorial's."""

    vocab_size: int            # tokens, the three specials (</s>, <START>, <EOP>) included
    embedding_dim: int = 128   # width of a token's embedding, the recurrent stack's input
    hidden_dim: int = 256      # width of each recurrent layer's state
    num_layers: int = 2        # recurrent layers, stacked
    cell: str = "lstm"         # "lstm", "gru" or "rnn" (Elman, tanh)
    dropout: float = 0.0       # torch's dropout between recurrent layers (training only)

    def __post_init__(self):
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {', '.join(CELLS)}, got {self.cell!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelConfig:
        """The model's keys of a ``config.json`` record (other keys are ignored); ValueError if any is missing."""
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in d]
        if missing:
            raise ValueError(f"missing keys {missing}")
        return cls(**{n: d[n] for n in names})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _flag(default, help: str, group: str, **argparse_kwargs) -> Any:
    """A TrainConfig field: its default, and how train.py shows it (`--name-with-dashes`)."""
    return dataclasses.field(default=default, metadata={"help": help, "group": group, **argparse_kwargs})


_MODEL, _OPT, _OUT, _DIST = "model", "optimisation", "data and output", "several processes"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every flag of a training run (``train.py --help`` lists them in this order, in four groups).

    ``config.json`` keeps them all as ``flags`` (`checkpoint_dir` resolved); a folder trained with
    another cell, size, data file, batch size, seed or validation fraction is refused on resume.
    `lr`, the schedule's flags, `clip`, `dropout` and `precision` may change on resume: the change is
    said and kept in ``flag_changes``.
    """

    cell: str = _flag(ModelConfig.cell, "recurrent cell", _MODEL, choices=CELLS)
    embedding_dim: int = _flag(ModelConfig.embedding_dim, "token embedding width", _MODEL)
    hidden_dim: int = _flag(ModelConfig.hidden_dim, "recurrent state width", _MODEL)
    num_layers: int = _flag(ModelConfig.num_layers, "recurrent layers", _MODEL)
    dropout: float = _flag(ModelConfig.dropout, "dropout between recurrent layers", _MODEL)
    epochs: int = _flag(20, "passes over the training poems", _OPT)
    batch_size: int = _flag(128, "poems per step; a multiple of the device count", _OPT)
    # The recipe is bench/lr_sweep.py's best at equal wall-clock (README, "Choosing the recipe"): the
    # tutorial's constant 1e-3 reached perplexity 194.5 in 15 minutes of this CPU, this one 130.7.
    lr: float = _flag(6e-3, "Adam learning rate (the peak, with a schedule)", _OPT)
    schedule: str = _flag("cosine", "learning rate after the warmup: constant, or a cosine or linear decay "
                                      "from --lr to --lr-floor x --lr over --decay-steps", _OPT, choices=SCHEDULES)
    warmup_steps: int = _flag(200, "linear warmup from 0 to --lr over this many steps (0: none)", _OPT)
    decay_steps: int | None = _flag(None, "step at which the decay reaches its floor (default: the run's last "
                                          "step, --epochs x batches per epoch, or --max-steps)", _OPT)
    lr_floor: float = _flag(0.1, "where the decay ends, as a fraction of --lr", _OPT)
    clip: float = _flag(1.0, "gradient clipping by global norm", _OPT)
    # auto: see rnnjax.poetry.hardware (bfloat16 trained 1.5-2.1x faster at the same perplexity on both
    # CPUs this project has measured, both with native bfloat16).
    precision: str = _flag("auto", "matmul inputs and activations: bfloat16 is mixed precision (float32 "
                                   "parameters, gradients, optimizer state and loss); auto is bfloat16 where the "
                                   "hardware multiplies it natively (a CPU with AVX512-BF16 or AMX, a GPU of "
                                   "compute capability 8.0 or later, a TPU), float32 elsewhere, and the run "
                                   "says which; checkpoints are float32 either way, so a run may resume in the "
                                   "other precision", _OPT, choices=PRECISIONS)
    seed: int = _flag(0, "initialisation, data order and validation split", _OPT)
    max_steps: int | None = _flag(None, "stop at this total step count (a resumed run counts from the "
                                        "checkpoint)", _OPT)
    time_budget: float | None = _flag(None, "stop (and save) after this many minutes of this run", _OPT,
                                      metavar="MINUTES")
    data: str = _flag(DEFAULT_DATA, "corpus; prepared automatically when missing", _OUT)
    val_fraction: float = _flag(0.02, "poems held out for validation", _OUT)
    checkpoint_dir: str | None = _flag(None, "where everything is written (default: checkpoints/<cell>)", _OUT)
    eval_every: int = _flag(0, "validation every N steps as well as every epoch (0: every epoch only)", _OUT)
    save_every: int = _flag(500, "checkpoint every N steps (0: off)", _OUT)
    log_every: int = _flag(10, "metrics.jsonl line every N steps", _OUT)
    sample_every: int = _flag(1000, "greedy sample to samples.txt every N steps and at the end (0: off)", _OUT)
    sample_prefix: str = _flag("床前明月光", "beginning of the sampled poem", _OUT)
    distributed: bool = _flag(False, "several processes (hosts) train together: call "
                                     "jax.distributed.initialize() first; with no --coordinator/--num-processes/"
                                     "--process-id (or JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID) "
                                     "jax detects Slurm, Open MPI, Kubernetes or Cloud TPU", _DIST)
    coordinator: str | None = _flag(None, "host:port of process 0's coordinator (implies --distributed; "
                                          "default $JAX_COORDINATOR_ADDRESS)", _DIST, metavar="HOST:PORT")
    num_processes: int | None = _flag(None, "how many processes train together (default $JAX_NUM_PROCESSES)",
                                      _DIST, metavar="N")
    process_id: int | None = _flag(None, "this process's index, 0 to N-1 (default $JAX_PROCESS_ID); process 0 "
                                         "writes the logs and config.json", _DIST, metavar="I")

    def __post_init__(self):
        """UserError naming the flag, before any data is read."""
        if self.cell not in CELLS:
            raise UserError(f"--cell must be one of {', '.join(CELLS)}, got {self.cell!r}")
        if self.schedule not in SCHEDULES:
            raise UserError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.precision not in PRECISIONS:
            raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for name in ("epochs", "batch_size", "embedding_dim", "hidden_dim", "num_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise UserError(f"{flag_name(name)} must be a positive integer, got {value!r}")
        for name in ("lr", "clip"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise UserError(f"{flag_name(name)} must be a positive number, got {value!r}")
        for name in ("dropout", "val_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise UserError(f"{flag_name(name)} must be in [0, 1), got {getattr(self, name)}")
        if not (isinstance(self.warmup_steps, int) and self.warmup_steps >= 0):
            raise UserError(f"--warmup-steps must be an integer >= 0, got {self.warmup_steps!r}")
        if not 0.0 <= self.lr_floor <= 1.0:
            raise UserError(f"--lr-floor must be in [0, 1] (a fraction of --lr), got {self.lr_floor}")
        if self.decay_steps is not None and not (isinstance(self.decay_steps, int)
                                                 and self.decay_steps > self.warmup_steps):
            raise UserError(f"--decay-steps must be an integer above --warmup-steps ({self.warmup_steps}), "
                            f"got {self.decay_steps!r}")
        for name in ("max_steps", "time_budget"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise UserError(f"{flag_name(name)} must be positive, got {value}")
        for name in ("eval_every", "save_every", "sample_every", "log_every"):
            if getattr(self, name) < 0:
                raise UserError(f"{flag_name(name)} must be >= 0 (0 = off), got {getattr(self, name)}")

    def model_config(self, vocab_size: int) -> ModelConfig:
        return ModelConfig(vocab_size, self.embedding_dim, self.hidden_dim, self.num_layers, self.cell,
                           float(self.dropout))


def flag_name(field_name: str) -> str:
    """`batch_size` -> `--batch-size`: the command-line spelling of a field."""
    return "--" + field_name.replace("_", "-")
