"""Training throughput: our jit step vs the tutorial's PyTorch step, and vs this machine's matmul rate.

    python bench/train_throughput.py            # full size: the tutorial's model, batch 128
    python bench/train_throughput.py --quick    # tiny sizes, seconds (a smoke test of the script)

Counts *real* tokens (non-padding targets) per second: the tutorial pads every poem to 125 and
trains on the padding too; we batch by length buckets and mask the slack. FLOPs per token count
matmuls only (forward = 2*(4H(E+H) + 4H(H+H)) + 2HV for a 2-layer LSTM; training ~ 3x forward).
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def matmul_gflops(n: int, reps: int) -> float:
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        f(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def flops_per_token(e: int, h: int, v: int, layers: int) -> float:
    forward = 2 * (4 * h * (e + h)) + (layers - 1) * 2 * (4 * h * (h + h)) + 2 * h * v
    return 3 * forward


def corpus(args):
    """Real poems (data/tang.npz) when present; otherwise lengths drawn like Tang poems' (24..124)."""
    from rnnjax.poetry.data import load_npz, unpad

    path = Path(args.data)
    if path.exists() and not args.quick:
        data, vocab = load_npz(path)
        return data, unpad(data, vocab), len(vocab), vocab.pad_id, f"{path} ({len(data):,} poems)"
    rng = np.random.default_rng(0)
    v = args.vocab
    n = 4000 if not args.quick else 200
    lengths = rng.choice([26, 34, 50, 66, 98, 124], n, p=[0.1, 0.15, 0.25, 0.35, 0.1, 0.05])
    lengths = np.minimum(lengths, args.max_len)
    poems = [np.concatenate([[1], rng.integers(3, v, k - 2), [2]]).astype(np.int32) for k in lengths]
    data = np.zeros((n, args.max_len), np.int32)
    for row, p in zip(data, poems):
        row[-len(p):] = p
    return data, poems, v, 0, f"synthetic ({n} poems, vocabulary {v})"


def bench_jax(poems, v, pad_id, args):
    import jax
    from flax import nnx

    from rnnjax.poetry.data import BucketBatcher
    from rnnjax.poetry.model import PoetryModel
    from rnnjax.poetry.training import TRACES, make_optimizer, train_step

    model = PoetryModel(v, args.embedding_dim, args.hidden_dim, args.num_layers, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    opt_state = make_optimizer(1e-3, 1.0).init(params)
    batcher = BucketBatcher(poems, args.batch_size, seed=0, pad_id=pad_id)
    batches = batcher.epoch(0)[: args.steps]
    key, hyper = jax.random.key(0), (np.float32(1e-3), np.float32(1.0))

    def step(p, o, b):
        p, o, loss, ok = train_step(p, o, rest, b.inputs, b.targets, b.mask, key, np.int32(0), *hyper,
                                    graphdef=graphdef, dropout=False)
        return p, o, float(loss)

    t = time.perf_counter()
    seen = set()
    for b in batches:  # compile every bucket length used below, untimed
        if b.inputs.shape[0] not in seen:
            seen.add(b.inputs.shape[0])
            params, opt_state, _ = step(params, opt_state, b)
    compile_s = time.perf_counter() - t
    compiles = TRACES["train"]
    t = time.perf_counter()
    for b in batches:
        params, opt_state, loss = step(params, opt_state, b)
    dt = time.perf_counter() - t
    real = sum(float(b.mask.sum()) for b in batches)
    slots = sum(b.mask.size for b in batches)
    assert TRACES["train"] == compiles, "recompiled after warm-up"
    return dict(real_tok_s=real / dt, slot_tok_s=slots / dt, step_s=dt / len(batches), compiles=compiles,
                compile_s=compile_s, buckets=batcher.bucket_lengths, padding=1 - real / slots,
                lengths=sorted(seen), loss=loss)


def bench_torch(data, v, pad_id, args):
    """The tutorial's training step: Net on (124, B) slices of the 125-padded rows, CrossEntropyLoss
    over every position, Adam; plus clip_grad_norm_ so both sides do the same work."""
    import torch
    import torch.nn as nn
    from tutorial_ref import Net

    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)

    model = Net(v, args.embedding_dim, args.hidden_dim)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)

    def step(rows):
        batch = torch.from_numpy(data[rows]).long().transpose(0, 1).contiguous()
        optimizer.zero_grad()
        inp, target = batch[:-1, :], batch[1:, :]
        output, _ = model(inp)
        loss = criterion(output, target.reshape(-1))
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return int((target != pad_id).sum())

    step(rng.choice(len(data), args.batch_size, replace=False))  # warm-up
    batches = [rng.choice(len(data), args.batch_size, replace=False) for _ in range(args.torch_steps)]
    t = time.perf_counter()
    real = sum(step(rows) for rows in batches)
    dt = time.perf_counter() - t
    slots = args.torch_steps * args.batch_size * (data.shape[1] - 1)
    return dict(real_tok_s=real / dt, slot_tok_s=slots / dt, step_s=dt / args.torch_steps)


