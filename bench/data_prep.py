"""Benchmark the data pipeline on the full corpus (not a test: it reads the real 85 MB tarball).

    python bench/data_prep.py [--cache-dir DIR] [--batch-size 128]

Prints the wall time of ``prepare_dataset`` from the cached npm tarball into a temporary folder
(target: 60 s or less), and the share of padding in one epoch of length-bucketed batches next to
the tutorial's fixed 125-token rows (target: 10 % or less).
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from rnnjax.poetry.data import MAX_LEN, BucketBatcher, load_npz, prepare_dataset, unpad  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", help="npm tarball cache (default $RNNJAX_CACHE or ~/.cache/rnnjax)")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "tang.npz"
        start = time.perf_counter()
        prepare_dataset(out, cache_dir=args.cache_dir)
        prep_s = time.perf_counter() - start
        data, vocab = load_npz(out)

    poems = unpad(data, vocab)
    start = time.perf_counter()
    batcher = BucketBatcher(poems, args.batch_size, seed=0, pad_id=vocab.pad_id)
    batches = batcher.epoch(0)
    batch_s = time.perf_counter() - start
    real = sum(float(b.mask.sum()) for b in batches)
    slots = sum(b.mask.size for b in batches)
    steps = sum(len(p) - 1 for p in poems)
    fixed = 1 - steps / (len(poems) * (MAX_LEN - 1))  # the tutorial: every row 124 steps

    print()
    print(f"prepare_dataset (full corpus, cached tarball): {prep_s:.1f} s wall  [target <= 60 s]")
    print(f"bucketed batches, batch {args.batch_size}: buckets {batcher.bucket_lengths}, "
          f"{len(batches)} batches per epoch, built in {batch_s:.2f} s")
    print(f"padding share: bucketed {1 - real / slots:.1%}  [target <= 10%]; "
          f"tutorial's fixed {MAX_LEN}-token rows {fixed:.1%} "
          f"(PAD share of its (N, {MAX_LEN}) array {np.mean(data == vocab.pad_id):.1%})")


if __name__ == "__main__":
    main()
