"""generate.py under hostile input and odd set-ups (issue 15, part B): any seed, punctuation and line
breaks in a prefix, a large --num in bounded chunks, consistent limits, the default model from any
directory and never silently downgraded, a fast start - and a fuzz test: arbitrary Unicode and
integers give a poem (exit 0) or one line (exit 2), never a traceback.

The CLI runs in-process through `generate.main(argv)` on the shared tiny checkpoint, with the
loaded model memoised (a load is the slow part of a call) - except the one start-up test, which
runs `python generate.py` from another directory as a user would.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from rnnjax.poetry import checkpoint, forms
from rnnjax.poetry import generation as g
from rnnjax.poetry import model_choice
from rnnjax.poetry.data import Vocab
from rnnjax.poetry.model import PoetryModel

REPO = Path(__file__).resolve().parents[2]
TINY_CHARS = "床前明月光疑是地上霜举头望低思故乡白日依山尽黄河入海流欲穷千里目更一层楼春眠不觉晓处闻啼鸟夜来风雨声花落知多少红豆生南国发几枝愿君采撷此物最相"


def _load_generate():
    spec = importlib.util.spec_from_file_location("generate_cli_reliability", REPO / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GENERATE = _load_generate()


@pytest.fixture(scope="module")
def cli(tiny_checkpoint):
    """run(argv) -> (exit status, stdout, stderr) of generate.main, the tiny checkpoint's model memoised,
    no persistent compilation cache (the test process compiles as it always did)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RNNJAX_CACHE_DIR", "")
        mp.setattr(checkpoint, "load_model", functools.lru_cache(maxsize=4)(checkpoint.load_model))

        def run(argv, checkpoint_dir=tiny_checkpoint):
            out, err = io.StringIO(), io.StringIO()
            code = 0
            argv = ([f"--checkpoint={checkpoint_dir}"] if checkpoint_dir else []) + list(argv)
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    GENERATE.main(argv)
                except SystemExit as e:
                    code = e.code
            return code, out.getvalue(), err.getvalue()

        yield run


def one_line_error(code, err) -> str:
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def tiny_generator(chars: str, max_len: int = 40, boost: tuple[str, ...] = ()) -> g.Generator:
    """A random model over `chars` and the marks; `boost` makes tokens likely against the masks."""
    vocab = Vocab(["</s>", "<START>", "<EOP>", "，", "。", "：", "、", *dict.fromkeys(chars)])
    model = PoetryModel(len(vocab.itos), 8, 16, 1, rngs=nnx.Rngs(0))
    for tok in boost:
        model.linear1.bias[...] = model.linear1.bias[...].at[vocab.stoi[tok]].add(8.0)
    return g.Generator(model, vocab, max_len=max_len)


# ---- item 3: seeds -------------------------------------------------------------------------------

def test_any_integer_is_a_seed_and_none_wraps(cli):
    texts = {}
    for seed in (0, 2**32, 2**63, -1, 2**32 - 1, 10**200):
        code, out, err = cli(["--prefix", "春", "--num", "3", "--json", "--seed", str(seed)])
        assert code == 0, err
        poems = [json.loads(line) for line in out.splitlines()]
        assert [p["seed"] for p in poems] == [seed] * 3
        texts[seed] = tuple(p["text"] for p in poems)
    assert texts[2**32] != texts[0] and texts[-1] != texts[2**32 - 1]
    assert "digits" in one_line_error(*cli(["--seed", "1" + "0" * 5000])[::2])  # Python's int() limit
    keys = {s: tuple(np.asarray(jax.random.key_data(g.seed_key(s)))) for s in (0, 2**32, -1, 2**32 - 1, 2**64)}
    assert len(set(keys.values())) == len(keys)
    # Seeds that fit 32 bits keep their key: poems written before stay the same.
    assert keys[0] == tuple(np.asarray(jax.random.key_data(jax.random.key(0))))


# ---- item 9: a free poem that stops on `，` is not complete ------------------------------------------

def test_free_poem_stopping_after_a_comma_is_not_complete():
    gen = tiny_generator(TINY_CHARS, boost=("，", "<EOP>"))
    poems = gen.generate([gen.request("春", form="free")] * 4, g.Sampling(greedy=True))
    assert all(p.text.endswith("，") for p in poems)  # the model's choice: <EOP> right after `，`
    assert not any(p.complete for p in poems)
    ended = tiny_generator(TINY_CHARS, boost=("。", "<EOP>"))  # same shapes: the compiled loop is reused
    assert all(p.complete and p.text.endswith("。")
               for p in ended.generate([ended.request("春", form="free")] * 4, g.Sampling(greedy=True)))


