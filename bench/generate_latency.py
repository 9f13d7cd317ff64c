"""Generation speed: our jit-compiled loop vs the tutorial's per-character PyTorch loop, same weights.

    python bench/generate_latency.py [--repeats 5] [--batch 256] [--precision bfloat16] [--meter-only | --one-only]

Random weights of the tutorial's size (vocabulary 8293, embedding 128, hidden 256, 2 LSTM layers)
are made in a torch `Net` (the tutorial's class, verbatim but for `.cuda()`) and loaded into our
PoetryModel with `load_torch_state_dict`. Targets: one 48-token greedy poem in <= 1/3 of the
tutorial's time (warm: compile excluded, reported apart), and >= 500 poems/s at batch 256.
Last, side by side, the same batch of sampled 五言绝句 with and without `--meter` (格律 masks in the
same loop; target: >= 0.8 of the poems/s without). `--meter-only` runs just that row, `--one-only`
just the one greedy poem. `--precision` is our Generator's (the weights' dtype while decoding; the
tutorial stays float32): on a CPU with native bfloat16 the two are about level for one poem, and
bfloat16 is the faster for batches.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from machine import describe  # bench/machine.py: the script's own folder is on sys.path

V, EMBED, HIDDEN = 8293, 128, 256
PREFIX = "床前明月光"
STEPS = 48  # the tutorial's `for i in range(48)`


def make_vocab():
    from rnnjax.poetry.data import EOP, PAD, START, Vocab

    # The tutorial's vocabulary size: specials, the two marks, then CJK ideographs (the prefix's among them).
    chars = list(dict.fromkeys([*PREFIX, *(chr(0x4E00 + i) for i in range(V))]))
    return Vocab([PAD, START, EOP, "，", "。", *chars[: V - 5]])


def tutorial_net():
    import torch as t
    from tutorial_ref import Net

    t.manual_seed(0)
    net = Net(V, EMBED, HIDDEN)
    net.eval()
    return net


def tutorial_generate(model, start_words, ix2word, word2ix):
    """The tutorial's `generate`, verbatim but on the CPU."""
    import torch as t

    txt = []
    for word in start_words:
        txt.append(word)
    input = t.Tensor([word2ix["<START>"]]).view(1, 1).long()
    hidden = None
    num = len(txt)
    for i in range(48):
        output, hidden = model(input, hidden)
        if i < num:
            w = txt[i]
            input = (input.data.new([word2ix[w]])).view(1, 1)
        else:
            top_index = output.data[0].topk(1)[1][0]
            w = ix2word[top_index.item()]
            txt.append(w)
            input = (input.data.new([top_index])).view(1, 1)
        if w == "<EOP>":
            break
    return "".join(txt)


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--meter-only", action="store_true", help="only the --meter side-by-side row")
    p.add_argument("--one-only", action="store_true", help="only the one greedy poem against the tutorial")
    p.add_argument("--precision", choices=("float32", "bfloat16", "float16"), default="float32",
                   help="our Generator's precision (default float32)")
    args = p.parse_args()

    import jax
    import torch
    from flax import nnx

    from rnnjax.poetry.generation import Generator, Sampling
    from rnnjax.poetry.model import PoetryModel

    vocab = make_vocab()
    net = tutorial_net()
    model = PoetryModel(V, EMBED, HIDDEN, 2, rngs=nnx.Rngs(0))
    model.load_torch_state_dict(net.state_dict())
    ix2word, word2ix = dict(enumerate(vocab.itos)), vocab.stoi
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); vocab {V}, embedding {EMBED}, hidden {HIDDEN}, 2 layers; "
          f"ours in {args.precision}; load average {os.getloadavg()[0]:.2f}")
    print(f"machine: {describe()}")
    if args.meter_only:
        meter_row(model, vocab, args)
        return

    # --- one greedy poem ---------------------------------------------------------------------------
    tutorial_generate(net, PREFIX, ix2word, word2ix)  # warm torch's allocator and kernels
    gen = Generator(model, vocab, max_len=STEPS, precision=args.precision)
    # The tutorial's loop has no form: compare with free form, and no line cap would matter here.
    request = gen.request(prefix=PREFIX, form="free")
    t0 = time.perf_counter()
    gen.generate([request], Sampling(greedy=True))
    t_compile = time.perf_counter() - t0

    def tutorial_no_grad():
        with torch.no_grad():
            return tutorial_generate(net, PREFIX, ix2word, word2ix)

    # The three take turns, repeat by repeat, so that all see the same machine load.
    sides = {"torch": lambda: tutorial_generate(net, PREFIX, ix2word, word2ix), "no_grad": tutorial_no_grad,
             "ours": lambda: gen.generate([request], Sampling(greedy=True))}
    times, out = {k: [] for k in sides}, {}
    for _ in range(args.repeats):
        for k, fn in sides.items():
            t0 = time.perf_counter()
            out[k] = fn()
            times[k].append(time.perf_counter() - t0)
    t_torch, t_torch_ng, t_ours = (statistics.median(times[k]) for k in sides)
    torch_poem, poems = out["torch"], out["ours"]
    print(f"\none greedy poem, prefix {PREFIX}, up to {STEPS} tokens "
          f"(median of {args.repeats}, sides alternating):")
    print(f"  tutorial loop (torch, as written)   {t_torch * 1e3:8.2f} ms  {len(torch_poem)} tokens")
    print(f"  tutorial loop (torch, no_grad)      {t_torch_ng * 1e3:8.2f} ms")
    print(f"  rnnjax jit loop (warm)              {t_ours * 1e3:8.2f} ms  {len(poems[0].text)} tokens "
          f"(first call with compile {t_compile:.2f} s)")
    print(f"  ratio ours/tutorial                 {t_ours / t_torch:8.3f}  (no_grad: {t_ours / t_torch_ng:.3f};"
          f" target <= 0.25)")
    assert len(poems[0].text) == len(torch_poem), "both loops should emit the same number of tokens"
    if args.one_only:
        return

    # --- batched throughput ------------------------------------------------------------------------
    print(f"\nbatch of {args.batch} poems (median of {args.repeats}):")
    g125 = Generator(model, vocab, max_len=125, precision=args.precision)
    g48 = Generator(model, vocab, max_len=STEPS, precision=args.precision)
    for label, gen, req, sampling in (
        ("5x4 greedy", g125, g125.request(form="5x4"), Sampling(greedy=True)),
        ("5x4 sampled (T 0.8, top-p 0.9)", g125, g125.request(form="5x4"), Sampling()),
        ("5x4 sampled (T 0.8, full dist.)", g125, g125.request(form="5x4"), Sampling(top_p=1.0)),
        (f"{STEPS} tokens greedy, free", g48, g48.request(prefix=PREFIX, form="free"), Sampling(greedy=True)),
        ("7x8 sampled (T 0.8, top-p 0.9)", g125, g125.request(form="7x8"), Sampling()),
    ):
        batch = [req] * args.batch
        t0 = time.perf_counter()
        gen.generate(batch, sampling, seed=0)
        t_compile = time.perf_counter() - t0
        t_batch, poems = timed(lambda: gen.generate(batch, sampling, seed=1), args.repeats)
        tokens = np.mean([len(p.text) + 1 for p in poems])
        print(f"  {label:32s} {t_batch * 1e3:8.1f} ms  {args.batch / t_batch:8.0f} poems/s  "
              f"({tokens:.0f} tokens each; first call {t_compile:.1f} s)")
    meter_row(model, vocab, args)


