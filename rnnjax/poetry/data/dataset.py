"""Vocabulary, the ``tang.npz`` file, the train/validation split and length-bucketed batches.

``tang.npz`` keeps the tutorial's layout so its readers recognise it: ``data`` is ``(N, 125)``
int32, each row ``<START> poem <EOP>`` padded in *front* with ``</s>`` and cut to its first 125
tokens (a longer poem keeps ``<START>`` and loses ``<EOP>``). Unlike the tutorial, the vocabulary
is a plain unicode array ``vocab`` (``vocab[i]`` is token ``i``) rather than pickled dicts, so
``np.load(..., allow_pickle=False)`` reads it and loading a file never runs code.

Our vocabulary order is fixed so the same corpus always gives the same ids: ``</s>`` = 0,
``<START>`` = 1, ``<EOP>`` = 2, then the characters by frequency (most frequent first), ties by
code point. An imported tutorial file keeps the tutorial's own ids, so its trained weights still
line up with it.

Training does not use the 125-wide rows: :func:`unpad` gives each poem back at its own length and
:class:`BucketBatcher` groups poems of similar length, padding at the end, so little compute goes to
padding and only a handful of shapes reach ``jit``.
"""
from __future__ import annotations

import collections
import hashlib
import pathlib
import zipfile
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from rnnjax.poetry.errors import UserError
from rnnjax.poetry.files import atomic_write

PAD, START, EOP = "</s>", "<START>", "<EOP>"
SPECIALS = (PAD, START, EOP)
MAX_LEN = 125
MAX_BUCKETS = 8

_TUTORIAL_KEYS = {"ix2word", "word2ix"}


class Vocab:
    """Token strings <-> int ids. Every token but the three specials is one character."""

    def __init__(self, tokens: Sequence[str]):
        self.itos: list[str] = [str(t) for t in tokens]
        self.stoi: dict[str, int] = {t: i for i, t in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            dups = sorted(t for t, n in collections.Counter(self.itos).items() if n > 1)
            raise UserError(f"vocabulary has repeated tokens: {dups[:10]}")
        missing = [t for t in SPECIALS if t not in self.stoi]
        if missing:
            raise UserError(f"vocabulary lacks the special tokens {missing}")
        self.pad_id: int = self.stoi[PAD]
        self.start_id: int = self.stoi[START]
        self.eop_id: int = self.stoi[EOP]

    def __len__(self) -> int:
        return len(self.itos)

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocab) and self.itos == other.itos

    def __repr__(self) -> str:
        return f"Vocab({len(self)} tokens)"

    def encode(self, text: str) -> np.ndarray:
        """int32 ids of each character of ``text``; UserError naming every unknown character."""
        stoi = self.stoi
        ids = [stoi.get(ch, -1) for ch in text]
        if -1 in ids:
            unknown = "".join(dict.fromkeys(ch for ch in text if ch not in stoi))
            raise UserError(
                f"{len(unknown)} character(s) not in the vocabulary: {' '.join(unknown)}")
        return np.asarray(ids, dtype=np.int32)

    def decode(self, ids) -> str:
        """Text of ``ids`` (any int sequence or array); PAD, START and EOP leave no trace."""
        skip = {self.pad_id, self.start_id, self.eop_id}
        itos = self.itos
        return "".join(itos[i] for i in np.asarray(ids).ravel().tolist() if i not in skip)

    @classmethod
    def build(cls, poems: Sequence[str]) -> "Vocab":
        """Specials first, then characters by frequency (desc), ties by code point: deterministic."""
        counts: collections.Counter = collections.Counter()
        for poem in poems:
            counts.update(poem)
        chars = sorted(counts, key=lambda ch: (-counts[ch], ord(ch)))
        return cls([*SPECIALS, *chars])

    def to_array(self) -> np.ndarray:
        """A plain unicode array (no object dtype), so ``np.load(allow_pickle=False)`` reads it."""
        return np.array(self.itos, dtype=np.str_)


def encode_poems(poems: Sequence[str], vocab: Vocab, max_len: int = MAX_LEN) -> np.ndarray:
    """``(N, max_len)`` int32: ``<START> poem <EOP>``, first ``max_len`` tokens, PAD in front."""
    if max_len < 2:
        raise ValueError(f"max_len must be at least 2, got {max_len}")
    vocab.encode("".join(dict.fromkeys("".join(poems))))  # one error that lists every unknown char
    out = np.full((len(poems), max_len), vocab.pad_id, dtype=np.int32)
    stoi = vocab.stoi
    for row, poem in zip(out, poems):
        seq = [vocab.start_id, *(stoi[ch] for ch in poem), vocab.eop_id][:max_len]
        row[max_len - len(seq):] = seq
    return out


