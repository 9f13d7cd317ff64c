"""Decoding choices on the shipped model: --best-of, the repetition rules, greedy by class - in figures.

    python bench/decoding_quality.py [--checkpoint pretrained/tang-lstm] [--seed 0] [--best-of 8]

1. The fixed forms: the 20 openings of bench/quality_report.py as prefixes of 五言绝句, 七言绝句,
   五言律诗 and 七言律诗 (80 poems, one batched call per setting; every poem is poem 0 of the seed,
   as `generate.py --prefix P --form F --seed S` writes it), under sampling (the defaults), sampling
   with `--best-of N`, and greedy, each with the repetition rules (the default) and with
   `--allow-repeats`. Columns: % well-formed (`forms.check_poem`); distinct-2 over the 80 poems
   (distinct character pairs within lines / all pairs); % repeated lines (a line equal to an
   earlier line of its poem, of all lines); % of the 40 绝句 with a character more than twice; the
   mean log-probability per token (the model's, as --best-of ranks: temperature 1, before top-p
   and the masks, chosen tokens only; averaged over poems); poems/s (the CLI's call, without
   scores unless --best-of: a second, warm call; --best-of counts kept poems).
2. Free-form greedy, the same 20 openings with `--form free --greedy`: how many poems go beyond one
   couplet under the tutorial's argmax (`Sampling(plain_argmax=True)`, the rule before) and under
   greedy by class (now), and why: where the argmax poem stopped, P(<EOP>) against the likeliest
   character and against all characters together.

Under 3 minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's rnnjax, installed or not

from quality_report import FORMS, OPENINGS, write  # noqa: E402  (bench/ is the script's folder)

ENDERS = "，。！？；"


def lines_of(text: str) -> list[str]:
    """A poem's closed lines, without their marks."""
    from rnnjax.poetry import forms

    return [line[:-1] for line in forms.split_lines(text) if line[-1] in ENDERS]


def figures(texts, form_names, logprobs) -> dict:
    from rnnjax.poetry import forms

    bigrams, n_lines, repeats, capped, quatrains = [], 0, 0, 0, 0
    well = sum(forms.check_poem(t, forms.FORMS[f]) for t, f in zip(texts, form_names))
    for text, form in zip(texts, form_names):
        ls = lines_of(text)
        bigrams += [line[i:i + 2] for line in ls for i in range(len(line) - 1)]
        n_lines += len(ls)
        repeats += sum(line in ls[:k] for k, line in enumerate(ls))
        if form in ("5x4", "7x4"):
            quatrains += 1
            capped += any(text.count(c) > 2 for c in set(text) if c not in ENDERS)
    return {"well": 100 * well / len(texts), "distinct_2": len(set(bigrams)) / len(bigrams),
            "repeated": 100 * repeats / n_lines,
            "over_cap": 100 * capped / quatrains, "logprob": float(np.mean(logprobs))}


