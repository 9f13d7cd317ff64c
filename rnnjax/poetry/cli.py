"""Command-line helpers shared by ``train.py``, ``generate.py`` and the app's commands: one-line argparse
errors, the typed flag parsers, flags generated from a config dataclass, and the model / sampling flags
with the code that turns them into objects.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import typing

from rnnjax.poetry import forms
from rnnjax.poetry.config import flag_name
from rnnjax.poetry.errors import UserError
from rnnjax.poetry.generation import (CANDIDATES, DEFAULT_CHECKPOINTS, DEFAULT_MAX_LEN, DEFAULT_TEMPERATURE,
                                      DEFAULT_TOP_P, Sampling, resolve_checkpoint)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line (`error: ...`, exit 2) like every other user error."""

    def error(self, message):
        raise UserError(message)


def _int(s: str) -> int:
    try:
        return int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {s!r}") from None


def positive_int(s: str) -> int:
    v = _int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def _float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {s!r}") from None
    if v != v:
        raise argparse.ArgumentTypeError("not a number: nan")
    return v


def form_arg(s: str) -> str:
    try:
        forms.parse_form(s)
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
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
    p.add_argument("--checkpoint", help="checkpoint or exported model folder "
                   f"(default: {DEFAULT_CHECKPOINTS[0]} if it exists, else {DEFAULT_CHECKPOINTS[1]})")
    p.add_argument("--max-len", type=positive_int, default=DEFAULT_MAX_LEN,
                   help=f"most tokens in a poem, prefix and punctuation included (default {DEFAULT_MAX_LEN})")


def load_model_from_args(args):
    """(model, vocab, config, checkpoint path) for the flags of `add_model_args`; says which on stderr."""
    from rnnjax.poetry.checkpoint import load_model  # orbax is slow to import; only the CLIs need it

    ckpt = resolve_checkpoint(args.checkpoint)
    model, vocab, config = load_model(ckpt)
    print(f"checkpoint: {ckpt}", file=sys.stderr)
    return model, vocab, config, ckpt


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    # Parsed as numbers only: Sampling checks the ranges (one check, for the CLI and for Python callers).
    p.add_argument("--temperature", type=_float, default=DEFAULT_TEMPERATURE,
                   help=f"softmax temperature: lower is safer, 0 is greedy (default {DEFAULT_TEMPERATURE})")
    p.add_argument("--top-k", type=_int, default=0, help=f"sample among the k likeliest tokens, k <= {CANDIDATES} (default 0: no cut)")
    p.add_argument("--top-p", type=_float, default=DEFAULT_TOP_P,
                   help="sample among the likeliest tokens that hold this much probability, in (0, 1] "
                        f"(default {DEFAULT_TOP_P}; 1 turns it off)")
    p.add_argument("--greedy", action="store_true", help="always the likeliest token (the tutorial's behaviour)")
    p.add_argument("--seed", type=_int, default=0, help="random seed: the same seed gives the same poems")


def sampling_from_args(args) -> Sampling:
    """Sampling from the flags of `add_sampling_args`; UserError naming the flag whose value is out of range."""
    return Sampling(args.temperature, args.top_k, args.top_p, args.greedy)
