"""Poem generation: constraints always hold (the repetition rules among them), sampling is
reproducible, greedy matches a plain loop, bad input gives one-line errors. A tiny random model
keeps this file fast; compiled loops are reused (one Generator shape for most tests)."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnjax.poetry import forms, prosody
from rnnjax.poetry.data import Vocab
from rnnjax.poetry.errors import UserError
from rnnjax.poetry.evaluate import poem_metrics
from rnnjax.poetry.generation import FREE_LINE_MAX, Generator, Sampling
from rnnjax.poetry.model import PoetryModel

REPO = Path(__file__).resolve().parents[2]
POEMS = [
    "床前明月光，疑是地上霜。举头望明月，低头思故乡。",
    "春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。",
    "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。",
    "深度学习好！何处是春风？江南可采莲、莲叶何田田；",
]
VOCAB = Vocab.build(POEMS)
HANZI = "[\u3400-\u9fff]"
MAX_LEN = 66  # room for 七言律诗 (64 tokens + <EOP>)


def tiny_model(seed=0, cell="lstm", boost=(), scale=1.0):
    """Random weights; `boost` adds to the output bias of some tokens so that an unconstrained
    model would emit them often: the constraints must then hold against the model's wishes.
    `scale` > 1 makes the recurrent state matter more than torch's small init lets it."""
    model = PoetryModel(len(VOCAB), 16, 32, 2, cell=cell, rngs=nnx.Rngs(seed))
    if scale != 1.0:
        nnx.update(model, jax.tree.map(lambda p: p * scale, nnx.state(model, nnx.Param)))
    for tok in boost:
        model.linear1.bias[...] = model.linear1.bias[...].at[tok].add(6.0)
    return model


@pytest.fixture(scope="module")
def gen():
    return Generator(tiny_model(), VOCAB, max_len=MAX_LEN)


# ---- an independent reading of the rules ---------------------------------------------------------

ENDERS = "，。！？；"


def repetitions(text, form):
    """(repeated lines, characters over the 绝句 cap) of a poem: a closed line (without its mark) equal
    to an earlier line of the poem, and in 5x4 / 7x4 the characters that appear more than twice."""
    lines = [line[:-1] for line in forms.split_lines(text) if line[-1] in ENDERS]
    repeated = [line for k, line in enumerate(lines) if line and line in lines[:k]]
    over = sorted({c for c in text if forms.is_hanzi(c) and text.count(c) > 2}) if form.name in ("5x4", "7x4") else []
    return repeated, over


def assert_well_formed(text, complete, form, request_kw):
    assert "<" not in text and "</s>" not in text
    if not form.free:
        assert complete, text
        pairs = form.n_lines // 2
        line = f"{HANZI}{{{form.line_len}}}"
        assert re.fullmatch(f"({line}，{line}。){{{pairs}}}", text), (form, text)
        lines = [text[k * (form.line_len + 1):(k + 1) * (form.line_len + 1)] for k in range(form.n_lines)]
        if request_kw.get("rhyme"):
            classes = {forms.rhyme_class(lines[k][-2]) for k in range(1, form.n_lines, 2)}
            assert len(classes) == 1 and -1 not in classes, (text, classes)
    else:
        lines = re.findall("[^，。！？；]*[，。！？；]|[^，。！？；]+$", text)
        assert all(line[0] not in "，。！？；、" for line in lines), text
        ended = len(text) < MAX_LEN  # with <EOP>, not cut at max_len
        if ended:
            assert text and text[-1] in "，。！？；", text
        # complete: ended with <EOP> on a finished sentence (an acrostic's last line may end on `，`)
        assert complete == (ended and text[-1:] in "。！？"), text
    if request_kw.get("prefix"):
        assert text.startswith(request_kw["prefix"]), text
    if request_kw.get("acrostic"):
        heads = request_kw["acrostic"]
        assert (complete or form.free) and len(lines) == len(heads), (text, heads)
        assert all(line[0] == h for line, h in zip(lines, heads)), text
    # The repetition rules, where the other masks leave room (a rhyme class of this small vocabulary
    # may hold only the capped characters: the rule then gives way).
    if not request_kw.get("allow_repeats") and not request_kw.get("rhyme") and not request_kw.get("prefix"):
        assert repetitions(text, form) == ([], []), text


