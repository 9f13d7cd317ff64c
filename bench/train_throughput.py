"""Training throughput: our jit step (float32 and bfloat16) vs the tutorial's PyTorch step, side by side.

    python bench/train_throughput.py                      # full size, both precisions and the tutorial
    python bench/train_throughput.py --precision bfloat16 # one precision (and the tutorial)
    python bench/train_throughput.py --quick              # tiny sizes, seconds (a smoke test of the script)

Counts *real* tokens (non-padding targets) per second: the tutorial pads every poem to 125 and
trains on the padding too; we batch by length buckets and mask the slack. FLOPs per token count
matmuls only (forward = 2*(4H(E+H) + 4H(H+H)) + 2HV for a 2-layer LSTM; training ~ 3x forward).

The sides take turns, batch by batch (float32 step, bfloat16 step, tutorial step, ...), so a load
that comes and goes on a shared machine falls on all of them alike. Peak RSS is measured for each
precision in a fresh process of its own (ru_maxrss is a per-process high-water mark). With both
precisions the last line is ``bf16/float32: X.XXx; bf16/tutorial: Y.YYx`` (real tokens/s).
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from machine import describe  # bench/machine.py: the script's own folder is on sys.path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def maxrss_mb() -> float:
    """This process's peak RSS in MB: VmHWM, which starts afresh at exec (ru_maxrss of a child keeps
    its parent's high-water mark on Linux)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def reset_peak_rss() -> None:
    """Start VmHWM afresh at the current RSS (Linux >= 4.0; a no-op elsewhere)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


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


class JaxSide:
    """Our training step at one precision: its own parameters and optimizer state, the same batches."""

    def __init__(self, poems, v, pad_id, args, precision):
        import jax
        from flax import nnx

        from rnnjax.poetry.data import BucketBatcher
        from rnnjax.poetry.model import PoetryModel
        from rnnjax.poetry.training import make_optimizer

        model = PoetryModel(v, args.embedding_dim, args.hidden_dim, args.num_layers, rngs=nnx.Rngs(0))
        self.graphdef, self.params, self.rest = nnx.split(model, nnx.Param, ...)
        self.opt_state = make_optimizer(1e-3, 1.0).init(self.params)
        self.batcher = BucketBatcher(poems, args.batch_size, seed=0, pad_id=pad_id)
        self.batches = self.batcher.epoch(0)[: args.steps]
        self.key, self.hyper = jax.random.key(0), (np.float32(1e-3), np.float32(1.0))
        self.precision = precision
        self.seen, self.compile_s, self.time, self.loss = set(), 0.0, 0.0, None

    def step(self, b):
        from rnnjax.poetry.training import train_step

        self.params, self.opt_state, loss, ok = train_step(
            self.params, self.opt_state, self.rest, b.inputs, b.targets, b.mask, self.key, np.int32(0),
            *self.hyper, graphdef=self.graphdef, dropout=False, precision=self.precision)
        return float(loss)

    def warm_up(self):
        """Compile every bucket length used below, untimed."""
        from rnnjax.poetry.training import TRACES

        t = time.perf_counter()
        for b in self.batches:
            if b.inputs.shape[0] not in self.seen:
                self.seen.add(b.inputs.shape[0])
                self.step(b)
        self.compile_s = time.perf_counter() - t
        self.compiles = TRACES["train"]

    def timed(self, i):
        t = time.perf_counter()
        self.loss = self.step(self.batches[i])
        self.time += time.perf_counter() - t

    def result(self):
        real = sum(float(b.mask.sum()) for b in self.batches)
        slots = sum(b.mask.size for b in self.batches)
        return dict(real_tok_s=real / self.time, slot_tok_s=slots / self.time,
                    step_s=self.time / len(self.batches),
                    compile_s=self.compile_s, padding=1 - real / slots, lengths=sorted(self.seen), loss=self.loss)


class TorchSide:
    """The tutorial's training step: Net on (124, B) slices of the 125-padded rows, CrossEntropyLoss
    over every position, Adam; plus clip_grad_norm_ so both sides do the same work."""

    def __init__(self, data, v, pad_id, args):
        import torch
        import torch.nn as nn
        from tutorial_ref import Net

        torch.set_num_threads(os.cpu_count())
        torch.manual_seed(0)
        self.torch, self.nn, self.data, self.pad_id = torch, nn, data, pad_id
        self.model = Net(v, args.embedding_dim, args.hidden_dim)
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        rng = np.random.default_rng(0)
        self.step(rng.choice(len(data), args.batch_size, replace=False))  # warm-up
        self.batches = [rng.choice(len(data), args.batch_size, replace=False) for _ in range(args.torch_steps)]
        self.time, self.real = 0.0, 0
        self.slots = args.torch_steps * args.batch_size * (data.shape[1] - 1)

    def step(self, rows):
        batch = self.torch.from_numpy(self.data[rows]).long().transpose(0, 1).contiguous()
        self.optimizer.zero_grad()
        inp, target = batch[:-1, :], batch[1:, :]
        output, _ = self.model(inp)
        loss = self.criterion(output, target.reshape(-1))
        loss.backward()
        self.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        return int((target != self.pad_id).sum())

    def timed(self, i):
        t = time.perf_counter()
        self.real += self.step(self.batches[i])
        self.time += time.perf_counter() - t

    def result(self):
        n = len(self.batches)
        return dict(real_tok_s=self.real / self.time, slot_tok_s=self.slots / self.time, step_s=self.time / n)


def peak_rss(precision: str, args) -> tuple[float, float]:
    """Peak RSS (MB) of a fresh process that runs our training steps at `precision`: over its whole
    life (compiling included), and over the steps after the warm-up (the step itself)."""
    cmd = [sys.executable, __file__, "--rss-only", precision, "--steps", str(args.steps), "--data", args.data]
    if args.quick:
        cmd.append("--quick")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    whole, steps = out.strip().splitlines()[-1].split()
    return float(whole), float(steps)


def main():
    from rnnjax.poetry.config import COMPUTE_PRECISIONS, DEFAULT_DATA

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--precision", choices=(*COMPUTE_PRECISIONS, "both"), default="both",
                   help="our step's precision; both: float32 and bfloat16 side by side")
    p.add_argument("--steps", type=int, default=12, help="timed JAX steps per precision (after compiling)")
    p.add_argument("--torch-steps", type=int, default=6)
    p.add_argument("--no-torch", action="store_true", help="skip the tutorial's step")
    p.add_argument("--no-rss", action="store_true", help="skip the per-precision peak-RSS processes")
    p.add_argument("--rss-only", choices=COMPUTE_PRECISIONS, help=argparse.SUPPRESS)
    args = p.parse_args()
    full = dict(embedding_dim=128, hidden_dim=256, num_layers=2, batch_size=128, vocab=8293, max_len=125)
    quick = dict(embedding_dim=16, hidden_dim=32, num_layers=2, batch_size=16, vocab=300, max_len=40)
    for k, val in (quick if args.quick else full).items():
        setattr(args, k, val)
    if args.quick:
        args.steps, args.torch_steps = 4, 3

    import jax

    data, poems, v, pad_id, source = corpus(args)
    if args.rss_only:  # the child process of peak_rss(): warm up, run the steps, print the high-water mark
        side = JaxSide(poems, v, pad_id, args, args.rss_only)
        side.warm_up()
        with_compile = maxrss_mb()
        reset_peak_rss()  # from here on: the steps, not XLA's compiler
        for i in range(len(side.batches)):
            side.timed(i)
        print(with_compile, maxrss_mb())
        return
    precisions = list(COMPUTE_PRECISIONS) if args.precision == "both" else [args.precision]
    print(f"data: {source}; model: LSTM {args.num_layers}x{args.hidden_dim}, embedding {args.embedding_dim}, "
          f"vocab {v}, batch {args.batch_size}; {os.cpu_count()} CPU cores, jax {jax.__version__} "
          f"on {jax.devices()[0].platform}; load average {os.getloadavg()[0]:.2f}")
    print(f"machine: {describe()}")
    n = 512 if args.quick else 2048
    peak = matmul_gflops(n, 3 if args.quick else 10)
    print(f"float32 matmul (jit jnp.dot, {n}^2): {peak:,.1f} GFLOP/s")
    ours = {prec: JaxSide(poems, v, pad_id, args, prec) for prec in precisions}
    for side in ours.values():
        side.warm_up()
    ref = None if args.no_torch else TorchSide(data, v, pad_id, args)
    # Take turns, batch by batch, so that each side sees the same machine load.
    for i in range(max(args.steps, 0 if ref is None else args.torch_steps)):
        for side in ours.values():
            if i < args.steps:
                side.timed(i)
        if ref is not None and i < args.torch_steps:
            ref.timed(i)
    fpt = flops_per_token(args.embedding_dim, args.hidden_dim, v, args.num_layers)
    results = {}
    for prec, side in ours.items():
        r = results[prec] = side.result()
        print(f"ours, {prec}: {r['real_tok_s']:,.0f} real tokens/s ({r['step_s']:.3f} s/step over {args.steps} "
              f"steps, bucket lengths used {r['lengths']}, {r['padding']:.1%} padding in them); "
              f"{len(r['lengths'])} compiles ({r['compile_s']:.1f} s), none after warm-up; "
              f"last loss {r['loss']:.3f}")
        print(f"       {fpt / 1e6:.2f} MFLOP/token (train) -> {fpt * r['slot_tok_s'] / 1e9:,.1f} GFLOP/s executed "
              f"= {fpt * r['slot_tok_s'] / 1e9 / peak:.0%} of the float32 matmul rate")
    if ref is not None:
        t = ref.result()
        print(f"torch: {t['real_tok_s']:,.0f} real tokens/s ({t['step_s']:.3f} s/step, padded to "
              f"{data.shape[1]}; {t['slot_tok_s']:,.0f} tokens/s counting padding = "
              f"{fpt * t['slot_tok_s'] / 1e9 / peak:.0%} of the float32 matmul rate)")
        for prec, r in results.items():
            print(f"ratio: ours {prec} / tutorial = {r['real_tok_s'] / t['real_tok_s']:.2f}x real tokens/s; "
                  f"per executed slot {r['slot_tok_s'] / t['slot_tok_s']:.2f}x")
    if not args.no_rss:
        for prec in precisions:
            whole, steps = peak_rss(prec, args)
            print(f"peak RSS, {prec}, own process: {steps:,.0f} MB over its {args.steps} training steps "
                  f"(after the warm-up); {whole:,.0f} MB with XLA compiling them")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if len(results) == 2:
        bf, f32 = results["bfloat16"]["real_tok_s"], results["float32"]["real_tok_s"]
        tail = f"; bf16/tutorial: {bf / t['real_tok_s']:.2f}x" if ref is not None else ""
        print(f"bf16/float32: {bf / f32:.2f}x{tail}")


if __name__ == "__main__":
    main()
