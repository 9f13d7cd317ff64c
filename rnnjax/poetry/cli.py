"""Command-line helpers shared by ``train.py``, ``generate.py`` and the app's commands: one-line argparse
errors, the typed flag parsers, flags generated from a config dataclass, and the model / sampling flags
with the code that turns them into objects.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing
from pathlib import Path

from rnnjax.poetry import forms
from rnnjax.poetry.config import flag_name
from rnnjax.poetry.decoding import CANDIDATES
from rnnjax.poetry.errors import UserError
from rnnjax.poetry.generation import (DEFAULT_MAX_LEN, DEFAULT_TEMPERATURE, DEFAULT_TOP_P, MAX_BEST_OF,
                                      MAX_MAX_LEN, MIN_MAX_LEN, PRECISIONS, Sampling)
from rnnjax.poetry.model_choice import SHIPPED_CHECKPOINT, TRAINED_CHECKPOINT, choose_checkpoint


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line (`error: ...`, exit 2) like every other user error."""

    def error(self, message):
        raise UserError(message)


def _shown(s: str) -> str:
    """A flag's value for a one-line message: repr, cut to 40 characters."""
    return repr(s if len(s) <= 40 else s[:40] + "...")


def _int(s: str) -> int:
    """Any integer, of any size (Python's int(), which caps a decimal string at 4300 digits)."""
    try:
        return int(s)
    except ValueError as e:
        if "digits" in str(e):  # Python refuses decimal strings longer than sys.get_int_max_str_digits()
            raise argparse.ArgumentTypeError(f"an integer of more than {sys.get_int_max_str_digits()} digits "
                                             "is too long") from None
        raise argparse.ArgumentTypeError(f"not an integer: {_shown(s)}") from None


def positive_int(s: str) -> int:
    v = _int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def bounded_int(lo: int, hi: int):
    """An argparse type: an integer in lo..hi, else 'must be between lo and hi, got v'."""
    def parse(s: str) -> int:
        v = _int(s)
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"must be between {lo} and {hi}, got {v}")
        return v
    parse.__name__ = "integer"  # what argparse names the type in its own messages
    return parse


def _float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {s!r}") from None
    if v != v:
        raise argparse.ArgumentTypeError("not a number: nan")
    return v


def form_arg(s: str) -> str:
    """A form name, alias or 'auto', any case (`5X4`): returned as its canonical name."""
    try:
        form = forms.parse_form(s)
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return "auto" if form is None else form.name


def checkpoint_arg(s: str) -> str:
    if not s.strip():
        raise argparse.ArgumentTypeError("is empty: give a folder, or leave the flag out for the default")
    return s


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """`--help` shows each flag's default, except None and False (a flag that is off or computed)."""

    def _get_help_string(self, action):
        off = action.default is None or action.default is False
        return action.help if off else super()._get_help_string(action)


def add_config_args(p: argparse.ArgumentParser, config_cls: type) -> dict[str, argparse._ArgumentGroup]:
    """One flag per field of a config dataclass (`batch_size` -> `--batch-size`), with the field's default;
    the field's metadata holds `help`, its argument `group` and any other `add_argument` keyword.
    Returns the groups, by name."""
    types = typing.get_type_hints(config_cls)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for field in dataclasses.fields(config_cls):
        kwargs = dict(field.metadata)
        group = kwargs.pop("group")
        target = groups.get(group) or groups.setdefault(group, p.add_argument_group(group))
        kind = types[field.name]
        if kind is bool:
            target.add_argument(flag_name(field.name), action="store_true", **kwargs)
            continue
        # `int | None` -> int; str needs no conversion.
        kind = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
        target.add_argument(flag_name(field.name), type=None if kind is str else kind, default=field.default,
                            **kwargs)
    return groups