def save_npz(path, data: np.ndarray, vocab: Vocab) -> None:
    """Write ``data`` and ``vocab`` atomically (:func:`rnnjax.poetry.files.atomic_write`)."""
    path = pathlib.Path(path)
    data = np.asarray(data)
    if data.ndim != 2 or not np.issubdtype(data.dtype, np.integer):
        raise ValueError(f"data must be a 2-D integer array, got {data.dtype} {data.shape}")
    if data.size and (data.min() < 0 or data.max() >= len(vocab)):
        raise ValueError(f"data holds ids outside the vocabulary's 0..{len(vocab) - 1}")
    atomic_write(path, lambda f: np.savez_compressed(f, data=data.astype(np.int32), vocab=vocab.to_array()))


def _pickle_refusal(path) -> UserError:
    return UserError(
        f"{path} holds pickled Python objects (the tutorial's ix2word/word2ix format), and "
        f"unpickling can run arbitrary code; pass --trust-pickle (trust_pickle=True) only if "
        f"you trust where this file came from")


def load_npz(path, trust_pickle: bool = False) -> tuple[np.ndarray, Vocab]:
    """``(data, vocab)`` from our ``tang.npz`` or, with ``trust_pickle``, the tutorial's one."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file; prepare it with `python -m rnnjax.poetry data`")
    if not zipfile.is_zipfile(path):  # else np.load would try it as a pickle
        raise UserError(f"{path}: not an .npz archive")
    try:
        with np.load(path, allow_pickle=False) as f:
            keys = set(f.files)
            if keys & _TUTORIAL_KEYS:
                if not trust_pickle:
                    raise _pickle_refusal(path)
                data, tokens = _load_tutorial(path)
            elif {"data", "vocab"} <= keys:
                data, tokens = f["data"], f["vocab"]
            else:
                raise UserError(f"{path}: expected arrays 'data' and 'vocab', found {sorted(keys)}")
    except UserError:
        raise
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise _pickle_refusal(path) from None
        raise UserError(f"{path}: unreadable ({e})") from None
    except (OSError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise UserError(f"{path}: unreadable ({e})") from None

    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or tokens.dtype.kind != "U":
        raise UserError(f"{path}: 'vocab' must be a 1-D unicode array, got {tokens.dtype}")
    try:
        vocab = Vocab(tokens.tolist())
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    data = np.asarray(data)
    if data.ndim != 2 or not np.issubdtype(data.dtype, np.integer):
        raise UserError(f"{path}: 'data' must be a 2-D integer array, got {data.dtype} {data.shape}")
    if data.size and (data.min() < 0 or data.max() >= len(vocab)):
        raise UserError(f"{path}: 'data' holds ids outside the vocabulary (size {len(vocab)})")
    return data.astype(np.int32, copy=False), vocab


def _load_tutorial(path) -> tuple[np.ndarray, np.ndarray]:
    """The tutorial's ``data`` and its ``ix2word`` dict as an id-ordered token array (trusted)."""
    with np.load(path, allow_pickle=True) as f:
        data = np.asarray(f["data"])
        ix2word = f["ix2word"].item() if "ix2word" in f.files else None
        if ix2word is None:
            ix2word = {i: w for w, i in f["word2ix"].item().items()}
    if not isinstance(ix2word, dict) or sorted(ix2word) != list(range(len(ix2word))):
        raise UserError(f"{path}: ix2word is not a dict over ids 0..n-1")
    return data, np.array([ix2word[i] for i in range(len(ix2word))], dtype=np.str_)


def unpad(data: np.ndarray, vocab: Vocab) -> list[np.ndarray]:
    """Each front-padded row without its leading PADs (views into ``data``)."""
    data = np.asarray(data)
    real = data != vocab.pad_id
    starts = np.where(real.any(axis=1), real.argmax(axis=1), data.shape[1])
    return [row[s:] for row, s in zip(data, starts.tolist())]


def train_val_split(poems: list, val_fraction: float = 0.02, seed: int = 0) -> tuple[list, list]:
    """A fixed held-out split: the same ``seed`` always holds out the same poems.

    Both parts keep the input's order; at least one poem goes to validation when
    ``val_fraction > 0`` and there are two or more poems.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n = len(poems)
    n_val = int(round(n * val_fraction))
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    held = np.zeros(n, dtype=bool)
    held[np.random.default_rng(seed).permutation(n)[:n_val]] = True
    return ([p for p, h in zip(poems, held) if not h], [p for p, h in zip(poems, held) if h])


def fingerprint(path) -> str:
    """sha256 hex of the file: checkpoints record it to tell which data they were trained on."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Batching


class Batch(NamedTuple):
    """Time-major like torch's default RNN layout; ``B`` is always the batcher's ``batch_size``."""

    inputs: np.ndarray   # (T, B) int32: tokens 0..n-2 of each poem
    targets: np.ndarray  # (T, B) int32: tokens 1..n-1, the next token to predict
    mask: np.ndarray     # (T, B) float32: 1 where the target is a real token, 0 on padding


