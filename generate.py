"""Write Tang-style poems with a trained rnnjax model (all logic lives in rnnjax.poetry.generation).

    python generate.py --prefix 唧唧复唧唧
    python generate.py --acrostic 深度学习 --form 七言绝句
    python generate.py --prefix 床前明月光 --num 5 --seed 1
    python generate.py --prefix 春 --style 细雨鱼儿出，微风燕子斜。 --greedy
    python generate.py --meter --form 五言律诗 --show-tones
"""
from __future__ import annotations

import json
import sys

from rnnjax.poetry.errors import cli_main


@cli_main
def main(argv=None) -> None:
    from rnnjax.poetry import cli as c
    from rnnjax.poetry.forms import FORM_CHOICES
    from rnnjax.poetry.generation import RHYME_MODES, Generator, check_rhyme_flags

    p = c.ArgumentParser(description="Write a classical Chinese poem.", allow_abbrev=False)
    p.add_argument("--prefix", default="", help="the poem begins with this text")
    p.add_argument("--acrostic", default="", help="line k begins with the k-th character (藏头诗)")
    p.add_argument("--style", default="", help="text read first to set the mood; not printed")
    p.add_argument("--form", default="auto", metavar="FORM", type=c.form_arg,
                   help=f"one of {', '.join(FORM_CHOICES)} (default auto)")
    p.add_argument("--rhyme", nargs="?", const="modern", choices=RHYME_MODES, metavar="{modern,pingshui}",
                   help="even lines end on one rhyme (fixed forms): modern = one 十三辙 class by today's "
                        "pinyin (bare --rhyme means this), pingshui = one 平声 group of 平水韵")
    p.add_argument("--meter", "--格律", action="store_true",
                   help="keep 格律: one 近体诗 template's 平仄 and a 平水韵 rhyme (5x4, 5x8, 7x4, 7x8; with "
                        "--form auto and no 5- or 7-character line in the prefix: 5x4)")
    p.add_argument("--show-tones", action="store_true",
                   help="print each line's 平仄 and the template's rule under it, and the verdict")
    p.add_argument("--num", type=c.positive_int, default=1, help="how many poems (one batched call)")
    p.add_argument("--json", action="store_true", help="one JSON object per poem, for scripts")
    c.add_model_args(p)
    c.add_sampling_args(p)
    args = p.parse_args(argv)
    sampling = c.sampling_from_args(args)  # bad settings fail before the model loads
    check_rhyme_flags(args.form, args.rhyme, args.meter)

    model, vocab, _, _ = c.load_model_from_args(args)
    gen = Generator(model, vocab, max_len=args.max_len)
    request = gen.request(args.prefix, args.acrostic, args.style, args.form, args.rhyme, args.meter)
    poems = gen.generate([request] * args.num, sampling, seed=args.seed)
    if args.show_tones and not args.json:
        from rnnjax.poetry.prosody import TONES_LEGEND
        print(TONES_LEGEND, file=sys.stderr)
    for i, poem in enumerate(poems):
        if args.json:
            print(json.dumps(poem.to_json(), ensure_ascii=False))
            continue
        print(("\n" if i else "") + "\n".join(poem.lines))
        if args.show_tones:
            print("\n" + poem.show_tones())
        if not poem.complete:
            print(f"(poem {i + 1} cut at --max-len {args.max_len})", file=sys.stderr)


if __name__ == "__main__":
    main()