BATCH = 6
REQUESTS = st.sampled_from([
    {"form": "5x4"}, {"form": "7x8", "rhyme": True}, {"form": "5x8", "rhyme": True},
    {"prefix": "床前明月光"}, {"prefix": "白日依山尽，黄河入海流。", "rhyme": True},
    {"prefix": "春", "form": "七言绝句", "rhyme": True}, {"acrostic": "深度学习"},
    {"acrostic": "春花明", "form": "free"}, {"acrostic": "花落知多少处明月", "form": "5x8"},
    {"prefix": "何处"}, {"form": "free"}, {"prefix": "深度学习好！", "style": "江南可采莲"},
])
SAMPLINGS = st.sampled_from([Sampling(greedy=True), Sampling(), Sampling(1.5, 5, 1.0)])


@settings(max_examples=12)
@given(weights=st.integers(0, 2**16), reqs=st.lists(REQUESTS, min_size=BATCH, max_size=BATCH),
       sampling=SAMPLINGS, seed=st.integers(0, 2**31 - 1),
       boost=st.sampled_from([(), ("，", "。"), ("<EOP>", "！"), ("</s>", "<START>", "、")]))
def test_every_constraint_holds(weights, reqs, sampling, seed, boost):
    g = Generator(tiny_model(weights, boost=[VOCAB.stoi[t] for t in boost]), VOCAB, max_len=MAX_LEN)
    requests = [g.request(**kw) for kw in reqs]
    for poem, kw, r in zip(g.generate(requests, sampling, seed), reqs, requests):
        assert_well_formed(poem.text, poem.complete, r.form, kw)


def test_prefix_and_acrostic_are_kept(gen):
    poems = gen.generate([gen.request(prefix="床前明月光"), gen.request(acrostic="深度学习"),
                          gen.request(prefix="")], Sampling(), seed=3)
    assert poems[0].text.startswith("床前明月光，") and poems[0].form == "5x4"
    assert [line[0] for line in forms.split_lines(poems[1].text)] == list("深度学习")
    assert poems[1].form == "7x4" and poems[1].lines[0][7] == "，"
    assert poems[2].text and poems[2].text[0] not in "，。！？；"  # empty prefix: starts from <START>


def test_same_seed_same_poems_other_seed_differs(gen):
    reqs = [gen.request(prefix="春", form="5x8")] * 4
    a, b, c = (gen.generate(reqs, Sampling(), seed=s) for s in (7, 7, 8))
    assert [p.text for p in a] == [p.text for p in b]
    assert [p.text for p in a] != [p.text for p in c]
    assert len({p.text for p in a}) > 1  # --num N gives different poems
    # Poem i depends on (seed, i) only, not on how many poems the call makes.
    assert gen.generate(reqs[:1] * BATCH, Sampling(), seed=7)[1].text == a[1].text


# ---- greedy = the tutorial's loop, one token at a time -------------------------------------------

def refused(out, form, vocab=VOCAB):
    """Token ids the repetition rules refuse after `out`, read off the text: the one that would
    complete a line equal to an earlier line (a fixed form's last character, free form's closing
    mark, or the last token of a free line at its longest), and in a 绝句 every character already
    written twice."""
    text = [vocab.itos[i] for i in out]
    lines, cur = [], []
    for tok in text:
        if tok in ENDERS:
            lines.append(tuple(cur))
            cur = []
        else:
            cur.append(tok)
    bad = set()
    if form.free and cur and tuple(cur) in lines:
        bad |= {vocab.stoi[m] for m in ENDERS if m in vocab.stoi}
    longest = FREE_LINE_MAX if form.free else form.line_len
    if len(cur) == longest - 1:
        bad |= {vocab.stoi[line[-1]] for line in lines if len(line) == longest and line[:-1] == tuple(cur)}
    if form.name in ("5x4", "7x4"):
        bad |= {vocab.stoi[c] for c in set(text) if forms.is_hanzi(c) and text.count(c) >= 2}
    return bad


def greedy_pick(logits, ok, plain=False):
    """The tutorial's argmax over `ok` (`plain`), or greedy by class: the class of tokens (go on /
    close the line / end the poem) with the most probability among `ok`, then its likeliest token."""
    if plain:
        return max(ok, key=lambda i: logits[i])
    klass = lambda i: 2 if i == VOCAB.eop_id else 1 if VOCAB.itos[i] in ENDERS else 0  # noqa: E731
    p = np.exp(logits[ok].astype(np.float64) - logits[ok].max())
    mass = [sum(q for i, q in zip(ok, p) if klass(i) == c) for c in range(3)]
    best = max(range(3), key=lambda c: (mass[c], -c))  # a tie goes on
    return max((i for i in ok if klass(i) == best), key=lambda i: logits[i])