def config_from_args(config_cls: type, args: argparse.Namespace):
    """The config dataclass from the flags `add_config_args` made (the dataclass checks the values)."""
    return config_cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls)})


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", type=checkpoint_arg, metavar="DIR",
                   help=f"checkpoint or exported model folder (default: of {TRAINED_CHECKPOINT} and the shipped "
                   f"{SHIPPED_CHECKPOINT.parent.name}/{SHIPPED_CHECKPOINT.name}, the one with the lower recorded "
                   "validation perplexity)")
    p.add_argument("--max-len", type=bounded_int(MIN_MAX_LEN, MAX_MAX_LEN), default=DEFAULT_MAX_LEN,
                   help=f"most tokens in a poem, prefix and punctuation included, {MIN_MAX_LEN}..{MAX_MAX_LEN} "
                   f"(default {DEFAULT_MAX_LEN})")
    p.add_argument("--precision", choices=PRECISIONS, default="float32",
                   help="the weights' dtype while writing: the output layer's, and when sampling the recurrent "
                        "layers' too. Greedy keeps the recurrent layers float32 and re-decides its best candidates "
                        "in float32, so greedy poems do not change; sampled ones do. bfloat16 is faster for batches "
                        "on a CPU with native bfloat16 and about level for one poem (float16 works but has no fast "
                        "matmul on CPUs) (default float32 whatever the hardware, so that the poems of a --seed do not "
                        "depend on its bfloat16 support)")


def load_model_from_args(args):
    """(model, vocab, config, checkpoint path) for the flags of `add_model_args`.

    Says on stderr which checkpoint, at which step and validation perplexity, and (default only)
    which other candidate there was and the flag that takes it."""
    from rnnjax.poetry.checkpoint import load_model  # orbax is slow to import; only the CLIs need it

    choice = choose_checkpoint(args.checkpoint)
    model, vocab, config = load_model(choice.path)
    announce_checkpoint(choice)
    return model, vocab, config, choice.path


def announce_checkpoint(choice) -> None:
    """stderr: 'checkpoint: PATH (step N, validation perplexity P)', then the notes of the choice."""
    print(f"checkpoint: {choice.summary}", file=sys.stderr)
    for note in choice.notes:
        print(note, file=sys.stderr)


def enable_compile_cache() -> Path | None:
    """JAX's persistent compilation cache in a user folder, so that a second run of a command loads its
    compiled programs instead of compiling them again (generate's ~27 small programs took 1.8 s).

    The folder is $RNNJAX_CACHE_DIR, else $XDG_CACHE_HOME/rnnjax/jax, else ~/.cache/rnnjax/jax; setting
    RNNJAX_CACHE_DIR to an empty string turns the cache off. Call before anything compiles."""
    import jax

    where = os.environ.get("RNNJAX_CACHE_DIR")
    if where is None:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        where = Path(base) / "rnnjax" / "jax"
    elif not where.strip():
        return None
    try:
        Path(where).mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # a read-only home: run without the cache
    jax.config.update("jax_compilation_cache_dir", str(where))
    # Cache every program, however small or quick to compile: start-up is many small ones.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return Path(where)


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    # Parsed as numbers only: Sampling checks the ranges (one check, for the CLI and for Python callers).
    p.add_argument("--temperature", type=_float, default=DEFAULT_TEMPERATURE,
                   help=f"softmax temperature: lower is safer, 0 is greedy (default {DEFAULT_TEMPERATURE})")
    p.add_argument("--top-k", type=_int, default=0, help=f"sample among the k likeliest tokens, k <= {CANDIDATES} (default 0: no cut)")
    p.add_argument("--top-p", type=_float, default=DEFAULT_TOP_P,
                   help="sample among the likeliest tokens that hold this much probability, in (0, 1] "
                        f"(default {DEFAULT_TOP_P}; 1 turns it off)")
    p.add_argument("--greedy", action="store_true",
                   help="no randomness: at each step the likeliest of going on, closing the line and ending the "
                        "poem (by total probability), then the likeliest token of that choice")
    p.add_argument("--best-of", type=_int, default=1, metavar="N",
                   help=f"sample N candidates per poem (1..{MAX_BEST_OF}) and keep the one the model finds "
                        "likeliest: the highest mean log-probability per token it chose (temperature 1, before "
                        "top-k/top-p and the masks; the prefix, acrostic heads and the form's punctuation not "
                        "counted); needs sampling, not --greedy (default 1)")
    p.add_argument("--seed", type=_int, default=0, help="random seed, any integer: the same seed gives the same poems")


def sampling_from_args(args) -> Sampling:
    """Sampling from the flags of `add_sampling_args`; UserError naming the flag whose value is out of range."""
    return Sampling(args.temperature, args.top_k, args.top_p, args.greedy, args.best_of)