def fixed_forms(gen, args) -> None:
    from rnnjax.poetry.generation import Sampling

    settings = (("sampling (defaults)", "", Sampling()),
                (f"sampling, best of {args.best_of}", f"--best-of {args.best_of}", Sampling(best_of=args.best_of)),
                ("greedy", "--greedy", Sampling(greedy=True)))
    form_names = [f for f, _ in FORMS for _ in OPENINGS]
    print(f"## Fixed forms: {len(OPENINGS)} openings x {len(FORMS)} forms = {len(form_names)} poems per row, "
          f"seed {args.seed}\n")
    print("Each poem: `python generate.py --prefix P --form F --seed S FLAGS`, P one of " + "、".join(OPENINGS)
          + ", F each of " + ", ".join(f for f, _ in FORMS) + ".\n")
    print("| setting | FLAGS | well-formed % | distinct-2 | repeated lines % | 绝句 with a character > 2× % "
          "| log-prob / token | poems/s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for label, flags, sampling in settings:
        for allow in (False, True):
            requests = [gen.request(prefix=o, form=f, allow_repeats=allow) for f in form_names[::len(OPENINGS)]
                        for o in OPENINGS]
            texts, lps = write(gen, requests, sampling, args.seed)
            rate = poems_per_s(gen, requests, sampling, args.seed)
            f = figures(texts, form_names, lps)
            shown = " ".join(x for x in (flags, "--allow-repeats" if allow else "") if x) or "(none)"
            rules = "repeats allowed" if allow else "no-repeat rules (default)"
            print(f"| {label}, {rules} | `{shown}` | {f['well']:.0f} | {f['distinct_2']:.3f} | {f['repeated']:.1f} "
                  f"| {f['over_cap']:.0f} | {f['logprob']:.3f} | {rate:.0f} |")


def poems_per_s(gen, requests, sampling, seed) -> float:
    """Poems/s of the call the CLI makes (no scores unless --best-of), warm: the second of two calls."""
    poem_ids = np.zeros(len(requests), np.int32)
    gen.generate_ids(requests, sampling, seed, poem_ids)
    t0 = time.perf_counter()
    gen.generate_ids(requests, sampling, seed, poem_ids)
    return len(requests) / (time.perf_counter() - t0)


def eop_at_stop(model, vocab, text: str) -> tuple[float, str, float, float]:
    """Where a free poem ended: (P(<EOP>), the likeliest character, its P, P(all characters)) at the
    step after its last sentence, by running the model over the poem."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from rnnjax.poetry import forms

    feed = jnp.asarray([vocab.start_id, *(vocab.stoi[c] for c in text)], jnp.int32)[:, None]
    logits, _ = nnx.jit(lambda m, x: m(x))(model, feed)
    p = np.asarray(jax.nn.softmax(logits[-1, 0]))
    chars = np.array([forms.is_hanzi(t) for t in vocab.itos])
    top = int(np.argmax(np.where(chars, p, -1)))
    return float(p[vocab.eop_id]), vocab.itos[top], float(p[top]), float(p[chars].sum())


def free_greedy(model, gen, args) -> None:
    from rnnjax.poetry.generation import Sampling

    rows = (("tutorial's argmax (before), repeats allowed", "--greedy --allow-repeats, argmax", True, True),
            ("greedy by class (now), repeats allowed", "--greedy --allow-repeats", False, True),
            ("greedy by class, no-repeat rules (now, default)", "--greedy", False, False))
    print(f"\n## Free-form greedy: the {len(OPENINGS)} openings, `--form free --greedy`\n")
    print("| rule | flags | poems beyond one couplet | lines per poem | characters per line | ended with <EOP> |")
    print("|---|---|---:|---:|---:|---:|")
    texts = {}
    for label, flags, plain, allow in rows:
        requests = [gen.request(prefix=o, form="free", allow_repeats=allow) for o in OPENINGS]
        out = gen.decode(requests, Sampling(greedy=True, plain_argmax=plain), args.seed, score=True)
        decoded = [gen.decode_text(row) for row in out.ids]
        texts[label] = [t for t, _ in decoded]
        sentences = [sum(t.count(m) for m in "。！？") for t, _ in decoded]
        lines = [lines_of(t) for t, _ in decoded]
        print(f"| {label} | `{flags}` | {sum(s > 1 for s in sentences)}/{len(OPENINGS)} "
              f"| {statistics.mean(map(len, lines)):.1f} | {statistics.mean(len(x) for ls in lines for x in ls):.1f} "
              f"| {sum(e for _, e in decoded)}/{len(OPENINGS)} |")
    before, now = texts[rows[0][0]], texts[rows[2][0]]
    print("\nWhy the argmax stopped: at the step after its poem's last `。`, the probability of <EOP> "
          "against the likeliest character and all characters together (the model over the poem):\n")
    print("| opening | argmax poem (before) | P(<EOP>) | likeliest character | P(characters) | greedy by class, "
          "no-repeat rules (now) |")
    print("|---|---|---:|---:|---:|---|")
    stats = []
    for o, t, n in zip(OPENINGS, before, now):
        p_eop, top, p_top, p_chars = eop_at_stop(model, gen.vocab, t)
        stats.append((p_eop, p_top, p_chars))
        print(f"| {o} | {t} | {p_eop:.3f} | {top} {p_top:.3f} | {p_chars:.3f} | {n} |")
    p_eop, p_top, p_chars = (np.array(x) for x in zip(*stats))
    print(f"\nP(<EOP>) {p_eop.min():.3f}-{p_eop.max():.3f} (median {np.median(p_eop):.3f}); the likeliest "
          f"character {p_top.min():.3f}-{p_top.max():.3f} (median {np.median(p_top):.3f}); all characters "
          f"{p_chars.min():.3f}-{p_chars.max():.3f} (median {np.median(p_chars):.3f}). <EOP> above the "
          f"likeliest character in {int((p_eop > p_top).sum())}/{len(OPENINGS)}, above 1/2 in "
          f"{int((p_eop > 0.5).sum())}/{len(OPENINGS)}.")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="pretrained/tang-lstm")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--best-of", type=int, default=8)
    args = p.parse_args()

    import os

    from rnnjax.poetry.checkpoint import load_model
    from rnnjax.poetry.generation import Generator

    t0 = time.perf_counter()
    model, vocab, _ = load_model(args.checkpoint)
    gen = Generator(model, vocab)
    print(f"# Decoding quality: {args.checkpoint}\n")
    print(f"Command: `python bench/decoding_quality.py --checkpoint {args.checkpoint} --seed {args.seed} "
          f"--best-of {args.best_of}`; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.\n")
    fixed_forms(gen, args)
    free_greedy(model, gen, args)
    print(f"\n({time.perf_counter() - t0:.0f} s in all, compiles included)")


if __name__ == "__main__":
    main()