def reference_greedy(model, prefix, allowed, style="", max_len=MAX_LEN, form=None, plain=False):
    """The tutorial's `generate` (plus pytorch-book's prefix_words), with a rule choosing among tokens:
    `allowed(out)`, less what the repetition rules of `form` refuse (unless nothing would be left;
    no `form`: no repetition rules), then `greedy_pick`."""
    ids = [VOCAB.stoi[c] for c in prefix]
    feed = [VOCAB.start_id, *(VOCAB.stoi[c] for c in style)]
    step = nnx.jit(lambda m, tok, hx: m(tok, hx))  # one model call per token; jit only for speed
    hx = None
    for tok in feed[:-1]:
        _, hx = step(model, jnp.array([[tok]], jnp.int32), hx)
    inp, out = feed[-1], []
    for t in range(max_len):
        logits, hx = step(model, jnp.array([[inp]], jnp.int32), hx)
        logits = np.asarray(logits[0, 0])
        if t < len(ids):
            tok = ids[t]
        else:
            ok = allowed(out)
            if form is not None:
                ok = [i for i in ok if i not in refused(out, form)] or ok
            tok = greedy_pick(logits, ok, plain)
        out.append(tok)
        if tok == VOCAB.eop_id:
            break
        inp = tok
    return out


def free_rule(out):
    text = "".join(VOCAB.itos[i] for i in out)
    line_start = not text or text[-1] in "，。！？；"
    if len(re.split("[，。！？；]", text)[-1]) >= FREE_LINE_MAX:
        return [i for i, t in enumerate(VOCAB.itos) if t in "，。！？；"]
    ok = [i for i, t in enumerate(VOCAB.itos) if i not in (VOCAB.pad_id, VOCAB.start_id, VOCAB.eop_id)
          and not (line_start and not forms.is_hanzi(t))]
    return ok + [VOCAB.eop_id] * (line_start and bool(text))


def quatrain_rule(out):
    line, col = divmod(len(out), 6)
    if line == 4:
        return [VOCAB.eop_id]
    if col == 5:
        return [VOCAB.stoi["，。"[line % 2]]]
    return [i for i, t in enumerate(VOCAB.itos) if forms.is_hanzi(t) and i > 2]


@pytest.mark.parametrize("old", [False, True], ids=["greedy", "tutorial"])
@pytest.mark.parametrize("cell,prefix,style,form,rule,boost", [
    ("lstm", "春", "", "free", free_rule, ("<EOP>", "，")),
    ("lstm", "床前", "白日依山尽，", "5x4", quatrain_rule, ()),
    ("gru", "何处", "江南", "free", free_rule, ("。",)),
])
def test_greedy_equals_step_by_step_reference(cell, prefix, style, form, rule, boost, old):
    """Greedy (by class, with the repetition rules), and `old`: the tutorial's argmax with
    --allow-repeats, token for token as the tutorial's loop."""
    model = tiny_model(5, cell, boost=[VOCAB.stoi[t] for t in boost], scale=3.0)
    g = Generator(model, VOCAB, max_len=40)
    request = g.request(prefix=prefix, style=style, form=form, allow_repeats=old)
    ids = g.generate_ids([request], Sampling(greedy=True, plain_argmax=old))[0]
    want = reference_greedy(model, prefix, rule, style, max_len=40, form=None if old else request.form, plain=old)
    assert ids[: len(want)].tolist() == want
    assert (ids[len(want):] == VOCAB.pad_id).all()


def test_style_changes_the_state():
    g = Generator(tiny_model(2, scale=4.0), VOCAB, max_len=40)
    plain = g.generate_ids([g.request(prefix="春")], Sampling(greedy=True))
    styled = g.generate_ids([g.request(prefix="春", style="深度学习好！何处是春风？")], Sampling(greedy=True))
    assert (plain != styled).any()


# ---- input checks --------------------------------------------------------------------------------