def meter_row(model, vocab, args):
    """A batch of sampled 五言绝句 (T 0.8, top-p 0.9) with and without --meter, timed alternately
    so that both see the same machine load; poems/s of each and their ratio (target >= 0.8)."""
    from rnnjax.poetry import prosody
    from rnnjax.poetry.generation import Generator, Sampling

    gen = Generator(model, vocab, max_len=125, precision=args.precision)
    plain = [gen.request(form="5x4")] * args.batch
    meter = [gen.request(form="5x4", meter=True)] * args.batch
    sampling = Sampling()
    compile_s = {}
    for name, batch in (("plain", plain), ("meter", meter)):
        t0 = time.perf_counter()
        gen.generate(batch, sampling, seed=0)
        compile_s[name] = time.perf_counter() - t0
    times = {"plain": [], "meter": []}
    for r in range(args.repeats):
        for name, batch in (("plain", plain), ("meter", meter)):
            t0 = time.perf_counter()
            poems = gen.generate(batch, sampling, seed=1 + r)
            times[name].append(time.perf_counter() - t0)
            if name == "meter":
                passed = sum(prosody.check_poem(p.text).passes_meter for p in poems)
    rate = {k: args.batch / statistics.median(v) for k, v in times.items()}
    print(f"\n--meter side by side: batch of {args.batch} sampled 五言绝句 (T 0.8, top-p 0.9), "
          f"median of {args.repeats}, alternating:")
    print(f"  without --meter   {rate['plain']:8.0f} poems/s  (first call {compile_s['plain']:.1f} s)")
    print(f"  with --meter      {rate['meter']:8.0f} poems/s  (first call {compile_s['meter']:.1f} s; "
          f"{passed}/{args.batch} pass the 格律 checker)")
    print(f"  ratio             {rate['meter'] / rate['plain']:8.3f}  (target >= 0.8)")


if __name__ == "__main__":
    main()
