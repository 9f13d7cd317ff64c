"""Several processes training together: `train.py --distributed` and its flags, each falling back to
its `JAX_*` environment variable, then to what `jax.distributed.initialize` detects (Slurm, Open MPI,
Kubernetes, Cloud TPU). A bad setting is a one-line UserError naming it.
"""
from __future__ import annotations

import os

import jax

from rnnjax.poetry.config import TrainConfig
from rnnjax.poetry.errors import UserError

__all__ = ["ENV", "distributed_settings", "initialize"]

# TrainConfig field -> the environment variable read when the flag is not given.
ENV = {"coordinator": "JAX_COORDINATOR_ADDRESS", "num_processes": "JAX_NUM_PROCESSES",
       "process_id": "JAX_PROCESS_ID"}


def distributed_settings(cfg: TrainConfig, environ=os.environ) -> dict:
    """`jax.distributed.initialize` keywords: each flag, else its environment variable, else left to
    jax (which detects Slurm, Open MPI, Kubernetes and Cloud TPU on its own)."""
    kwargs = {}
    for field, var in ENV.items():
        value = getattr(cfg, field)
        if value is None and environ.get(var, "").strip():
            value = environ[var].strip()
            if field != "coordinator":
                try:
                    value = int(value)
                except ValueError:
                    raise UserError(f"{var}={environ[var]!r} is not an integer") from None
        if value is not None:
            kwargs["coordinator_address" if field == "coordinator" else field] = value
    n, i = kwargs.get("num_processes"), kwargs.get("process_id")
    if n is not None and n < 1:
        raise UserError(f"--num-processes must be at least 1, got {n}")
    if i is not None and (i < 0 or (n is not None and i >= n)):
        raise UserError(f"--process-id must be in [0, {n if n is not None else 'num-processes'}), got {i}")
    return kwargs


def initialize(cfg: TrainConfig) -> None:
    kwargs = distributed_settings(cfg)
    try:
        jax.distributed.initialize(**kwargs)
    except (RuntimeError, ValueError) as e:
        shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) or "settings detected from the cluster"
        raise UserError(f"--distributed: jax.distributed.initialize({shown}) failed: "
                        f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None
