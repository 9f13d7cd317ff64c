#!/usr/bin/env python
"""Train the Tang-poetry model (the tutorial's Net, in JAX). Rerunning the same command resumes.

Exit status: 0 when done (or the time budget is reached), 2 on a usage error, 130 after Ctrl-C
and 143 after SIGTERM (in both cases a checkpoint was saved first; rerun to resume). A second
Ctrl-C/SIGTERM stops at once without saving, with the same status.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys

from rnnjax.poetry.cli import DefaultsHelpFormatter, add_config_args, config_from_args, enable_compile_cache
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
    try:
        from rnnjax.poetry.training import train  # after parsing: --help needs no optax or orbax

        progress = not args.no_progress and None  # None: a bar only on a terminal
        # A rerun (to resume, say after Ctrl-C or a kill) loads its compiled programs instead of compiling
        # them again: XLA's output is the same program, so resuming stays exact.
        enable_compile_cache()
        result = train(config_from_args(TrainConfig, args), progress=progress)
    except KeyboardInterrupt as e:  # a second Ctrl-C (or one before training began): no traceback
        signum = getattr(e, "signum", signal.SIGINT)
        what = f"{signal.Signals(signum).name} again" if hasattr(e, "signum") else "interrupted"
        print(f"{what}: stopped at once; rerun to resume from the last saved checkpoint", file=sys.stderr)
        sys.stderr.flush()
        # The last word: save threads stranded by the abort (orbax's asyncio loop closed under them) may
        # still print a traceback from C++ callbacks before the process exits, which would read as a crash.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())
        global ABORTED
        ABORTED = True
        return 128 + signum
    return result.exit_code


ABORTED = False  # set when main() stopped on a second signal


if __name__ == "__main__":
    code = main()
    if ABORTED:
        # Exit at once, as a kill would (resuming after a kill is exact and tested): an interrupted save's
        # threads would otherwise print tracebacks while the interpreter shuts down.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
