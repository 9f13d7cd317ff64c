"""`python -m rnnjax.poetry evaluate`: how good is a checkpoint, in numbers a reader of poems cares about.

- validation perplexity on the held-out split of the training data (same split as training);
- for a fixed set of 20 openings in each form, one batched generation call, then per form:
  % well-formed poems, % keeping the prefix / acrostic, distinct-2 (variety), the share of
  lines that repeat an earlier line of the same poem (the tutorial's greedy poems repeat lines),
  and for the fixed forms % keeping 格律 (`prosody.check_poem`: the tones of one 近体诗 template and
  its 平水韵 rhyme) and % rhyming in 平水韵 whatever the tones (`prosody.check_rhyme`: the even
  lines end in one 平声 group, no repeat).
"""
from __future__ import annotations

import functools
import json
import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from rnnjax.poetry import cli, forms, prosody
from rnnjax.poetry import generation as g
from rnnjax.poetry.config import DEFAULT_DATA, TrainConfig
from rnnjax.poetry.errors import UserError, cli_main

# Common first characters of Tang poems: the prefix set of every form.
OPENINGS = tuple("春月山风花秋江云雨夜天水白青明孤长落寒日")
# Four-character phrases for acrostic quatrains; consecutive pairs make the 8-line acrostics.
ACROSTICS = ("春夏秋冬", "风花雪月", "山高水长", "明月清风", "江山如画", "天长地久", "一帆风顺", "万里长城",
             "白云深处", "青山绿水", "落花流水", "寒江孤影", "日出东方", "百花齐放", "鸟语花香", "海阔天空",
             "春风得意", "秋月无边", "金玉满堂", "千山万水")
# (row name, form, mode): every row gets the same 20 openings (or acrostics).
ROWS = (
    ("free", "free", "prefix"),
    ("5x4 五言绝句", "5x4", "prefix"),
    ("5x8 五言律诗", "5x8", "prefix"),
    ("7x4 七言绝句", "7x4", "prefix"),
    ("7x8 七言律诗", "7x8", "prefix"),
    ("5x4 acrostic", "5x4", "acrostic"),
    ("7x4 acrostic", "7x4", "acrostic"),
    ("5x8 acrostic", "5x8", "acrostic"),
    ("7x8 acrostic", "7x8", "acrostic"),
)


def _row_inputs(mode: str, form: forms.Form) -> list[str]:
    if mode == "prefix":
        return list(OPENINGS)
    if form.n_lines == 4:
        return list(ACROSTICS)
    return [ACROSTICS[i] + ACROSTICS[(i + 1) % len(ACROSTICS)] for i in range(len(ACROSTICS))]


def _content_lines(text: str) -> list[str]:
    return [line.rstrip(forms.LINE_ENDERS) for line in forms.split_lines(text)]


def poem_metrics(texts: list[str], complete: list[bool], form: forms.Form, mode: str,
                 inputs: list[str]) -> dict:
    """The four generation numbers for one row of poems (texts without special tokens)."""
    n = len(texts)
    well = sum(c and forms.check_poem(t, form) for t, c in zip(texts, complete))
    if mode == "prefix":
        kept = sum(t.startswith(p) for t, p in zip(texts, inputs))
    else:
        kept = sum(len(ls) == len(a) and all(line[:1] == h for line, h in zip(ls, a))
                   for ls, a in ((_content_lines(t), a) for t, a in zip(texts, inputs)))
    # 格律 and 平水韵 rhyme: fixed forms only, and only a well-formed poem can keep them.
    meter = rhyme = None
    if form.name in prosody.FORM_NAMES:
        formed = [t for t, c in zip(texts, complete) if c and forms.check_poem(t, form)]
        meter = sum(prosody.check_poem(t).passes_meter for t in formed)
        rhyme = sum(prosody.check_rhyme(t)[0] for t in formed)
    bigrams, lines, repeats = [], 0, 0
    for t in texts:
        ls = [line for line in _content_lines(t) if line]
        bigrams += [line[i:i + 2] for line in ls for i in range(len(line) - 1)]
        lines += len(ls)
        repeats += len(ls) - len(set(ls))
    return {
        "poems": n,
        "well_formed": 100.0 * well / n if n else None,
        "kept": 100.0 * kept / n if n else None,
        "distinct_2": len(set(bigrams)) / len(bigrams) if bigrams else None,
        "repeated_lines": 100.0 * repeats / lines if lines else None,
        "meter": 100.0 * meter / n if n and meter is not None else None,
        "pingshui_rhyme": 100.0 * rhyme / n if n and rhyme is not None else None,
    }


