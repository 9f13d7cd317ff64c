"""Poem generation: constraints always hold, sampling is reproducible, greedy matches a plain loop,
bad input gives one-line errors. A tiny random model keeps this file fast; compiled loops are reused
(one Generator shape for most tests)."""
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

from rnnjax.poetry import forms
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
        if complete:
            assert text and text[-1] in "，。！？；", text
    if request_kw.get("prefix"):
        assert text.startswith(request_kw["prefix"]), text
    if request_kw.get("acrostic"):
        heads = request_kw["acrostic"]
        assert complete and len(lines) == len(heads), (text, heads)
        assert all(line[0] == h for line, h in zip(lines, heads)), text


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

def reference_greedy(model, prefix, allowed, style="", max_len=MAX_LEN):
    """The tutorial's `generate` (plus pytorch-book's prefix_words), with a rule choosing among tokens."""
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
        tok = ids[t] if t < len(ids) else max(allowed(out), key=lambda i: logits[i])
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


@pytest.mark.parametrize("cell,prefix,style,form,rule,boost", [
    ("lstm", "春", "", "free", free_rule, ("<EOP>", "，")),
    ("lstm", "床前", "白日依山尽，", "5x4", quatrain_rule, ()),
    ("gru", "何处", "江南", "free", free_rule, ("。",)),
])
def test_greedy_equals_step_by_step_reference(cell, prefix, style, form, rule, boost):
    model = tiny_model(5, cell, boost=[VOCAB.stoi[t] for t in boost], scale=3.0)
    g = Generator(model, VOCAB, max_len=40)
    ids = g.generate_ids([g.request(prefix=prefix, style=style, form=form)], Sampling(greedy=True))[0]
    want = reference_greedy(model, prefix, rule, style, max_len=40)
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
    for args, match in ((["--checkpoint", str(bad)], "corrupt"), ([], "--checkpoint")):
        with pytest.raises(SystemExit) as e:
            _generate_main()(args)
        assert e.value.code == 2 and match in capsys.readouterr().err


def test_cli_prints_couplets(ckpt, capsys):
    _generate_main()(["--checkpoint", str(ckpt), "--prefix", "床前明月光", "--num", "2", "--greedy"])
    out = capsys.readouterr().out.strip().split("\n\n")
    assert len(out) == 2 and out[0] == out[1]  # greedy: the same poem twice
    assert all(re.fullmatch(f"{HANZI}{{5}}，{HANZI}{{5}}。", line) for line in out[0].splitlines())
