"""The Tang-poetry data: fetch, clean, encode to ``data/tang.npz``, and batch for training.

``prepare_dataset()`` is what ``python -m rnnjax.poetry data`` and ``train.py`` (when the file is missing)
call; the cleaning rules are in :mod:`rnnjax.poetry.data.corpus`, the file layout and batching in
:mod:`rnnjax.poetry.data.dataset`.
"""
from __future__ import annotations

import os
import pathlib

import numpy as np

from rnnjax.poetry.config import DEFAULT_DATA
from rnnjax.poetry.data.corpus import DROP_REASONS, load_corpus
from rnnjax.poetry.data.dataset import (
    EOP,
    MAX_LEN,
    PAD,
    START,
    Batch,
    BucketBatcher,
    Vocab,
    choose_bucket_lengths,
    encode_poems,
    fingerprint,
    load_npz,
    save_npz,
    train_val_split,
    unpad,
)
from rnnjax.poetry.errors import UserError

__all__ = [
    "PAD", "START", "EOP", "MAX_LEN", "Vocab", "Batch", "BucketBatcher", "choose_bucket_lengths",
    "encode_poems", "save_npz", "load_npz", "unpad", "train_val_split", "fingerprint",
    "prepare_dataset", "import_tutorial",
]


def _already_there(out: pathlib.Path, trust_pickle: bool, say) -> bool:
    if not out.exists():
        return False
    data, _ = load_npz(out, trust_pickle=trust_pickle)  # an unreadable file is an error, not "done"
    say(f"{out} already exists ({len(data):,} poems); use --force to rebuild")
    return True


def prepare_dataset(out=DEFAULT_DATA, source=None, cache_dir=None, traditional=False, force=False,
                    trust_pickle=False, quiet=False, *, integrity=None) -> pathlib.Path:
    """Build ``out`` from the chinese-poetry Tang poems (npm tarball or ``source`` folder).

    Does nothing when ``out`` already exists, unless ``force``. ``integrity`` overrides the
    pinned npm sha512 (tests use it with a tarball of their own).
    """
    out = pathlib.Path(out)
    say = (lambda *_: None) if quiet else print
    if not force and _already_there(out, trust_pickle, say):
        return out

    kwargs = {} if integrity is None else {"integrity": integrity}
    corpus = load_corpus(source, cache_dir, traditional, progress=not quiet, log=say, **kwargs)
    if not corpus.poems:
        raise UserError(f"no poems left after cleaning the {corpus.read} read from {corpus.origin}")
    vocab = Vocab.build(corpus.poems)
    data = encode_poems(corpus.poems, vocab)
    save_npz(out, data, vocab)

    dropped = sum(corpus.dropped.values())
    reasons = ", ".join(f"{r} {corpus.dropped[r]:,}" for r in DROP_REASONS if corpus.dropped[r])
    truncated = int(np.sum(data[:, -1] != vocab.eop_id))
    say(f"read {corpus.read:,} poems from {corpus.files} files of {corpus.origin}")
    say(f"dropped {dropped:,}" + (f": {reasons}" if reasons else ""))
    say(f"kept {len(corpus.poems):,} poems ({'simplified' if corpus.simplified else 'traditional'}"
        f" script), {corpus.chars:,} characters in all; vocabulary {len(vocab):,} tokens "
        f"({len(vocab) - 3:,} characters + {PAD} {START} {EOP})")
    say(f"{truncated:,} poems longer than {MAX_LEN - 2} characters cut to their first "
        f"{MAX_LEN} tokens")
    say(f"wrote {out} ({os.path.getsize(out) / 1e6:.1f} MB, sha256 {fingerprint(out)[:12]})")
    return out


def import_tutorial(path, out=DEFAULT_DATA, trust_pickle=False, force=False,
                    quiet=False) -> pathlib.Path:
    """Convert the tutorial's pickled ``tang.npz`` into our pickle-free layout (its ids kept)."""
    out = pathlib.Path(out)
    say = (lambda *_: None) if quiet else print
    if not force and _already_there(out, trust_pickle, say):
        return out
    data, vocab = load_npz(path, trust_pickle=trust_pickle)
    save_npz(out, data, vocab)
    say(f"imported {len(data):,} poems and {len(vocab):,} tokens from {path}; wrote {out}")
    return out