def choose_bucket_lengths(lengths: Sequence[int], batch_size: int,
                          max_buckets: int = MAX_BUCKETS) -> tuple[int, ...]:
    """Bucket lengths that minimise the padded tokens of one epoch (exact, by dynamic programming).

    A poem goes to the shortest bucket that holds it and costs ``bucket - length`` padding; each
    bucket's last batch is filled up to ``batch_size`` with masked rows, which costs too, so a
    bucket for a handful of poems is chosen only when it pays for itself.
    """
    values, counts = np.unique(np.asarray(lengths, dtype=np.int64), return_counts=True)
    m = len(values)
    n_cum = np.concatenate([[0], np.cumsum(counts)])
    s_cum = np.concatenate([[0], np.cumsum(counts * values)])

    def cost(i: int, j: int) -> int:  # one bucket for values[i..j], its length values[j]
        n = n_cum[j + 1] - n_cum[i]
        rows = -(-n // batch_size) * batch_size
        return int(rows * values[j] - (s_cum[j + 1] - s_cum[i]))

    k_max = min(max_buckets, m)
    inf = float("inf")
    best = [[inf] * m for _ in range(k_max + 1)]  # best[k][j]: values[0..j] in k buckets
    back = [[-1] * m for _ in range(k_max + 1)]
    for j in range(m):
        best[1][j] = cost(0, j)
    for k in range(2, k_max + 1):
        for j in range(k - 1, m):
            for i in range(k - 1, j + 1):  # the last bucket is values[i..j]
                c = best[k - 1][i - 1] + cost(i, j)
                if c < best[k][j]:
                    best[k][j], back[k][j] = c, i
    k = min(range(1, k_max + 1), key=lambda k: (best[k][m - 1], k))
    ends, j = [], m - 1
    while k >= 1:
        ends.append(int(values[j]))
        j = back[k][j] - 1
        k -= 1
    return tuple(sorted(ends))


class BucketBatcher:
    """Length-bucketed, end-padded, masked batches; every poem exactly once per epoch.

    ``poems`` are token-id arrays ``<START> … <EOP>`` (as :func:`unpad` returns them). A poem of
    ``n`` tokens is a sequence of ``T = n - 1`` (input, target) steps and goes to the shortest
    bucket length ``>= T``. An epoch shuffles each bucket's poems, cuts them into batches, fills
    each bucket's last batch with fully masked rows, and shuffles the order of all batches; the
    shuffle depends only on ``(seed, epoch)``, so a resumed run sees the same order.
    ``pad_id`` is what masked positions hold; it never reaches the loss.
    """

    def __init__(self, poems: list[np.ndarray], batch_size: int, seed: int = 0,
                 bucket_lengths: Sequence[int] | None = None, *, pad_id: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not len(poems):
            raise ValueError("no poems to batch")
        lengths = np.array([len(p) - 1 for p in poems], dtype=np.int64)
        if lengths.min() < 1:
            raise ValueError("every poem needs at least two tokens (<START> and one more)")
        if bucket_lengths is None:
            bucket_lengths = choose_bucket_lengths(lengths, batch_size)
        self.bucket_lengths: tuple[int, ...] = tuple(sorted({int(b) for b in bucket_lengths}))
        if lengths.max() > self.bucket_lengths[-1]:
            raise ValueError(f"a poem of {lengths.max()} steps is longer than the longest bucket "
                             f"{self.bucket_lengths[-1]}")
        self.batch_size = batch_size
        self.seed = seed
        self.pad_id = pad_id
        self.lengths = lengths
        # One end-padded matrix, one spare all-PAD row (index -1) that fills partial batches.
        width = self.bucket_lengths[-1] + 1
        self._tokens = np.full((len(poems) + 1, width), pad_id, dtype=np.int32)
        for row, poem in zip(self._tokens, poems):
            row[: len(poem)] = poem
        self._steps = np.append(lengths, 0)  # the filler row has no real step
        which = np.searchsorted(self.bucket_lengths, lengths)
        self._members = [np.flatnonzero(which == b) for b in range(len(self.bucket_lengths))]

    def num_batches(self) -> int:
        return sum(-(-len(m) // self.batch_size) for m in self._members)

    def padding_fraction(self) -> float:
        """Share of the (T, B) slots of an epoch that are padding (mask 0); the same every epoch."""
        slots = sum(-(-len(m) // self.batch_size) * self.batch_size * t
                    for m, t in zip(self._members, self.bucket_lengths))
        return 1.0 - float(self.lengths.sum()) / slots

    def epoch(self, epoch: int) -> list[Batch]:
        rng = np.random.default_rng([self.seed, epoch])
        batches = []
        for members, t in zip(self._members, self.bucket_lengths):
            order = rng.permutation(members)
            fill = -len(order) % self.batch_size
            order = np.concatenate([order, np.full(fill, -1, dtype=order.dtype)])
            for rows in order.reshape(-1, self.batch_size):
                batches.append(self._batch(rows, t))
        return [batches[i] for i in rng.permutation(len(batches))]

    def _batch(self, rows: np.ndarray, t: int) -> Batch:
        seq = self._tokens[rows, : t + 1]
        mask = np.arange(t)[:, None] < self._steps[rows][None, :]
        return Batch(np.ascontiguousarray(seq[:, :-1].T), np.ascontiguousarray(seq[:, 1:].T),
                     mask.astype(np.float32))