def generation_report(gen: g.Generator, sampling: g.Sampling, seed: int) -> tuple[list[dict], list[str]]:
    """All rows in one batched call (forms are per-poem arrays, so one compile serves them all)."""
    notes, requests, spans = [], [], []
    for name, form_name, mode in ROWS:
        form = forms.FORMS[form_name]
        inputs = []
        for text in _row_inputs(mode, form):
            try:
                kw = {"prefix": text} if mode == "prefix" else {"acrostic": text}
                requests.append(gen.request(form=form_name, **kw))
                inputs.append(text)
            except UserError as e:  # a tiny or odd vocabulary: skip what it cannot write, and say so
                notes.append(f"{name}: skipped {text!r}: {e}")
        spans.append((name, form, mode, inputs, len(requests) - len(inputs), len(requests)))
    if not requests:
        return [], notes
    ids = gen.generate_ids(requests, sampling, seed)
    decoded = [gen.decode_text(row) for row in ids]
    rows = []
    for name, form, mode, inputs, a, b in spans:
        texts, complete = [d[0] for d in decoded[a:b]], [d[1] for d in decoded[a:b]]
        rows.append({"form": name, "mode": mode, **poem_metrics(texts, complete, form, mode, inputs),
                     "example": texts[0] if texts else ""})
    return rows, notes


@functools.partial(jax.jit, static_argnames="graphdef")
def _nll_sum(graphdef, params, inputs, targets, mask):
    return nnx.merge(graphdef, params).nll_sum(inputs, targets, mask), jnp.sum(mask)


def validation_perplexity(model, vocab, config: dict, data_path, batch_size: int = 64) -> tuple[float | None, str]:
    """(perplexity, note) on the validation split training used; (None, why) when it cannot be computed."""
    from rnnjax.poetry.data import BucketBatcher, fingerprint, load_npz, train_val_split, unpad

    data_path = Path(data_path)
    if not data_path.is_file():
        return None, f"no validation perplexity: {data_path} not found (python -m rnnjax.poetry data makes it)"
    data, data_vocab = load_npz(data_path)
    if data_vocab != vocab:
        return None, f"no validation perplexity: {data_path} has another vocabulary than the checkpoint"
    flags = config.get("flags") or {}
    _, val = train_val_split(unpad(data, vocab), flags.get("val_fraction", TrainConfig.val_fraction),
                             flags.get("seed", TrainConfig.seed))
    if not val:
        return None, "no validation perplexity: the validation split is empty"
    note = ""
    if config.get("data_fingerprint") and config["data_fingerprint"] != fingerprint(data_path):
        note = f"note: {data_path} is not the file this checkpoint was trained on"
    model.eval()
    graphdef, params = nnx.split(model)
    total, count = 0.0, 0.0
    for batch in BucketBatcher(val, batch_size, seed=0, pad_id=vocab.pad_id).epoch(0):
        s, c = _nll_sum(graphdef, params, batch.inputs, batch.targets, batch.mask)
        total, count = total + float(s), count + float(c)
    return math.exp(total / count), note or f"{len(val):,} validation poems, {int(count):,} tokens"


def markdown_table(rows: list[dict]) -> str:
    out = ["| form | mode | poems | well-formed % | kept % | distinct-2 | repeated lines % | 格律 % "
           "| 平水韵 rhyme % |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731  (a row with no poems)
    for r in rows:
        out.append(f"| {r['form']} | {r['mode']} | {r['poems']} | {fmt(r['well_formed'], '.0f')} "
                   f"| {fmt(r['kept'], '.0f')} | {fmt(r['distinct_2'], '.3f')} | {fmt(r['repeated_lines'], '.1f')} "
                   f"| {fmt(r.get('meter'), '.0f')} | {fmt(r.get('pingshui_rhyme'), '.0f')} |")
    return "\n".join(out)


@cli_main
def main(argv=None) -> None:
    p = cli.ArgumentParser(prog="python -m rnnjax.poetry evaluate", description=__doc__.splitlines()[0],
                         allow_abbrev=False)
    p.add_argument("--data", help=f"the corpus, for validation perplexity (default {DEFAULT_DATA}; "
                   "without it, only the generation numbers)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of markdown")
    cli.add_model_args(p)
    cli.add_sampling_args(p)
    args = p.parse_args(argv)

    sampling = cli.sampling_from_args(args)  # bad settings fail before the model loads
    if args.data is not None and not Path(args.data).is_file():
        what = "is a folder, not a prepared .npz corpus" if Path(args.data).is_dir() else "does not exist"
        raise UserError(f"--data {args.data} {what} (python -m rnnjax.poetry data prepares one)")
    cli.enable_compile_cache()
    model, vocab, config, ckpt = cli.load_model_from_args(args)
    ppl, ppl_note = validation_perplexity(model, vocab, config, args.data or DEFAULT_DATA)
    gen = g.Generator(model, vocab, args.max_len, precision=args.precision)
    rows, notes = generation_report(gen, sampling, args.seed)
    settings = ("greedy" if sampling.greedy or sampling.temperature == 0 else
                f"temperature {sampling.temperature}, top-k {sampling.top_k}, top-p {sampling.top_p}")
    if args.json:
        print(json.dumps({"checkpoint": str(ckpt), "val_perplexity": ppl, "perplexity_note": ppl_note,
                          "sampling": settings, "seed": args.seed, "rows": rows, "notes": notes},
                         ensure_ascii=False))
        return
    print(f"validation perplexity: {ppl:.2f} ({ppl_note})" if ppl is not None else ppl_note)
    print(f"\nsampling: {settings}, seed {args.seed}\n")
    print(markdown_table(rows))
    for note in notes:
        print(f"note: {note}", file=sys.stderr)


if __name__ == "__main__":
    main()
