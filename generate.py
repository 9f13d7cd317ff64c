"""Write Tang-style poems with a trained rnnjax model (all logic lives in rnnjax.poetry.generation).

    python generate.py --prefix 唧唧复唧唧
    python generate.py --acrostic 深度学习 --form 七言绝句
    python generate.py --prefix 床前明月光 --num 5 --seed 1
    python generate.py --prefix 春 --style 细雨鱼儿出，微风燕子斜。 --greedy
    python generate.py --meter --form 五言律诗 --show-tones
    python generate.py --prefix 月 --form 七言绝句 --best-of 8 --json
"""
from __future__ import annotations

import json
import os
import sys
import time


def _import_flax_without_ipython_probe() -> None:
    """flax imports IPython when it loads, to colour its reprs inside a notebook; outside IPython that
    import is 0.15-0.4 s of start-up spent on a question whose answer is no. So, outside IPython, the
    probe's import fails at once (and `import IPython` works normally afterwards)."""
    if "IPython" in sys.modules:
        return
    sys.modules["IPython"] = None  # `from IPython import ...` raises ImportError: flax's probe says no
    try:
        import flax.nnx  # noqa: F401
    finally:
        if sys.modules.get("IPython", 0) is None:
            del sys.modules["IPython"]


_import_flax_without_ipython_probe()

from rnnjax.poetry.errors import cli_main  # noqa: E402  (after the probe above)


@cli_main
def main(argv=None) -> None:
    try:
        _main(argv)
    except KeyboardInterrupt:  # Ctrl-C during a long --num: the poems printed so far stay printed
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except BrokenPipeError:  # `generate.py --num 1000 | head`: the reader has what it wanted
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        raise SystemExit(141) from None


def _main(argv) -> None:
    from rnnjax.poetry import cli as c

    c.enable_compile_cache()  # before anything compiles: a warm start loads the programs
    from rnnjax.poetry.forms import FORM_CHOICES
    from rnnjax.poetry.generation import MAX_NUM, RHYME_MODES, Generator, check_max_len, check_rhyme_flags
    from rnnjax.poetry.model_choice import choose_checkpoint

    p = c.ArgumentParser(description="Write a classical Chinese poem.", allow_abbrev=False)
    p.add_argument("--prefix", default="", help="the poem begins with this text; a line break ends a line")
    p.add_argument("--acrostic", default="", help="line k begins with the k-th character (藏头诗)")
    p.add_argument("--style", default="", help="text read first to set the mood; not printed")
    p.add_argument("--form", default="auto", metavar="FORM", type=c.form_arg,
                   help=f"one of {', '.join(FORM_CHOICES)}, any case (default auto)")
    p.add_argument("--rhyme", nargs="?", const="modern", choices=RHYME_MODES, metavar="{modern,pingshui}",
                   help="even lines end on one rhyme (fixed forms): modern = one 十三辙 class by today's "
                        "pinyin (bare --rhyme means this), pingshui = one 平声 group of 平水韵")
    p.add_argument("--meter", "--格律", action="store_true",
                   help="keep 格律: one 近体诗 template's 平仄 and a 平水韵 rhyme (5x4, 5x8, 7x4, 7x8; with "
                        "--form auto and no 5- or 7-character line in the prefix: 5x4)")
    p.add_argument("--allow-repeats", action="store_true",
                   help="turn off the repetition rules, which are on by default: no line repeats an earlier line "
                        "of the poem (every form), and in a 绝句 (5x4, 7x4) no character appears more than twice "
                        "(the prefix's characters count but are never refused; punctuation is exempt; where "
                        "--meter or --rhyme leave no other token, a repeat is written)")
    p.add_argument("--show-tones", action="store_true",
                   help="print each line's 平仄 and the template's rule under it, and the verdict")
    p.add_argument("--num", type=c.bounded_int(1, MAX_NUM), default=1,
                   help="how many poems; written and printed in batches, with progress on stderr")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per poem, for scripts (with `logprob`: the mean log-probability per "
                        "token the model chose, as --best-of ranks them)")
    c.add_model_args(p)
    c.add_sampling_args(p)
    args = p.parse_args(argv)
    sampling = c.sampling_from_args(args)  # bad settings fail before the model loads
    check_max_len(args.max_len)
    check_rhyme_flags(args.form, args.rhyme, args.meter)

    from rnnjax.poetry.checkpoint import load_model  # orbax: imported only once the flags are good

    choice = choose_checkpoint(args.checkpoint)
    model, vocab, _ = load_model(choice.path)
    gen = Generator(model, vocab, max_len=args.max_len, precision=args.precision)
    request = gen.request(args.prefix, args.acrostic, args.style, args.form, args.rhyme, args.meter,
                          args.allow_repeats)
    c.announce_checkpoint(choice)  # after the input is checked: an error stays one line
    if args.show_tones and not args.json:
        from rnnjax.poetry.prosody import TONES_LEGEND
        print(TONES_LEGEND, file=sys.stderr)
    started = last = time.monotonic()
    for chunk in gen.generate_many(request, args.num, sampling, seed=args.seed, score=args.json):
        for poem in chunk:
            _print_poem(poem, args)
        sys.stdout.flush()  # each batch appears as soon as it is written
        done = chunk[-1].index + 1
        now = time.monotonic()
        if len(chunk) < args.num and (now - last >= 1 or done == args.num):
            last = now
            print(f"{done:,}/{args.num:,} poems, {now - started:.0f} s", file=sys.stderr, flush=True)


def _print_poem(poem, args) -> None:
    if args.json:
        print(json.dumps(poem.to_json(), ensure_ascii=False))
        return
    print(("\n" if poem.index else "") + "\n".join(poem.lines))
    if args.show_tones:
        print("\n" + poem.show_tones())
    if not poem.complete:
        why = (f"cut at --max-len {args.max_len}" if len(poem.text) >= args.max_len else
               f"stopped after {poem.text[-1:]!r}, mid-sentence")
        print(f"(poem {poem.index + 1} {why})", file=sys.stderr)


if __name__ == "__main__":
    main()
