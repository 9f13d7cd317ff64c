"""User-facing errors and the one place CLIs turn them into a one-line message and exit status 2."""
from __future__ import annotations

import functools
import sys


class UserError(ValueError):
    """A mistake the user can fix (bad flag, missing file, unknown character): no traceback."""


def cli_main(fn):
    """Wrap a CLI entry point: UserError -> 'error: ...' on stderr and exit 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
