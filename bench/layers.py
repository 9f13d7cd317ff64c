"""Forward+backward time of rnnjax.LSTM vs torch.nn.LSTM, same weights, same machine, one run.

    python bench/layers.py                 # the tutorial's shape: T=124, B=128, input 128, hidden 256, 2 layers
    python bench/layers.py --cell gru --repeats 5
    python bench/layers.py --cell lstmcell        # one cell stepped over time: torch's Python loop
                                                  # against lax.scan over rnnjax.LSTMCell in one jit

Prints the median of warm repeats for each side (run alternately) and the ratio rnnjax / torch
(< 1 means faster).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

import rnnjax

from machine import describe  # bench/machine.py: the script's own folder is on sys.path


def interleaved_medians(fns, repeats):
    """Median wall time of each function, run in turn (a, b, a, b, ...) so that both sides see the
    same machine: on a shared 2-core box, timing one side's repeats and then the other's moved the
    ratio by +-15% from run to run."""
    for fn in fns:
        fn()  # warm: compile / allocate
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cell", choices=["lstm", "gru", "rnn", "lstmcell", "grucell", "rnncell"], default="lstm",
                    help="a layer, or a cell stepped over time (one layer; --layers is ignored)")
    ap.add_argument("--steps", type=int, default=124)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--input", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--unroll", type=int, default=None, help="lax.scan unroll (default: the module's)")
    args = ap.parse_args()

    torch.set_num_threads(os.cpu_count() or 1)
    name = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN", "lstmcell": "LSTMCell", "grucell": "GRUCell",
            "rnncell": "RNNCell"}[args.cell]
    cell = name.endswith("Cell")
    if cell:
        args.layers = 1
        tmod = getattr(torch.nn, name)(args.input, args.hidden)
        jmod = getattr(rnnjax, name)(args.input, args.hidden, rngs=nnx.Rngs(0))
    else:
        tmod = getattr(torch.nn, name)(args.input, args.hidden, args.layers)
        kw = {} if args.unroll is None else {"unroll": args.unroll}
        jmod = getattr(rnnjax, name)(args.input, args.hidden, args.layers, rngs=nnx.Rngs(0), **kw)
    jmod.load_torch_state_dict(tmod.state_dict())
    lstm_cell = name == "LSTMCell"

    def t_outputs(x):
        """The layer's output, or the cell's h at every step of a Python loop, as users write it."""
        if not cell:
            return tmod(x)[0]
        h, outs = None, []
        for x_t in x:
            h = tmod(x_t, h)
            outs.append(h[0] if lstm_cell else h)
        return torch.stack(outs)

    def j_outputs(module, x):
        """The same in JAX: the layer, or lax.scan over the cell."""
        if not cell:
            return module(x)[0]
        zeros = jnp.zeros((x.shape[1], args.hidden), x.dtype)

        def step(carry, x_t):
            carry = module(x_t, carry)
            return carry, (carry[0] if lstm_cell else carry)

        return jax.lax.scan(step, (zeros, zeros) if lstm_cell else zeros, x)[1]

    x_np = np.random.default_rng(0).standard_normal((args.steps, args.batch, args.input)).astype(np.float32)
    x_t = torch.tensor(x_np, requires_grad=True)

    def torch_step():
        tmod.zero_grad(set_to_none=True)
        x_t.grad = None
        t_outputs(x_t).sum().backward()

    graphdef, params = nnx.split(jmod)

    @jax.jit
    def jax_step(params, x):
        def loss(params, x):
            return j_outputs(nnx.merge(graphdef, params), x).sum()

        return jax.value_and_grad(loss, argnums=(0, 1))(params, x)

    x_j = jnp.asarray(x_np)

    def jax_run():
        jax.block_until_ready(jax_step(params, x_j))

    # Same numbers first: a fast wrong answer is no answer.
    (jl, (jg, _)) = jax_step(params, x_j)
    torch_step()
    tl = t_outputs(x_t).sum().item()
    assert abs(float(jl) - tl) <= 1e-4 * max(1.0, abs(tl)), (float(jl), tl)

    t_torch, t_jax = interleaved_medians([torch_step, jax_run], args.repeats)
    print(f"{name} fwd+bwd T={args.steps} B={args.batch} I={args.input} H={args.hidden} L={args.layers} "
          f"on {os.cpu_count()} CPU cores (jax {jax.__version__}, torch {torch.__version__})")
    print(f"machine: {describe()}")
    how = (" (a Python loop over time)", " (lax.scan over time, in one jit)") if cell else ("", "")
    print(f"  torch.nn.{name}{how[0]}: {t_torch * 1e3:8.1f} ms")
    print(f"  rnnjax.{name}{how[1]}:   {t_jax * 1e3:8.1f} ms")
    print(f"  ratio rnnjax/torch: {t_jax / t_torch:.2f}  ({'faster' if t_jax < t_torch else 'slower'})")


if __name__ == "__main__":
    main()