def test_traditional_input_is_simplified_and_unknown_characters_named(gen):
    assert gen.request(prefix="牀前").prefix_text == "床前"  # OpenCC t2s
    assert gen.request(prefix="床前, 疑是").prefix_text == "床前，疑是"  # ASCII punctuation, spaces
    with pytest.raises(UserError, match="vocabulary: 猫 狗"):
        gen.request(prefix="春猫狗")


@pytest.mark.parametrize("kw,match", [
    (dict(prefix="春" * (MAX_LEN + 1)), "--max-len"),
    (dict(prefix="床前明月光，疑是地上霜", form="7x4"), "needs 7 characters"),
    (dict(prefix="床前明月光。", form="5x4"), "should be '，'"),
    (dict(prefix="床前明月。"), None),  # free form accepts any prefix made of known characters
    (dict(acrostic="深度学", form="5x4"), "3 characters but 5x4 has 4 lines"),
    (dict(prefix="春", acrostic="深度"), "either"),
    (dict(prefix="春", rhyme=True, form="free"), "fixed form"),
    (dict(acrostic="深，"), "Chinese characters"),
])
def test_requests_that_cannot_work(gen, kw, match):
    if match is None:
        assert gen.request(**kw).form.free
    else:
        with pytest.raises(UserError, match=match):
            gen.request(**kw)


def test_sampling_flags_are_checked():
    for bad in (dict(temperature=-0.1), dict(top_p=0.0), dict(top_p=1.5), dict(top_k=-1)):
        with pytest.raises(UserError):
            Sampling(**bad)


def test_forms_rhyme_and_auto():
    assert forms.parse_form("七言律诗") == forms.FORMS["7x8"] and forms.parse_form("auto") is None
    assert forms.parse_form("五言絕句") == forms.FORMS["5x4"]  # typed in traditional script
    with pytest.raises(UserError, match="unknown form"):
        forms.parse_form("6x4")
    rc = forms.rhyme_class
    assert rc("光") == rc("霜") == rc("乡") != rc("山") and rc("月") == rc("雪") and rc("，") == -1
    assert forms.auto_form("床前明月光", "").name == "5x4"
    assert forms.auto_form("春", "").free and forms.auto_form("", "深度学习").name == "7x4"
    assert forms.auto_form("白日依山尽，黄河入海流。欲穷千里目，更上一层楼。山", "").name == "5x8"
    assert forms.check_poem("床前明月光，疑是地上霜。举头望明月，低头思故乡。", forms.FORMS["5x4"])
    assert not forms.check_poem("床前明月光，疑是地上霜。举头望明月。低头思故乡，", forms.FORMS["5x4"])


def test_evaluate_metrics():
    texts = ["春风明月光，春风明月光。", "白日依山尽，黄河入海流。"]
    m = poem_metrics(texts, [True, True], forms.FORMS["5x4"], "prefix", ["春", "黑"])
    assert m["well_formed"] == 0 and m["kept"] == 50 and m["repeated_lines"] == 25
    assert m["distinct_2"] == pytest.approx(12 / 16)


# ---- the CLI: a tiny exported checkpoint -----------------------------------------------------------

@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from rnnjax.poetry.checkpoint import export_model

    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    export_model(out, tiny_model(1, boost=[VOCAB.eop_id]), {"vocab": VOCAB.itos, "data_fingerprint": "",
                                                            "flags": {}})
    return out