def main():
    from rnnjax.poetry.config import DEFAULT_DATA

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--steps", type=int, default=12, help="timed JAX steps (after compiling)")
    p.add_argument("--torch-steps", type=int, default=6)
    args = p.parse_args()
    full = dict(embedding_dim=128, hidden_dim=256, num_layers=2, batch_size=128, vocab=8293, max_len=125)
    quick = dict(embedding_dim=16, hidden_dim=32, num_layers=2, batch_size=16, vocab=300, max_len=40)
    for k, val in (quick if args.quick else full).items():
        setattr(args, k, val)
    if args.quick:
        args.steps, args.torch_steps = 4, 3

    import jax

    data, poems, v, pad_id, source = corpus(args)
    print(f"data: {source}; model: LSTM {args.num_layers}x{args.hidden_dim}, embedding {args.embedding_dim}, "
          f"vocab {v}, batch {args.batch_size}; {os.cpu_count()} CPU cores, jax {jax.__version__} "
          f"on {jax.devices()[0].platform}")
    peak = matmul_gflops(512 if args.quick else 2048, 3 if args.quick else 10)
    print(f"float32 matmul (jit jnp.dot, {512 if args.quick else 2048}^2): {peak:,.1f} GFLOP/s")
    rss0 = maxrss_mb()
    ours = bench_jax(poems, v, pad_id, args)
    rss_jax = maxrss_mb()
    fpt = flops_per_token(args.embedding_dim, args.hidden_dim, v, args.num_layers)
    print(f"ours:  {ours['real_tok_s']:,.0f} real tokens/s ({ours['step_s']:.3f} s/step over {args.steps} "
          f"steps, bucket lengths used {ours['lengths']}, {ours['padding']:.1%} padding in them); "
          f"{ours['compiles']} compiles ({ours['compile_s']:.1f} s), none after warm-up")
    print(f"       {fpt / 1e6:.2f} MFLOP/token (train) -> {fpt * ours['slot_tok_s'] / 1e9:,.1f} GFLOP/s executed "
          f"= {fpt * ours['slot_tok_s'] / 1e9 / peak:.0%} of matmul rate "
          f"({fpt * ours['real_tok_s'] / 1e9 / peak:.0%} counting real tokens only)")
    print(f"       peak RSS {rss_jax:,.0f} MB (before the JAX step: {rss0:,.0f} MB)")
    ref = bench_torch(data, v, pad_id, args)
    print(f"torch: {ref['real_tok_s']:,.0f} real tokens/s ({ref['step_s']:.3f} s/step, padded to "
          f"{data.shape[1]}; {ref['slot_tok_s']:,.0f} tokens/s counting padding = "
          f"{fpt * ref['slot_tok_s'] / 1e9 / peak:.0%} of matmul rate); peak RSS so far {maxrss_mb():,.0f} MB")
    print(f"ratio: ours / tutorial = {ours['real_tok_s'] / ref['real_tok_s']:.2f}x real tokens/s "
          f"(target >= 3x); per executed slot {ours['slot_tok_s'] / ref['slot_tok_s']:.2f}x")


if __name__ == "__main__":
    main()
