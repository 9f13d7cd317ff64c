"""Training-step throughput of three LSTM language models on whatever device JAX and torch see.

    python bench/gpu_compare.py --batch 128 512        # on a GPU machine (called by bench/gpu_check.sh)
    python bench/gpu_compare.py --tiny --batch 4 8     # dry run on the CPU, tiny sizes
    python bench/gpu_compare.py --precision float32    # one precision (default: float32 and bfloat16)

All three train the tutorial's model (Embedding 128 -> 2-layer LSTM 256 -> Linear V) on the same
full (124, B) token blocks with Adam and global-norm clipping, so tokens/s compare like for like:
  * rnnjax      -- our jit train step (rnnjax.poetry.training.train_step, lax.scan LSTM)
  * torch       -- the tutorial's Net (cuDNN LSTM on a GPU)
  * jax-cudnn   -- jax.experimental.rnn.lstm (cuDNN from JAX); its cuDNN kernel only lowers on a
                   GPU, so on the CPU the same model runs jax.experimental.rnn.lstm_ref instead
                   and the row is marked "ref".
In bfloat16, rnnjax runs `train_step(precision="bfloat16")` (bfloat16 matmul operands, float32
master weights, state and loss) and torch the same model under `torch.autocast(dtype=bfloat16)`
(cuDNN's LSTM and the output layer in bfloat16); jax-cudnn has no mixed-precision path of its own,
so it runs in float32 only.
Prints one `RESULT impl precision batch tokens/s` line per measurement for gpu_check.sh's table.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def timed(step, state, batches, repeats):
    state = step(state, batches[0])  # compile / warm up
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        state = step(state, batches[i % len(batches)])
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_rnnjax(cfg, tokens, precision):
    import jax
    from flax import nnx

    from rnnjax.poetry.model import PoetryModel
    from rnnjax.poetry.training import make_optimizer, train_step

    model = PoetryModel(cfg.vocab, cfg.embed, cfg.hidden, cfg.layers, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    opt_state = make_optimizer(1e-3, 1.0).init(params)
    key = jax.random.key(0)
    mask = np.ones(tokens[0][1:].shape, np.float32)

    def step(state, block):
        p, o = state
        p, o, loss, _ = train_step(p, o, rest, block[:-1], block[1:], mask, key, np.int32(0),
                                   np.float32(1e-3), np.float32(1.0), graphdef=graphdef, dropout=False,
                                   precision=precision)
        jax.block_until_ready(loss)
        return p, o

    return timed(step, (params, opt_state), tokens, cfg.repeats)


def bench_torch(cfg, tokens, precision):
    import torch
    import torch.nn as nn

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    emb, lstm, lin = nn.Embedding(cfg.vocab, cfg.embed), nn.LSTM(cfg.embed, cfg.hidden, cfg.layers), \
        nn.Linear(cfg.hidden, cfg.vocab)
    model = nn.ModuleList([emb, lstm, lin]).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    crit = nn.CrossEntropyLoss()
    blocks = [torch.from_numpy(t).long().to(device) for t in tokens]

    def step(state, block):
        opt.zero_grad()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bfloat16"):
            out, _ = lstm(emb(block[:-1]))
            logits = lin(out).reshape(-1, cfg.vocab)
        loss = crit(logits.float(), block[1:].reshape(-1))
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss.item()  # synchronise
        return state

    return timed(step, None, blocks, cfg.repeats), device


def bench_jax_cudnn(cfg, tokens):
    import jax
    import jax.numpy as jnp
    import optax
    from jax.experimental import rnn

    on_gpu = jax.default_backend() == "gpu"
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    params = {
        "emb": jax.random.normal(k1, (cfg.vocab, cfg.embed)),
        "lstm": rnn.init_lstm_weight(k2, cfg.embed, cfg.hidden, cfg.layers, False),
        "w": jax.random.uniform(k3, (cfg.hidden, cfg.vocab), minval=-cfg.hidden**-0.5, maxval=cfg.hidden**-0.5),
        "b": jnp.zeros((cfg.vocab,)),
    }
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))

    def lstm(x, w):
        b = x.shape[0]
        h0 = jnp.zeros((cfg.layers, b, cfg.hidden))
        lengths = jnp.full((b,), x.shape[1], jnp.int32)
        if on_gpu:
            y, _, _ = rnn.lstm(x, h0, h0, w, lengths, cfg.embed, cfg.hidden, cfg.layers, 0.0, False)
        else:
            wih, whh, bih, bhh = rnn.unpack_lstm_weights(w, cfg.embed, cfg.hidden, cfg.layers, False)
            y, _, _ = rnn.lstm_ref(x, h0, h0, wih, whh, bih, bhh, lengths, cfg.embed, cfg.hidden,
                                   cfg.layers, 0.0, False)
        return y

    def loss_fn(p, block):
        x = p["emb"][block[:-1].T]  # batch-first for cuDNN
        logits = lstm(x, p["lstm"]) @ p["w"] + p["b"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, block[1:].T).mean()

    @jax.jit
    def train(p, o, block):
        loss, g = jax.value_and_grad(loss_fn)(p, block)
        updates, o = opt.update(g, o, p)
        return optax.apply_updates(p, updates), o, loss

    def step(state, block):
        p, o, loss = train(*state, block)
        jax.block_until_ready(loss)
        return p, o

    return timed(step, (params, opt.init(params)), tokens, cfg.repeats), "cudnn" if on_gpu else "ref"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--tiny", action="store_true", help="tiny model and sequences (CPU dry run)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--precision", nargs="+", choices=("float32", "bfloat16"), default=["float32", "bfloat16"])
    cfg = ap.parse_args()
    cfg.vocab, cfg.embed, cfg.hidden, cfg.layers, cfg.steps = (
        (50, 8, 16, 2, 12) if cfg.tiny else (8711, 128, 256, 2, 124))
    if cfg.tiny:
        cfg.repeats = min(cfg.repeats, 2)

    import jax

    print(f"device: jax {jax.devices()[0].device_kind} ({jax.default_backend()}); "
          f"model: vocab {cfg.vocab}, embedding {cfg.embed}, LSTM {cfg.layers}x{cfg.hidden}, T={cfg.steps}")
    rng = np.random.default_rng(0)
    for b in cfg.batch:
        tokens = [rng.integers(0, cfg.vocab, (cfg.steps + 1, b)).astype(np.int32) for _ in range(3)]
        n = cfg.steps * b
        for precision in cfg.precision:
            t = bench_rnnjax(cfg, tokens, precision)
            print(f"RESULT rnnjax {precision} B={b} {n / t:,.0f} tokens/s ({t * 1e3:.1f} ms/step)", flush=True)
            t, dev = bench_torch(cfg, tokens, precision)
            print(f"RESULT torch({dev}) {precision} B={b} {n / t:,.0f} tokens/s ({t * 1e3:.1f} ms/step)", flush=True)
        if "float32" in cfg.precision:
            t, kind = bench_jax_cudnn(cfg, tokens)
            print(f"RESULT jax-{kind} float32 B={b} {n / t:,.0f} tokens/s ({t * 1e3:.1f} ms/step)", flush=True)

if __name__ == "__main__":
    main()