def test_cli_says_why_a_poem_is_unfinished(cli, monkeypatch):
    cut = g.Poem("春江，", ["春江，"], "free", 0, 0, False)
    monkeypatch.setattr(g.Generator, "generate", lambda self, reqs, *a, **k: [cut] * len(reqs))
    code, out, err = cli(["--prefix", "春"])
    assert code == 0 and out.strip() == "春江，" and "(poem 1 stopped after '，', mid-sentence)" in err


# ---- items 10 and 12: punctuation, ':' and line breaks in a prefix ---------------------------------

@pytest.mark.parametrize("prefix", ["，春", "。", "，，", "春，，", "春。，花", ",春", "春\n，"])
def test_prefix_starting_with_or_doubling_punctuation_is_one_line(cli, prefix):
    line = one_line_error(*cli(["--prefix", prefix])[::2])
    assert "punctuation" in line or "starts with" in line


def test_ascii_colon_and_line_breaks():
    gen = tiny_generator(TINY_CHARS, max_len=66)
    assert gen.normalize("春: 花", "the prefix") == "春：花"
    # A line break ends a line with the mark its position needs, unless the line has one already.
    assert gen.request("床前明月光\n疑是地上霜\n举头望明月").prefix_text == "床前明月光，疑是地上霜。举头望明月"
    assert gen.request("床前明月光，\r\n\n疑是地上霜\n").prefix_text == "床前明月光，疑是地上霜。"
    assert gen.request("春\u2028花").prefix_text == "春，花"
    assert gen.request(acrostic="春\n花\n明\n月").acrostic_text == "春花明月"  # an acrostic drops them
    r = gen.request("床前明月光\n疑是地上霜\n", form="5x4")
    assert r.form.name == "5x4" and r.prefix_text == "床前明月光，疑是地上霜。"


def test_unprintable_characters_are_named_on_one_line(cli):
    for prefix, shown in (("春\x00", "U+0000"), ("春\udcff", "U+DCFF"), ("春\u0301", "U+0301"), ("春\x1b[2J", "U+001B")):
        line = one_line_error(*cli([f"--prefix={prefix}"])[::2])
        assert shown in line


# ---- item 13: a large --num in bounded chunks, printed as they finish --------------------------------

def test_large_num_is_written_in_chunks_and_streamed(cli, monkeypatch):
    code, out, err = cli(["--prefix", "春", "--num", "7", "--json", "--seed", "3"])
    whole = [json.loads(line) for line in out.splitlines()]
    monkeypatch.setattr(g, "CHUNK", 3)
    calls, real = [], g.Generator.generate_ids

    def spy(self, requests, *a, **k):
        calls.append((len(requests), sys.stdout.getvalue().count("\n")))  # batch size, lines printed so far
        return real(self, requests, *a, **k)

    monkeypatch.setattr(g.Generator, "generate_ids", spy)
    code, out, err = cli(["--prefix", "春", "--num", "7", "--json", "--seed", "3"])
    assert code == 0, err
    chunked = [json.loads(line) for line in out.splitlines()]
    assert [b for b, _ in calls] == [3, 3, 3]          # one compiled shape, memory of 3 poems at a time
    assert [n for _, n in calls] == [0, 3, 6]          # each chunk was printed before the next began
    assert [p["index"] for p in chunked] == list(range(7))
    assert [p["text"] for p in chunked] == [p["text"] for p in whole]  # poem i does not depend on chunks
    assert "7/7 poems" in err.splitlines()[-1]


