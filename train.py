#!/usr/bin/env python
"""Train the Tang-poetry model (the tutorial's Net, in JAX). Rerunning the same command resumes.

Exit status: 0 when done (or the time budget is reached), 2 on a usage error, 130 after Ctrl-C
and 143 after SIGTERM (in both cases a checkpoint was saved first; rerun to resume).
"""
from __future__ import annotations

import argparse
import sys

from rnnjax.poetry.cli import DefaultsHelpFormatter, add_config_args, config_from_args
from rnnjax.poetry.config import TrainConfig
from rnnjax.poetry.errors import cli_main


def parse_args(argv=None) -> argparse.Namespace:
    """Every TrainConfig field as a flag (defaults and help come from there), plus --no-progress."""
    p = argparse.ArgumentParser(
        description="Train a character-level Tang-poetry model; rerun the same command to resume.",
        formatter_class=DefaultsHelpFormatter,
    )
    groups = add_config_args(p, TrainConfig)
    groups["data and output"].add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


@cli_main
def main(argv=None) -> int:
    args = parse_args(argv)
    from rnnjax.poetry.training import train  # after parsing: --help needs no optax or orbax

    progress = not args.no_progress and None  # None: a bar only on a terminal
    result = train(config_from_args(TrainConfig, args), progress=progress)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
