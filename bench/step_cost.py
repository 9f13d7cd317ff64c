#!/usr/bin/env python
"""Seconds per training step of several model sizes, taking turns batch by batch on the same batches,
so that their ratios hold on a shared machine. `bench/lr_sweep.py --seconds-per-step` takes them.

    python bench/step_cost.py                       # 2x256, 2x512 and 3x384 (embedding 128), bfloat16
    python bench/step_cost.py --sizes 2x256 2x512 --steps 60

Also prints each size's parameter count and its float16 export size (the shipped folder's limit is 20 MB).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["2x256", "2x512", "3x384"], help="LAYERSxHIDDEN")
    p.add_argument("--embedding-dim", type=int, default=128)
    p.add_argument("--precision", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--steps", type=int, default=40, help="timed steps per size, after one warm-up pass")
    p.add_argument("--data", default="data/tang.npz")
    args = p.parse_args()

    import jax

    from rnnjax.poetry.config import TrainConfig
    from rnnjax.poetry.data import BucketBatcher
    from rnnjax.poetry.training import _load_data, _State

    base = TrainConfig(data=args.data, precision=args.precision, embedding_dim=args.embedding_dim)
    data = _load_data(base, lambda *_: None)
    batches = BucketBatcher(data.train, base.batch_size, base.seed, pad_id=data.vocab.pad_id).epoch(0)
    states = {}
    for size in args.sizes:
        layers, hidden = (int(x) for x in size.split("x"))
        cfg = TrainConfig(data=args.data, precision=args.precision, embedding_dim=args.embedding_dim,
                          num_layers=layers, hidden_dim=hidden)
        states[size] = _State(cfg, len(data.vocab))
    # Warm-up: one step per bucket length compiles every shape the timed steps will meet.
    lengths = {}
    for b in batches:
        lengths.setdefault(b.inputs.shape[0], b)
    for s in states.values():
        for b in lengths.values():
            s.train_on(b, 0, 1e-3)
    seconds = {size: 0.0 for size in states}
    tokens = 0
    for i, b in enumerate(batches[:args.steps]):
        tokens += int(b.mask.sum())
        for size, s in states.items():
            t = time.perf_counter()
            s.train_on(b, i, 1e-3)  # returns host floats: the step has finished
            seconds[size] += time.perf_counter() - t
    n = min(args.steps, len(batches))
    first = args.sizes[0]
    print(f"{args.precision}, embedding {args.embedding_dim}, {n} steps of 128 poems each, sizes taking turns "
          f"({jax.devices()[0].platform}, {len(jax.devices())} device(s))\n")
    print("| size | parameters | float16 export | s/step | real tokens/s | cost vs " + first + " |")
    print("|---|---|---|---|---|---|")
    for size, s in states.items():
        mb = 2 * s.n_params / 1e6
        print(f"| {size} | {s.n_params:,} | {mb:.1f} MB | {seconds[size] / n:.3f} | {tokens / seconds[size]:,.0f} | "
              f"{seconds[size] / seconds[first]:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