def test_ctrl_c_and_a_closed_pipe_exit_quietly(cli, monkeypatch):
    def interrupted(self, *a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(g.Generator, "generate", interrupted)
    code, out, err = cli(["--prefix", "春"])
    assert code == 130 and err.splitlines()[-1] == "interrupted" and "Traceback" not in err
    monkeypatch.undo()

    def closed(*a):
        raise BrokenPipeError
    monkeypatch.setattr(GENERATE, "_print_poem", closed)
    code, out, err = cli(["--prefix", "春"])
    assert code == 141 and "Traceback" not in err and "error" not in err


# ---- items 15 and 20: limits and small items ------------------------------------------------------

def test_max_len_limits_are_one_message(cli):
    lines = [one_line_error(*cli(["--max-len", v])[::2]) for v in ("0", "1", "1025")]
    assert len({re.sub(r"got \d+", "got N", line) for line in lines}) == 1  # one wording, one range
    assert f"between {g.MIN_MAX_LEN} and {g.MAX_MAX_LEN}" in lines[0]
    with pytest.raises(Exception, match=f"between {g.MIN_MAX_LEN} and"):
        tiny_generator(TINY_CHARS, max_len=1)


def test_empty_checkpoint_and_form_case(cli):
    assert "empty" in one_line_error(*cli(["--checkpoint", "", "--prefix", "春"], checkpoint_dir=None)[::2])
    for form in ("5X4", "５ｘ４", " Free ", "AUTO"):
        code, out, err = cli(["--prefix", "春", "--form", form, "--json"])
        assert code == 0, err
    assert json.loads(cli(["--form", "5X4", "--json"])[1])["form"] == "5x4"


def test_evaluate_refuses_missing_data_before_loading(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    from rnnjax.poetry import evaluate

    monkeypatch.setenv("RNNJAX_CACHE_DIR", "")
    monkeypatch.setattr(checkpoint, "load_model", lambda *a: pytest.fail("loaded a model"))
    for data in (tmp_path / "none.npz", tmp_path):
        with pytest.raises(SystemExit) as e:
            evaluate.main(["--checkpoint", str(tiny_checkpoint), "--data", str(data)])
        assert e.value.code == 2 and capsys.readouterr().err.startswith("error: --data")


# ---- items 7, 8 and 16: the default model ------------------------------------------------------------

@pytest.fixture
def defaults(tiny_checkpoint, tmp_path, monkeypatch):
    """A working directory and a 'shipped' export elsewhere; returns make(shipped_val_loss)."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(model_choice, "REPO_ROOT", tmp_path / "repo")
    shipped = tmp_path / "repo" / "pretrained" / "tiny"
    monkeypatch.setattr(model_choice, "SHIPPED_CHECKPOINT", shipped)
    model, _, config = checkpoint.load_model(tiny_checkpoint)
    checkpoint.export_model(shipped, model, config)
    record = json.loads((shipped / "config.json").read_text(encoding="utf-8"))

    def make(val_loss):
        text = json.dumps({**record, "source_step": 7, "val_loss": val_loss}, ensure_ascii=False)
        (shipped / "config.json").write_text(text, encoding="utf-8")
        return shipped

    return make


def test_default_skips_a_run_with_no_saved_step(defaults, tiny_checkpoint, cli):
    defaults(5.0)
    trained = Path("checkpoints/lstm")
    trained.mkdir(parents=True)
    shutil.copy(tiny_checkpoint / "config.json", trained / "config.json")  # killed before its first save
    code, out, err = cli(["--prefix", "春"], checkpoint_dir=None)
    assert code == 0, err
    assert f"checkpoint: {model_choice.SHIPPED_CHECKPOINT} (step 7, validation perplexity {math.exp(5):.1f})" in err
    assert "skipped checkpoints/lstm: it holds no saved step yet" in err


def test_default_is_the_better_recorded_perplexity(defaults, tiny_checkpoint):
    shutil.copytree(tiny_checkpoint, "checkpoints/lstm")
    step, loss = checkpoint.recorded_quality("checkpoints/lstm")
    assert step == 2 and loss is not None
    defaults(loss - 1)  # the shipped model is better: a short run must not replace it
    choice = model_choice.choose_checkpoint()
    assert choice.path == model_choice.SHIPPED_CHECKPOINT
    assert choice.notes == (f"note: not using checkpoints/lstm (step 2, validation perplexity {math.exp(loss):.1f}): "
                            "--checkpoint checkpoints/lstm uses it",)
    defaults(loss + 1)  # the training run is better: it wins, and the note names the shipped one
    choice = model_choice.choose_checkpoint()
    assert choice.path == Path("checkpoints/lstm") and f"--checkpoint {model_choice.SHIPPED_CHECKPOINT} uses it" in choice.notes[0]
    defaults(None)  # nothing recorded for one: the one with a measured perplexity wins
    assert model_choice.choose_checkpoint().path == Path("checkpoints/lstm")


def test_load_model_initialises_no_random_weights(tiny_checkpoint, monkeypatch):
    built = []
    real = PoetryModel.from_config.__func__
    monkeypatch.setattr(PoetryModel, "from_config",
                        classmethod(lambda cls, *a, **k: built.append(1) or real(cls, *a, **k)))
    load = getattr(checkpoint.load_model, "__wrapped__", checkpoint.load_model)  # not the memoised one
    model, _, _ = load(tiny_checkpoint)
    assert len(built) == 1  # the abstract model (nnx.eval_shape); its arrays come from the checkpoint
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(nnx.state(model)))


def test_generate_from_another_directory_uses_the_shipped_model(tmp_path):
    """End to end, as a user: the shipped model is found from any directory, and the compiled programs
    land in the persistent cache (the next start loads them instead of compiling)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "RNNJAX_CACHE_DIR": str(tmp_path / "cache")}
    r = subprocess.run([sys.executable, str(REPO / "generate.py"), "--prefix", "春"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert re.search(r"checkpoint: \S*pretrained/tang-lstm \(step \d+, validation perplexity [\d.]+\)", r.stderr)
    assert r.stdout.startswith("春") and "Traceback" not in r.stderr
    assert len(list((tmp_path / "cache").iterdir())) >= 5


# ---- the fuzz test ---------------------------------------------------------------------------------

# Arbitrary Unicode with no surrogates (argv cannot carry them but as undecodable bytes), and the kinds
# that break naive code: controls and format characters, combining marks, astral planes, line breaks.
ANY_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
NASTY = st.text(st.one_of(
    st.characters(categories=["Cc", "Cf", "Zl", "Zp", "Zs"]), st.characters(categories=["Mn", "Me", "Mc"]),
    st.characters(min_codepoint=0x10000, exclude_categories=["Cs"]),
), max_size=12)
# Text the tiny model knows: its characters, both marks, ASCII marks, spaces and line breaks.
KNOWN = st.text(st.sampled_from(TINY_CHARS[:30] + "，。,.:!? \n\r\t\u3000"), max_size=30)
LONG = st.builds(lambda c, n: c * n, st.sampled_from(["春", "春，", "x", "\u0301", "\n", "𠀀"]),
                 st.integers(100, 50_000))
def mostly(sane, hostile, tenths: int):
    """`sane` about `tenths` times in ten, else `hostile`: every flag is hostile often enough to find
    bugs, and sane often enough that many runs get through to a poem."""
    return st.integers(0, 9).flatmap(lambda k: sane if k < tenths else hostile)


TEXT = mostly(st.one_of(st.just(""), KNOWN), st.one_of(ANY_TEXT, NASTY, LONG, KNOWN), 6)
RARELY = mostly(st.just(""), TEXT, 7)  # --acrostic and --style: mostly absent
FORM = mostly(st.sampled_from(["auto", "auto", "free", "5X4", "Free", "７ｘ４", " auto ", "五言绝句"]),
              st.one_of(st.sampled_from(forms.FORM_CHOICES), ANY_TEXT, NASTY), 8)
# --num and --max-len: any integer outside the range, inside it a few values (each new batch size or
# length compiles the loop again; a large --num is tested above, in chunks).
NUM = mostly(st.sampled_from([1, 1, 2]), st.one_of(st.integers(max_value=0), st.integers(min_value=g.MAX_NUM + 1)), 8)
MAX_LEN = mostly(st.sampled_from([125, 125, 30, 3, 2]),
                 st.one_of(st.integers(max_value=g.MIN_MAX_LEN - 1), st.integers(min_value=g.MAX_MAX_LEN + 1)), 8)
SEED = st.one_of(st.integers(), st.integers(min_value=-(2**300), max_value=2**300))
FUZZ_EXAMPLES = int(os.environ.get("RNNJAX_FUZZ_EXAMPLES", 200))  # more for a longer hunt


@settings(max_examples=FUZZ_EXAMPLES, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(prefix=TEXT, acrostic=RARELY, style=RARELY,
       form=FORM, seed=SEED, num=NUM, max_len=MAX_LEN, as_json=st.booleans())
def test_fuzz_generate_gives_a_poem_or_one_line(cli, prefix, acrostic, style, form, seed, num, max_len, as_json):
    argv = [f"--prefix={prefix}", f"--acrostic={acrostic}", f"--style={style}", f"--form={form}",
            f"--seed={seed}", f"--num={num}", f"--max-len={max_len}", *(["--json"] if as_json else [])]
    code, out, err = cli(argv)  # any exception but SystemExit fails the test with its traceback
    event(f"exit {code}" + (f": {err.split(':')[1].strip()[:30]}" if code == 2 else ""))
    if code == 2:
        one_line_error(code, err)
        assert out == ""
        return
    assert code == 0, err
    assert "Traceback" not in err and err.startswith("checkpoint: ")
    if not as_json:
        poems = out.strip("\n").split("\n\n")
        assert len(poems) == num and all(p.strip() for p in poems), out
        return
    poems = [json.loads(line) for line in out.splitlines()]
    assert len(poems) == num and [p["index"] for p in poems] == list(range(num))
    for p in poems:
        text, name = p["text"], p["form"]
        assert text and not set(text) - set(TINY_CHARS + "，。"), text
        assert text[0] in TINY_CHARS and p["lines"] == forms.print_lines(text)
        if name != "free":
            line_len, n_lines = map(int, name.split("x"))
            assert p["complete"] and forms.check_poem(text, forms.Form(line_len, n_lines, name)), p
        elif p["complete"]:
            assert forms.check_poem(text, forms.FREE) and text[-1] == "。", p
        else:
            assert len(text) >= max_len or text[-1] in "，", p
