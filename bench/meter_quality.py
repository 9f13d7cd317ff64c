"""格律 of the shipped model's poems: how many keep the tones and rhyme of 平水韵, per fixed form.

    python bench/meter_quality.py [--checkpoint pretrained/tang-lstm] [--num 100] [--seed 0]

For each fixed form, `--num` poems sampled as `generate.py --form F --num N` would write them
(temperature 0.8, top-p 0.9, no prefix), under four settings: the default flags, `--rhyme modern`
(十三辙 by pinyin), `--rhyme pingshui` (平水韵 groups, no tones) and `--meter` (the template's tones
and its 平水韵 rhyme, enforced while decoding). Each poem is judged by `prosody.check_poem`
(passes 格律: no violation under its best-fitting template) and `prosody.check_rhyme` (the even
lines end in one 平声 group, no repeat). Target for `--meter`: 100%.
"""
from __future__ import annotations

import argparse
import time

SETTINGS = (("default flags", {}), ("--rhyme modern", {"rhyme": "modern"}),
            ("--rhyme pingshui", {"rhyme": "pingshui"}), ("--meter", {"meter": True}))
FORMS = (("5x4", "五言绝句"), ("5x8", "五言律诗"), ("7x4", "七言绝句"), ("7x8", "七言律诗"))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="pretrained/tang-lstm")
    p.add_argument("--num", type=int, default=100, help="poems per form and setting")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    from rnnjax.poetry import prosody
    from rnnjax.poetry.checkpoint import load_model
    from rnnjax.poetry.generation import Generator, Sampling

    model, vocab, _ = load_model(args.checkpoint)
    gen = Generator(model, vocab)
    sampling = Sampling()
    meter, rhyme = {}, {}
    for label, kw in SETTINGS:
        # One batched call per setting, all four forms in it (as the CLI, poem i of form F is
        # fixed by the seed and i).
        requests = [gen.request(form=f, **kw) for f, _ in FORMS for _ in range(args.num)]
        t0 = time.perf_counter()
        poems = gen.generate(requests, sampling, seed=args.seed)
        print(f"{label}: {len(poems)} poems in {time.perf_counter() - t0:.1f} s")
        for k, (f, _) in enumerate(FORMS):
            texts = [p.text for p in poems[k * args.num:(k + 1) * args.num]]
            meter[label, f] = sum(prosody.check_poem(t).passes_meter for t in texts)
            rhyme[label, f] = sum(prosody.check_rhyme(t)[0] for t in texts)
        if label == "--meter":
            print("  e.g. " + poems[0].text + f" ({poems[0].template})")

    print(f"\n{args.checkpoint}, {args.num} sampled poems per form (T {sampling.temperature}, "
          f"top-p {sampling.top_p}, seed {args.seed}); % passing 格律 (% rhyming in 平水韵)\n")
    print("| form | " + " | ".join(label for label, _ in SETTINGS) + " |")
    print("|---|" + "---:|" * len(SETTINGS))
    pct = lambda n: 100 * n / args.num  # noqa: E731
    for f, name in FORMS:
        cells = [f"{pct(meter[label, f]):.0f}% ({pct(rhyme[label, f]):.0f}%)" for label, _ in SETTINGS]
        print(f"| {f} {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
