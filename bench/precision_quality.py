"""Does generating in bfloat16 (or float16) change the poems? The shipped model, each precision against float32.

    python bench/precision_quality.py [--checkpoint pretrained/tang-lstm] [--samples 256] [--seed 0]

1. Greedy: a fixed set of 100 openings (evaluate's 20 first characters, each in the free form and
   the four fixed forms), written greedily in each precision; how many poems are character for
   character the float32 ones (target: >= 95 of 100).
2. Sampling (temperature 0.8, top-p 0.9): `--samples` 五言绝句 with the same seed in each precision;
   their distinct-2 (share of distinct character bigrams within lines, evaluate's measure) and
   their perplexity under the *float32* model (how likely the float32 model finds what each
   precision wrote; lower is more fluent by its own measure). Both ways: float32's samples and
   the other precision's samples, each scored by the float32 model.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FORMS = ("free", "5x4", "5x8", "7x4", "7x8")


def perplexity(model, vocab, ids: np.ndarray) -> float:
    """The model's perplexity of token rows `ids` (B, L), each read from <START> through its <EOP>
    (rows cut without <EOP> are scored up to their last token)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    b, length = ids.shape
    ends = np.array([np.flatnonzero(r == vocab.eop_id)[0] + 1 if (r == vocab.eop_id).any() else
                     int((r != vocab.pad_id).sum()) for r in ids])
    targets = ids.T  # time-major
    inputs = np.concatenate([np.full((1, b), vocab.start_id, np.int32), targets[:-1]])
    mask = (np.arange(length)[:, None] < ends[None, :]).astype(np.float32)
    graphdef, params = nnx.split(model)

    @jax.jit
    def nll(params, inputs, targets, mask):
        return nnx.merge(graphdef, params).nll_sum(inputs, targets, mask)

    total = float(nll(params, jnp.asarray(inputs), jnp.asarray(targets), jnp.asarray(mask)))
    return math.exp(total / mask.sum())


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="pretrained/tang-lstm")
    p.add_argument("--samples", type=int, default=256, help="sampled 五言绝句 per precision")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precisions", nargs="+", default=["bfloat16", "float16"],
                   help="compared against float32")
    args = p.parse_args()

    from rnnjax.poetry import forms
    from rnnjax.poetry.checkpoint import load_model
    from rnnjax.poetry.evaluate import OPENINGS, poem_metrics
    from rnnjax.poetry.generation import Generator, Sampling

    model, vocab, _ = load_model(args.checkpoint)
    print(f"checkpoint {args.checkpoint}: vocabulary {len(vocab)}; load average {os.getloadavg()[0]:.2f}")
    gens = {prec: Generator(model, vocab, precision=prec) for prec in ("float32", *args.precisions)}

    # --- greedy, 100 fixed openings --------------------------------------------------------------
    base = gens["float32"]
    requests = [base.request(prefix=c, form=f) for f in FORMS for c in OPENINGS]
    greedy = {}
    for prec, gen in gens.items():
        t0 = time.perf_counter()
        ids = gen.generate_ids(requests, Sampling(greedy=True))
        greedy[prec] = [gen.decode_text(row)[0] for row in ids]
        print(f"greedy, {prec}: {len(requests)} poems in {time.perf_counter() - t0:.1f} s (compile included)")
    print(f"\ngreedy poems identical to float32's, of {len(requests)} openings ({len(OPENINGS)} first "
          f"characters x {', '.join(FORMS)}):")
    for prec in args.precisions:
        same = [a == b for a, b in zip(greedy["float32"], greedy[prec])]
        first = next((i for i, s in enumerate(same) if not s), None)
        print(f"  {prec:9s} {sum(same):3d} / {len(same)}  (target >= 95)")
        if first is not None:
            print(f"            first that differs: float32 {greedy['float32'][first]!r}\n"
                  f"                           {prec:9s} {greedy[prec][first]!r}")

    # --- sampling: distinct-2 and the float32 model's perplexity --------------------------------
    sampling = Sampling(temperature=0.8, top_p=0.9)
    quatrain = forms.FORMS["5x4"]
    print(f"\n{args.samples} sampled 五言绝句 (temperature 0.8, top-p 0.9, seed {args.seed}) per precision, "
          f"scored by the float32 model:")
    print(f"  {'written in':10s} {'distinct-2':>10s} {'ppl (f32 model)':>16s} {'well-formed %':>14s} "
          f"{'same as f32':>12s}")
    texts32 = None
    for prec, gen in gens.items():
        req = [gen.request(form="5x4")] * args.samples
        ids = gen.generate_ids(req, sampling, seed=args.seed)
        decoded = [gen.decode_text(row) for row in ids]
        texts = [t for t, _ in decoded]
        m = poem_metrics(texts, [c for _, c in decoded], quatrain, "prefix", [""] * len(texts))
        ppl = perplexity(model, vocab, ids)
        texts32 = texts if prec == "float32" else texts32
        same = sum(a == b for a, b in zip(texts, texts32))
        print(f"  {prec:10s} {m['distinct_2']:10.3f} {ppl:16.2f} {m['well_formed']:14.0f} {same:8d}/{len(texts)}")


if __name__ == "__main__":
    main()
