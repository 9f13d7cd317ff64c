#!/usr/bin/env python
"""Train the Tang-poetry model (the tutorial's Net, in JAX). Rerunning the same command resumes.

Exit status: 0 when done (or the time budget is reached), 2 on a usage error, 130 after Ctrl-C
and 143 after SIGTERM (in both cases a checkpoint was saved first; rerun to resume).
"""
from __future__ import annotations

import argparse
import sys

from rnnjax.poetry.errors import cli_main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Train a character-level Tang-poetry model; rerun the same command to resume.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    m = p.add_argument_group("model")
    m.add_argument("--cell", choices=("lstm", "gru", "rnn"), default="lstm", help="recurrent cell")
    m.add_argument("--embedding-dim", type=int, default=128)
    m.add_argument("--hidden-dim", type=int, default=256)
    m.add_argument("--num-layers", type=int, default=2)
    m.add_argument("--dropout", type=float, default=0.0, help="dropout between recurrent layers")
    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=int, default=20)
    o.add_argument("--batch-size", type=int, default=128)
    o.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    o.add_argument("--clip", type=float, default=1.0, help="gradient clipping by global norm")
    o.add_argument("--seed", type=int, default=0, help="initialisation, data order and validation split")
    o.add_argument("--max-steps", type=int, default=None,
                   help="stop at this total step count (a resumed run counts from the checkpoint)")
    o.add_argument("--time-budget", type=float, default=None, metavar="MINUTES",
                   help="stop (and save) after this many minutes of this run")
    d = p.add_argument_group("data and output")
    d.add_argument("--data", default="data/tang.npz", help="corpus; prepared automatically when missing")
    d.add_argument("--val-fraction", type=float, default=0.02, help="poems held out for validation")
    d.add_argument("--checkpoint-dir", default=None, help="default: checkpoints/<cell>")
    d.add_argument("--eval-every", type=int, default=0,
                   help="validation every N steps as well as every epoch (0: every epoch only)")
    d.add_argument("--save-every", type=int, default=500, help="checkpoint every N steps (0: off)")
    d.add_argument("--log-every", type=int, default=10, help="metrics.jsonl line every N steps")
    d.add_argument("--sample-every", type=int, default=1000,
                   help="greedy sample to samples.txt every N steps and at the end (0: off)")
    d.add_argument("--sample-prefix", default="床前明月光", help="beginning of the sampled poem")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    d.add_argument("--distributed", action="store_true",
                   help="call jax.distributed.initialize() first (multi-host; set up by the cluster)")
    return p.parse_args(argv)


@cli_main
def main(argv=None) -> int:
    args = parse_args(argv)
    from rnnjax.poetry.training import train  # after parsing: --help stays instant

    kwargs = vars(args)
    progress = not kwargs.pop("no_progress") and None  # None: a bar only on a terminal
    result = train(**kwargs, progress=progress)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
