"""The README's quality material for a checkpoint, in markdown: fixed openings, fixed seed, default flags.

    python bench/quality_report.py [--checkpoint pretrained/tang-lstm] [--seed 0]

For each fixed form (五言绝句, 七言绝句, 五言律诗, 七言律诗) the 20 OPENINGS below, chosen once, each
the prefix of one poem written with the default flags (temperature 0.8, top-p 0.9, the repetition
rules on) and `--seed`: every poem is the one `python generate.py --prefix P --form F --seed S`
prints (poem 0 of the seed). Then, per form, an evaluate-style summary line (% keeping 格律 under
`prosody.check_poem`, % rhyming in 平水韵, distinct-2 over the 20 poems, % repeated lines, the mean
log-probability per token), and a few poems chosen by these rules, stated again in the output:

* **best of 8**: the same 20 openings with `--best-of 8`; the poem with the highest mean
  log-probability per token among the 20 (the model's favourite);
* **first to keep 格律**: the first of the 20 default poems, in the order of OPENINGS, that passes
  the 格律 checker (the rules `--meter` enforces), if any does;
* **--meter, best of 8**: the 20 openings with `--meter --best-of 8`; the highest mean
  log-probability among those whose opening fits a template (an opening that breaks every template
  is refused by `--meter` and skipped, named on stderr).

Deterministic: the same checkpoint and seed give the same report. A few minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's rnnjax, installed or not

# Chosen once: common openings of Tang poems, single characters and two-character words (each fits
# every form as the start of its first line).
OPENINGS = ("春", "月", "山", "江", "秋风", "明月", "白日", "孤舟", "落花", "寒山",
            "长安", "故人", "夜雨", "青山", "春风", "黄河", "归来", "千里", "西风", "云")
FORMS = (("5x4", "五言绝句"), ("7x4", "七言绝句"), ("5x8", "五言律诗"), ("7x8", "七言律诗"))
BEST_OF = 8


def write(gen, requests, sampling, seed):
    """(texts, mean log-probabilities) of one batched call, every poem as poem 0 of `seed` (what
    `generate.py --seed S` prints for that one request)."""
    out = gen.decode(requests, sampling, seed, poem_ids=np.zeros(len(requests), np.int32), score=True)
    return [gen.decode_text(row)[0] for row in out.ids], [float(x) for x in out.logprob]


def meter_requests(gen, form):
    """(opening, request) for each opening that --meter can begin in `form`; the others named on stderr."""
    from rnnjax.poetry.errors import UserError

    out = []
    for opening in OPENINGS:
        try:
            out.append((opening, gen.request(prefix=opening, form=form, meter=True)))
        except UserError as e:
            print(f"note: --meter --form {form} --prefix {opening}: {e}", file=sys.stderr)
    return out


def summary(texts, form_name, logprobs) -> str:
    from rnnjax.poetry import forms
    from rnnjax.poetry.evaluate import poem_metrics

    m = poem_metrics(texts, [True] * len(texts), forms.FORMS[form_name], "prefix", list(OPENINGS))
    return (f"{m['poems']} poems: well-formed {m['well_formed']:.0f}%, 格律 {m['meter']:.0f}%, 平水韵 rhyme "
            f"{m['pingshui_rhyme']:.0f}%, distinct-2 {m['distinct_2']:.3f}, repeated lines "
            f"{m['repeated_lines']:.1f}%, mean log-probability per token {np.mean(logprobs):.2f}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="pretrained/tang-lstm")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    from rnnjax.poetry import prosody
    from rnnjax.poetry.checkpoint import load_model
    from rnnjax.poetry.generation import Generator, Sampling

    t0 = time.perf_counter()
    model, vocab, _ = load_model(args.checkpoint)
    gen = Generator(model, vocab)
    requests = [gen.request(prefix=o, form=f) for f, _ in FORMS for o in OPENINGS]
    default, default_lp = write(gen, requests, Sampling(), args.seed)
    best, best_lp = write(gen, requests, Sampling(best_of=BEST_OF), args.seed)
    metered = [(f, o, r) for f, _ in FORMS for o, r in meter_requests(gen, f)]
    m_texts, m_lp = write(gen, [r for *_, r in metered], Sampling(best_of=BEST_OF), args.seed)

    n = len(OPENINGS)
    print(f"# Quality report: {args.checkpoint}\n")
    print(f"Each poem: `python generate.py --prefix P --form F --seed {args.seed}` (default flags: temperature "
          "0.8, top-p 0.9, the repetition rules on), for the 20 openings " + "、".join(OPENINGS) + ".\n")
    for k, (form, name) in enumerate(FORMS):
        texts, lps = default[k * n:(k + 1) * n], default_lp[k * n:(k + 1) * n]
        print(f"## {name} ({form})\n")
        print(f"Summary: {summary(texts, form, lps)}.\n")
        print("| opening | poem | 格律 | log-prob |\n|---|---|:-:|---:|")
        for o, t, lp in zip(OPENINGS, texts, lps):
            print(f"| {o} | {t} | {'✓' if prosody.check_poem(t).passes_meter else ''} | {lp:.2f} |")
        print(f"\nChosen poems (rules: the highest mean log-probability among the 20 with `--best-of {BEST_OF}`; "
              "the first default poem, in the order above, that keeps 格律; the highest mean log-probability "
              f"among the 20 with `--meter --best-of {BEST_OF}`):\n")
        bt, blp = best[k * n:(k + 1) * n], best_lp[k * n:(k + 1) * n]
        i = int(np.argmax(blp))
        print(f"- best of {BEST_OF} ({OPENINGS[i]}, log-prob {blp[i]:.2f}, "
              f"`--prefix {OPENINGS[i]} --form {form} --best-of {BEST_OF} --seed {args.seed}`): {bt[i]}")
        first = next((i for i, t in enumerate(texts) if prosody.check_poem(t).passes_meter), None)
        if first is None:
            print("- first to keep 格律: none of the 20")
        else:
            print(f"- first to keep 格律 ({OPENINGS[first]}, {prosody.check_poem(texts[first]).template}): "
                  f"{texts[first]}")
        mine = [(lp, o, t) for (f, o, _), t, lp in zip(metered, m_texts, m_lp) if f == form]
        if mine:
            lp, o, t = max(mine, key=lambda x: x[0])
            print(f"- --meter, best of {BEST_OF} ({o}, log-prob {lp:.2f}, "
                  f"`--prefix {o} --form {form} --meter --best-of {BEST_OF} --seed {args.seed}`): {t}")
        print(f"\nWith `--best-of {BEST_OF}`: {summary(bt, form, blp)}.\n")
    print(f"({len(requests) * (1 + BEST_OF) + len(metered) * BEST_OF} sequences decoded in "
          f"{time.perf_counter() - t0:.0f} s, compiles included)")


if __name__ == "__main__":
    main()