def _generate_main():
    spec = importlib.util.spec_from_file_location("generate_cli", REPO / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def run_cli(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "generate.py", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def test_cli_json_poems(ckpt):
    r = run_cli("--checkpoint", str(ckpt), "--acrostic", "深度学习", "--form", "七言绝句", "--num", "3",
                "--seed", "1", "--json", "--rhyme")
    assert r.returncode == 0, r.stderr
    assert f"checkpoint: {ckpt}" in r.stderr
    poems = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(poems) == 3 and len({p["text"] for p in poems}) == 3
    for p in poems:
        assert_well_formed(p["text"], p["complete"], forms.FORMS["7x4"], {"acrostic": "深度学习", "rhyme": True})
        assert p["lines"] == forms.print_lines(p["text"]) and len(p["lines"]) == 2 and p["seed"] == 1


def test_cli_missing_checkpoint_is_one_line(tmp_path):
    r = run_cli("--checkpoint", str(tmp_path / "nope"), "--prefix", "春")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: ")
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("args,match", [
    (["--form", "六言"], "unknown form"),
    (["--top-p", "0"], "--top-p"),
    (["--top-p", "1.1"], "--top-p"),
    (["--temperature", "-1"], "--temperature"),
    (["--num", "0"], "--num"),
    (["--prefix", "春猫"], "vocabulary: 猫"),
    (["--prefix", "春" * 130], "--max-len"),
    (["--prefix", "床前明月光，", "--form", "7x4"], "needs 7 characters"),
])
def test_cli_bad_input(ckpt, capsys, args, match):
    with pytest.raises(SystemExit) as e:
        _generate_main()(["--checkpoint", str(ckpt), *args])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and match in err[-1]


def test_cli_corrupt_checkpoint_and_default(ckpt, tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    monkeypatch.chdir(tmp_path)
    # No default at all: neither a training folder here nor a shipped model (the repository's is found
    # from any directory, so it is pointed elsewhere).
    monkeypatch.setattr("rnnjax.poetry.model_choice.REPO_ROOT", tmp_path)
    monkeypatch.setattr("rnnjax.poetry.model_choice.SHIPPED_CHECKPOINT", tmp_path / "nothing")
    for args, match in ((["--checkpoint", str(bad)], "corrupt"), ([], "--checkpoint")):
        with pytest.raises(SystemExit) as e:
            _generate_main()(args)
        assert e.value.code == 2 and match in capsys.readouterr().err


def test_cli_prints_couplets(ckpt, capsys):
    _generate_main()(["--checkpoint", str(ckpt), "--prefix", "床前明月光", "--num", "2", "--greedy"])
    out = capsys.readouterr().out.strip().split("\n\n")
    assert len(out) == 2 and out[0] == out[1]  # greedy: the same poem twice
    assert all(re.fullmatch(f"{HANZI}{{5}}，{HANZI}{{5}}。", line) for line in out[0].splitlines())


# ---- 格律 (--meter) and 平水韵 rhyme ----------------------------------------------------------------
# A vocabulary of real characters: every tone class, several 平水韵 groups of 5+ level characters
# (律诗 入韵 needs 5 rhymes), a character unknown to 平水韵 (䶮), and punctuation.
METER_CHARS = "".join(dict.fromkeys(
    "白日依山尽黄河入海流欲穷千里目更上一层楼国破城春草木深感时花溅泪恨别鸟惊心烽火连三月家书"
    "抵万金头搔短浑不胜簪秦明汉关长征人未还但使龙飞将在教胡马度阴床前光疑是地霜举望低思故乡看"
    "石风云天秋江南北东西雪月星夜空归来去远行愁君何处无有青红绿水烟寒孤舟酒声高楼台歌舞梦中"
    "诗知迟池枝尘新身亲闻群分言门村夏冬䶮"))
METER_VOCAB = Vocab(["</s>", "<START>", "<EOP>", "，", "。", "！", *METER_CHARS])
METER_BATCH = 8


def meter_model(seed=0, boost=(), rank=None):
    """Random weights over METER_VOCAB; `boost` as in `tiny_model`. `rank`: zero output weights and
    this bias, so the logits are `rank` whatever the state and greedy picks the best-ranked token
    the masks allow (what the numpy reference can predict exactly)."""
    model = PoetryModel(len(METER_VOCAB), 16, 32, 2, rngs=nnx.Rngs(seed))
    for tok in boost:
        model.linear1.bias[...] = model.linear1.bias[...].at[tok].add(6.0)
    if rank is not None:
        model.linear1.kernel[...] = jnp.zeros_like(model.linear1.kernel[...])
        model.linear1.bias[...] = jnp.asarray(rank, jnp.float32)
    return model


def template_of(poem):
    return prosody.template_index(poem.form, poem.template)


METER_REQUESTS = st.sampled_from([
    {"form": "5x4", "meter": True}, {"form": "5x8", "meter": True}, {"form": "7x4", "meter": True},
    {"form": "7x8", "meter": True}, {"meter": True},  # auto, no prefix: 5x4
    {"prefix": "白日依山尽，黄河入海流。", "meter": True}, {"prefix": "床前明月光", "form": "5x8", "meter": True},
    {"prefix": "秦时明月汉时关，", "meter": True}, {"prefix": "春", "form": "七言律诗", "meter": True},
    {"acrostic": "春江花月", "meter": True}, {"acrostic": "春江花月", "form": "5x4", "meter": True},
    {"acrostic": "风花雪月春夏秋冬", "meter": True}, {"acrostic": "山水云月星风花秋", "form": "5x8", "meter": True, "style": "人"},
    {"form": "5x8", "rhyme": "pingshui"}, {"form": "7x4", "rhyme": "pingshui"},
    {"prefix": "白日依山尽，黄河入海流。", "rhyme": "pingshui"},
    {"form": "7x4", "rhyme": "modern"}, {"form": "5x4"}, {"prefix": "春风"},
])
# Tokens an unconstrained model would then emit at every step: oblique-only, a much-wanted rhyme,
# the character 平水韵 does not know.
METER_BOOSTS = st.sampled_from([(), tuple("石月国白"), ("流", "楼"), ("䶮", "。"), ("光",)])


def assert_meter_poem(poem, kw):
    """An independent check of a --meter / --rhyme pingshui poem: the checker of prosody.py."""
    text = poem.text
    assert poem.complete and forms.check_poem(text, forms.FORMS[poem.form]), text
    if kw.get("prefix"):
        assert text.startswith(kw["prefix"]), text
    if kw.get("acrostic"):
        assert [line[0] for line in forms.split_lines(text)] == list(kw["acrostic"]), text
    if kw.get("meter"):
        r = prosody.check_poem(text, [template_of(poem)])
        assert r.violations == [] and r.passes_meter and r.rhymes, (text, poem.template, r.violations)
        assert prosody.check_poem(text).passes_meter
        if not kw.get("prefix") and not kw.get("acrostic"):  # the repetition rules hold alongside 格律
            assert repetitions(text, forms.FORMS[poem.form]) == ([], []), text
    else:
        assert poem.template is None
        assert prosody.check_rhyme(text)[0], text


@settings(max_examples=10)
@given(weights=st.integers(0, 2**16), reqs=st.lists(METER_REQUESTS, min_size=METER_BATCH, max_size=METER_BATCH),
       sampling=SAMPLINGS, seed=st.integers(0, 2**31 - 1), boost=METER_BOOSTS)
def test_meter_poems_pass_the_checker(weights, reqs, sampling, seed, boost):
    g = Generator(meter_model(weights, boost=[METER_VOCAB.stoi[t] for t in boost]), METER_VOCAB, max_len=MAX_LEN)
    requests = [g.request(**kw) for kw in reqs]
    for poem, kw, r in zip(g.generate(requests, sampling, seed), reqs, requests):
        if kw.get("meter") or kw.get("rhyme") == "pingshui":
            assert_meter_poem(poem, kw)
        else:
            assert_well_formed(poem.text, poem.complete, r.form, {**kw, "rhyme": kw.get("rhyme") == "modern"})


def reference_meter(tables, template, rank, given):
    """The poem greedy decoding must write when the logits are `rank` everywhere: at each character,
    the best-ranked token of `prosody.allowed_mask` (a numpy step of the loop) less what the repetition
    rules refuse (unless nothing would be left), or the given one."""
    t = prosody.TEMPLATES[template]
    form = forms.FORMS[t.form]
    chars = np.array([forms.is_hanzi(s) for s in METER_VOCAB.itos])
    state = prosody.MaskState(rhyme_groups=prosody.usable_groups(tables, t.n_rhymes))
    out = []
    for line in range(t.codes.shape[0]):
        for pos in range(t.codes.shape[1]):
            if (line, pos) in given:
                tok = METER_VOCAB.stoi[given[line, pos]]
            else:
                ok = prosody.allowed_mask(tables, template, line, pos, state) & chars
                fresh = ok.copy()
                fresh[list(refused(out, form, METER_VOCAB))] = False
                tok = int(np.argmax(np.where(fresh if fresh.any() else ok, rank, -np.inf)))
                assert ok[tok]
            out.append(tok)
            state = prosody.advance(tables, template, line, pos, state, tok)
        out.append(METER_VOCAB.stoi["，。"[line % 2]])
    return [*out, METER_VOCAB.eop_id]


@pytest.mark.parametrize("rank_seed", [0, 1, 2])
def test_loop_masks_equal_the_numpy_reference(rank_seed):
    """All 16 templates in one batch (with prefix / heads in one run): the compiled loop and
    `prosody.allowed_mask` + `advance` choose the same token at every step."""
    rng = np.random.default_rng(rank_seed)
    rank = rng.permutation(len(METER_VOCAB)).astype(np.float32)
    # Seed 0: the model wants 石 (仄 only) everywhere, so both 孤平 positions would be oblique;
    # seed 1: 䶮 (no tone), allowed on free positions only; seed 2: a prefix or heads.
    rank[METER_VOCAB.stoi[{0: "石", 1: "䶮", 2: "月"}[rank_seed]]] = len(METER_VOCAB)
    g = Generator(meter_model(rank=rank), METER_VOCAB, max_len=MAX_LEN)
    tables = g.prosody_tables
    templates = list(range(len(prosody.TEMPLATES)))
    prefixes = {"5x4": "白日依山尽，白", "5x8": "国破山河在，城", "7x4": "秦时明月汉", "7x8": ""}
    requests, given = [], []
    for i in templates:
        form = prosody.TEMPLATES[i].form
        kw = {"form": form, "meter": True}
        if rank_seed == 2 and form != "7x8" and i in prosody.fit_templates(form, prefixes[form]):
            kw["prefix"] = prefixes[form]
        elif rank_seed == 2 and form == "7x8":
            kw["acrostic"] = "风花雪月春夏秋冬"
        requests.append(g.request(**kw))
        assert i in requests[-1].templates
        cells = {}
        if kw.get("prefix"):
            for k, ch in enumerate(kw["prefix"].replace("，", "")):
                cells[divmod(k, int(form[0]))] = ch
        for line, ch in enumerate(kw.get("acrostic", "")):
            cells[line, 0] = ch
        given.append(cells)
    ids = g.generate_ids(requests, Sampling(greedy=True), templates=np.array(templates))
    for i, row, cells in zip(templates, ids, given):
        want = reference_meter(tables, i, rank, cells)
        assert row[: len(want)].tolist() == want, (prosody.TEMPLATE_NAMES[i], METER_VOCAB.decode(row))
        assert prosody.check_poem(METER_VOCAB.decode(row), [i]).passes_meter


def test_template_depends_on_seed_and_index_only():
    g = Generator(meter_model(3), METER_VOCAB, max_len=MAX_LEN)
    req = g.request(form="5x4", meter=True)
    a = g.generate([req] * METER_BATCH, Sampling(), seed=5)
    b = g.generate([req] * 3, Sampling(), seed=5)
    assert [p.template for p in a[:3]] == [p.template for p in b] and [p.text for p in a[:3]] == [p.text for p in b]
    assert len({p.template for p in a}) > 1  # drawn among all four 五言绝句 templates
    assert {p.template for p in g.generate([g.request(prefix="床前明月光", meter=True)] * 4, Sampling())} == {"平起入韵"}


@pytest.mark.parametrize("kw,match", [
    (dict(prefix="白日依山光", meter=True), "'光' (line 1, position 5) is 平"),
    (dict(prefix="白日依山尽，白河入海流。", meter=True), "'入' (line 2, position 3)"),
    (dict(acrostic="石石石石", form="5x4", meter=True), None),  # heads stand on free positions
    (dict(prefix="春", form="free", meter=True), "fixed form"),
    (dict(acrostic="春江花", meter=True), "7x3"),
    (dict(form="5x4", meter=True, rhyme="modern"), "--rhyme modern"),
    (dict(form="5x4", rhyme="tang"), "unknown rhyme"),
    (dict(prefix="白日依山尽，黄河入海石。", rhyme="pingshui"), "'石' (line 2, position 5) is 仄"),
    (dict(prefix="白日依山尽，黄河入海流。欲穷千里目，更上一层山。", rhyme="pingshui"), "'山' (line 4"),
])
def test_meter_requests_that_cannot_work(kw, match):
    g = Generator(meter_model(), METER_VOCAB, max_len=MAX_LEN)
    if match is None:
        assert g.request(**kw).templates
        return
    with pytest.raises(UserError, match=re.escape(match)) as e:
        g.request(**kw)
    assert "\n" not in str(e.value)


def test_meter_refuses_a_vocabulary_that_cannot_keep_it():
    level_only = Vocab(["</s>", "<START>", "<EOP>", "，", "。", *"天风山流楼"])
    g = Generator(PoetryModel(len(level_only), 8, 8, 1, rngs=nnx.Rngs(0)), level_only, max_len=MAX_LEN)
    with pytest.raises(UserError, match="no 仄 character"):
        g.request(form="5x4", meter=True)
    few = Vocab(["</s>", "<START>", "<EOP>", "，", "。", *"天风山流石月"])  # no group of 3
    g = Generator(PoetryModel(len(few), 8, 8, 1, rngs=nnx.Rngs(0)), few, max_len=MAX_LEN)
    with pytest.raises(UserError, match="no 平水韵 level group of 2 characters"):
        g.request(form="5x4", meter=True)
    with pytest.raises(UserError, match="level group of 4 characters"):
        g.request(form="5x8", rhyme="pingshui")


@pytest.fixture(scope="module")
def meter_ckpt(tmp_path_factory):
    from rnnjax.poetry.checkpoint import export_model

    out = tmp_path_factory.mktemp("ckpt") / "meter"
    export_model(out, meter_model(4), {"vocab": METER_VOCAB.itos, "data_fingerprint": "", "flags": {}})
    return out


def test_cli_meter_json(meter_ckpt, capsys):
    _generate_main()(["--checkpoint", str(meter_ckpt), "--格律", "--form", "七言律诗", "--num", "3", "--json",
                      "--max-len", str(MAX_LEN)])
    poems = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(poems) == 3
    for p in poems:
        assert p["template"] in {t.name for t in prosody.TEMPLATES} and p["form"] == "7x8"
        assert p["meter"]["passes_meter"] and p["meter"]["rhymes"] and p["meter"]["violations"] == []
        assert p["meter"]["template"] == p["template"]
        chars = p["text"].replace("，", "").replace("。", "")
        assert "".join(p["tones"]) == "".join(prosody.tone_class(c) for c in chars) and len(p["tones"]) == 8
    _generate_main()(["--checkpoint", str(meter_ckpt), "--form", "5x4", "--json", "--max-len", str(MAX_LEN)])
    p = json.loads(capsys.readouterr().out)
    assert p["template"] is None and set(p["meter"]) >= {"passes_meter", "rhymes", "violations"}


def test_cli_show_tones(meter_ckpt, capsys):
    _generate_main()(["--checkpoint", str(meter_ckpt), "--meter", "--prefix", "床前明月光", "--show-tones",
                      "--max-len", str(MAX_LEN)])
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert lines[0].startswith("床前明月光，") and "under each line" in out.err
    assert lines[3:6] == ["床 前 明 月 光", "平 平 平 仄 平", "中 平 中 仄 韵"]
    assert "5x4 平起入韵" in out.out and "格律: passes" in out.out
    # Without --meter: the best-fitting template, and the broken rules marked.
    _generate_main()(["--checkpoint", str(meter_ckpt), "--prefix", "白日依山光", "--show-tones", "--greedy",
                      "--max-len", str(MAX_LEN)])
    out = capsys.readouterr().out
    assert "白 日 依 山 光" in out and "格律: " in out


@pytest.mark.parametrize("args,match", [
    (["--meter", "--form", "free"], "fixed form"),
    (["--meter", "--rhyme"], "--rhyme modern"),  # bare --rhyme is the old spelling of modern
    (["--meter", "--prefix", "白日依山光"], "'光' (line 1, position 5)"),
    (["--rhyme", "tang"], "invalid choice"),
])
def test_cli_meter_errors(meter_ckpt, capsys, args, match):
    with pytest.raises(SystemExit) as e:
        _generate_main()(["--checkpoint", str(meter_ckpt), "--max-len", str(MAX_LEN), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and err[-1].startswith("error: ") and match in err[-1]


def test_evaluate_meter_columns():
    texts = ["白日依山尽，黄河入海流。欲穷千里目，更上一层楼。", "床前明月光，疑是地上霜。举头望明月，低头思故乡。",
             "春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。"]
    m = poem_metrics(texts, [True] * 3, forms.FORMS["5x4"], "prefix", ["白", "床", "春"])
    assert m["meter"] == pytest.approx(100 / 3) and m["pingshui_rhyme"] == pytest.approx(200 / 3)
    assert poem_metrics(texts, [True] * 3, forms.FREE, "prefix", ["白", "床", "春"])["meter"] is None


def test_meter_command_is_registered(capsys):
    from rnnjax.poetry.__main__ import main

    assert main(["meter", "--poem", "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。"]) == 0
    assert "格律: passes" in capsys.readouterr().out
