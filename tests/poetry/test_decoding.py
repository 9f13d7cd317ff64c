"""Decoding choices inside the compiled loop: --best-of keeps the candidate the model finds likeliest
(checked against the model run outside the loop), greedy decides ending and closing a line by their
total probability, the repetition masks hold against a model that loves repetition, give way
rather than leave a row without a token, and turned off restore the poems written before them."""
from __future__ import annotations

import json
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_generation import MAX_LEN, VOCAB, _generate_main, repetitions, tiny_model

from rnnjax.poetry import decoding, forms
from rnnjax.poetry import generation as g
from rnnjax.poetry.errors import UserError
from rnnjax.poetry.generation import Generator, Sampling

# Compiles are most of this file's time: the tests share one model shape, one max_len and batches of
# 4 poems where they can, so that the compiled loops are reused.


@pytest.fixture(scope="module")
def tiny():
    """A random model (made sharper, so that candidates differ in likelihood) and its Generator."""
    model = tiny_model(4, scale=2.0)
    return model, Generator(model, VOCAB, max_len=MAX_LEN)


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    """A model folder for the CLI (an export of a tiny random model: no training needed)."""
    from rnnjax.poetry.checkpoint import export_model

    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    export_model(out, tiny_model(1), {"vocab": VOCAB.itos, "data_fingerprint": "", "flags": {}})
    return out


# ---- --best-of ------------------------------------------------------------------------------------

def determined(request, row, vocab) -> np.ndarray:
    """(T,) bool, read off the poem: the tokens the model did not choose - prefix, acrostic heads, a
    fixed form's punctuation and final <EOP>, and the pad after <EOP>."""
    out = np.zeros(len(row), bool)
    out[: len(request.prefix)] = True
    f, line, col, ended = request.form, 0, 0, False
    for t, tok in enumerate(row.tolist()):
        if ended:
            out[t] = True
            continue
        if col == 0 and line < len(request.heads):
            out[t] = True
        if not f.free and (col == f.line_len or line == f.n_lines):
            out[t] = True
        ended = tok == vocab.eop_id
        closes = vocab.itos[tok] in forms.LINE_ENDERS
        line, col = line + closes, 0 if closes else col + 1
    return out


_forward = nnx.jit(lambda model, tokens: model(tokens))


def model_logprobs(model, vocab, request, rows) -> list[float]:
    """The mean log-probability of each poem's chosen tokens, by running the model over whole poems
    (rows (N, T), padded after <EOP>: the pad is never a chosen token)."""
    feed = np.concatenate([np.full((len(rows), 1), vocab.start_id), rows[:, :-1]], axis=1).astype(np.int32)
    logits, _ = _forward(model, jnp.asarray(feed.T))  # (T, N, V)
    logp = jnp.take_along_axis(nnx.log_softmax(logits, axis=-1), jnp.asarray(rows.T)[..., None], 2)
    logp = np.asarray(logp)[..., 0].T
    out = []
    for row, lp in zip(rows, logp):
        chosen = ~determined(request, row, vocab)
        out.append(float(lp[chosen].mean()) if chosen.any() else 0.0)
    return out


BEST_REQUESTS = (dict(prefix="春", form="free"), dict(prefix="床前", form="5x4"), dict(acrostic="春花明月", form="7x4"),
                 dict(form="5x8"))


def test_best_of_keeps_the_likeliest_candidate(tiny):
    model, gen = tiny
    requests = [gen.request(**kw) for kw in BEST_REQUESTS]
    out = gen.decode(requests, Sampling(best_of=4), seed=3)
    assert out.candidates.shape == (4, 4, MAX_LEN) and out.candidate_logprob.shape == (4, 4)
    for i, r in enumerate(requests):
        want = model_logprobs(model, gen.vocab, r, out.candidates[i])
        np.testing.assert_allclose(out.candidate_logprob[i], want, rtol=1e-4, atol=1e-5)
        best = int(np.argmax(want))
        assert (out.ids[i] == out.candidates[i, best]).all() and out.logprob[i] == out.candidate_logprob[i].max()
    # Candidate 0 is the plain sample, so the kept poem is never less likely than it; and the choice
    # mattered somewhere (else this test could not fail).
    plain = gen.decode(requests, Sampling(best_of=1), seed=3, score=True)
    assert (plain.ids == out.candidates[:, 0]).all() and plain.candidates is None
    np.testing.assert_allclose(plain.logprob, out.candidate_logprob[:, 0], rtol=1e-6)
    assert (out.logprob >= plain.logprob).all() and (out.ids != plain.ids).any()
    unscored = gen.decode(requests, Sampling(), seed=3)  # best-of 1 is the default; scores change no token
    assert (unscored.ids == plain.ids).all() and unscored.logprob is None


def test_best_of_with_num_is_the_same_poems_in_any_chunks(tiny):
    """Poem i (candidates and all) depends on the seed and i only: not on its place in a batch."""
    _, gen = tiny
    req, sampling = gen.request(prefix="春", form="5x4"), Sampling(best_of=4)
    first = [p.text for p in gen.generate([req] * 4, sampling, seed=9)]
    later = [p.text for p in gen.generate([req] * 4, sampling, seed=9, start=2)]
    assert later[:2] == first[2:] and len(set(first)) > 1
    chunked = [p.text for chunk in gen.generate_many(req, 6, sampling, seed=9, chunk=4) for p in chunk]
    assert chunked == first + later[2:]
    assert [p.text for p in gen.generate([req] * 4, sampling, seed=9)] == first


@pytest.mark.parametrize("kw,match", [(dict(best_of=0), "between 1 and 64"), (dict(best_of=65), "between 1 and 64"),
                                      (dict(best_of=2, greedy=True), "needs sampling"),
                                      (dict(best_of=2, temperature=0), "needs sampling")])
def test_best_of_is_checked(kw, match):
    with pytest.raises(UserError, match=match) as e:
        Sampling(**kw)
    assert "\n" not in str(e.value)


# ---- greedy decides by class -----------------------------------------------------------------------

def test_greedy_weighs_ending_and_closing_by_their_mass():
    """Tokens: 4 characters (go on), `，` (close), <EOP> (end). <EOP> the single likeliest but under 1/2:
    greedy goes on with the likeliest character; over 1/2 it ends. The same for closing a line."""
    tab = g._greedy_tables(np.array([decoding.GO_ON] * 4 + [decoding.CLOSE, decoding.END]))
    greedy = jax.jit(decoding._greedy)

    def pick(probs, mixed=True):
        logits = jnp.log(jnp.asarray([probs], jnp.float32))
        return int(greedy(logits, tab, jnp.array([mixed]))[0])

    assert pick([0.10, 0.20, 0.15, 0.15, 0.0, 0.40]) == 1  # argmax would end
    assert pick([0.10, 0.10, 0.15, 0.05, 0.0, 0.60]) == 5
    assert pick([0.15, 0.10, 0.15, 0.15, 0.45, 0.0]) == 0  # the first of the likeliest characters
    assert pick([0.10, 0.10, 0.15, 0.05, 0.60, 0.0]) == 4
    assert pick([0.10, 0.20, 0.15, 0.15, 0.0, 0.40], mixed=False) == 5  # one class allowed: plain argmax
    assert pick([0.0, 0.0, 0.0, 0.0, 0.0, 1.0]) == 5  # masked (log 0 = -inf) everywhere else: no NaN
    assert pick([0.25, 0.25, 0.0, 0.0, 0.0, 0.50]) == 0  # a tie of masses goes on


@pytest.mark.parametrize("p_end,lines", [(0.4, None), (0.6, 1)])
def test_greedy_free_form_ends_when_ending_is_likelier_than_not(p_end, lines):
    """A model whose every step is the same distribution: <EOP> has `p_end` of the mass at a line start
    (each character far less). Greedy writes one line and ends when p_end > 1/2, and goes on to
    --max-len when not; the tutorial's argmax ends after the first line either way."""
    n_chars = sum(forms.is_hanzi(t) for t in VOCAB.itos)
    bias = np.full(len(VOCAB), -30.0, np.float32)
    bias[[VOCAB.stoi[c] for c in VOCAB.itos if forms.is_hanzi(c)]] = 0.0
    bias[VOCAB.stoi["好"]] = 0.5  # the likeliest character (so the poem is predictable)
    bias[VOCAB.eop_id] = math.log(p_end / (1 - p_end) * (n_chars - 1 + math.exp(0.5)))
    model = tiny_model()
    model.linear1.kernel[...] = jnp.zeros_like(model.linear1.kernel[...])
    model.linear1.bias[...] = jnp.asarray(bias)
    gen = Generator(model, VOCAB, max_len=MAX_LEN)
    req = gen.request(prefix="春", form="free", allow_repeats=True)
    text = gen.generate([req] * 4, Sampling(greedy=True))[0].text
    # Within a line, a closing mark (bias -30) never outweighs going on: lines run to the cap.
    assert text.startswith("春" + "好" * (g.FREE_LINE_MAX - 1))
    n_lines = len(forms.split_lines(text))
    assert (n_lines == lines) if lines else len(text) == MAX_LEN
    plain = gen.generate([req] * 4, Sampling(greedy=True, plain_argmax=True))[0].text
    assert len(forms.split_lines(plain)) == 1


# ---- repetition masks ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lover():
    """A model that wants 月 and 花 at every step (and lines that close early): unconstrained, it repeats."""
    model = tiny_model(2, boost=[VOCAB.stoi[t] for t in ("月", "花", "花", "。")])
    return Generator(model, VOCAB, max_len=MAX_LEN)


def test_no_repeated_line_and_no_character_thrice_in_a_quatrain(lover):
    """Quatrains, regulated verse and free form with the rules, and quatrains without (in one batch,
    over several seeds): the model repeats lines and characters when let, never under the rules."""
    requests = [lover.request(form="5x4"), lover.request(form="7x8"), lover.request(form="free"),
                lover.request(form="7x4", allow_repeats=True)]
    found = {False: [], True: []}
    for seed in range(6):
        for p, r in zip(lover.generate(requests, Sampling(), seed=seed, score=True), requests):
            found[r.allow_repeats].append(repetitions(p.text, r.form))
            assert math.isfinite(p.logprob) and (r.form.free or (p.complete and forms.check_poem(p.text, r.form)))
    assert all(rep == ([], []) for rep in found[False]), found[False]
    assert all(lines and chars for lines, chars in found[True]), found[True]


def test_modern_rhyme_never_repeats_a_rhyme_character():
    """重韵: with --rhyme (modern) and the rules on, the even lines end in different characters of one
    rhyme class; a model that loves 月 rhymes 月 with 月 when repeats are allowed."""
    lover = Generator(tiny_model(2, boost=[VOCAB.stoi[t] for t in ("月", "月", "。")]), VOCAB, max_len=MAX_LEN)
    # Acrostic heads make every line differ, so the no-repeated-line rule alone cannot keep the rhymes apart.
    heads = "".join(c for c in VOCAB.itos[5:] if c != "月")[:8]
    requests = [lover.request(acrostic=heads, form="5x8", rhyme=True),
                lover.request(acrostic=heads, form="7x8", rhyme=True),
                lover.request(acrostic=heads, form="5x8", rhyme=True, allow_repeats=True)]
    repeated = {False: 0, True: 0}
    for seed in range(6):
        for p, r in zip(lover.generate(requests, Sampling(), seed=seed), requests):
            rhymes = [line[-1] for line in re.findall(r"[^，。！？；]+", p.text)[1::2]]
            assert len(rhymes) == 4, p.text
            repeated[r.allow_repeats] += len(rhymes) - len(set(rhymes))
    assert repeated[False] == 0 and repeated[True] > 0, repeated


def test_prefix_characters_count_but_are_never_refused(lover):
    requests = [lover.request(prefix="月月月", form="5x4"), lover.request(acrostic="花花花花", form="7x4"),
                lover.request(prefix="花月花月花，花月花月花。", form="5x8"), lover.request(prefix="花花", form="7x4")]
    a, b, c, d = lover.generate(requests, Sampling(), seed=1)
    assert a.text.startswith("月月月") and a.text.count("月") == 3
    # An acrostic's heads count before they are written: 花 comes four times, so the model writes none.
    assert [line[0] for line in forms.split_lines(b.text)] == list("花花花花") and b.text.count("花") == 4
    assert c.text.startswith("花月花月花，花月花月花。")  # a repeated line in the prefix stays
    assert repetitions(c.text[12:], forms.FORMS["5x8"]) == ([], [])
    assert d.text.startswith("花花") and d.text.count("花") == 2 and repetitions(d.text, forms.FORMS["7x4"]) == ([], [])


def test_the_mask_gives_way_where_nothing_else_is_left(lover):
    """Where the other masks leave only refused tokens, the repetition rule gives way for that step:
    a poem is still written, well formed, with finite scores - never an all-masked row."""
    # 发花 has one character in this vocabulary, 花, and the prefix writes it twice: the last rhyme must
    # be a third 花.
    requests = [lover.request(prefix="花落知多少，白日依山花。", form="5x4", rhyme="modern"),
                lover.request(acrostic="月月月月", form="7x4"), lover.request(form="5x8"), lover.request(form="free")]
    for seed in range(3):
        a, *rest = lover.generate(requests, Sampling(), seed=seed, score=True)
        assert a.complete and a.text.endswith("花。") and a.text.count("花") == 3, a.text
        for p in (a, *rest):
            assert math.isfinite(p.logprob) and (p.form == "free" or p.complete), p.text


# Written by the loop before the repetition rules, --best-of and greedy by class (tiny_model(), seed 0):
# --allow-repeats (and, for greedy, the tutorial's argmax) must write them token for token.
OLD_REQUESTS = (dict(prefix="床前明月光"), dict(acrostic="深度学习"), dict(prefix="春", form="free"),
                dict(form="5x8", rhyme=True))
OLD_SAMPLED = ["床前明月光，花风落故床。明霜低何一，疑南莲层落。", "深月千南风依入，度少思低一目觉。学声处楼目觉好，习觉啼度乡一夜。",
               "春一叶一南鸟莲？前啼河鸟河，里少疑层、春月、风晓河望楼疑啼来，尽莲月疑低、可日层明春望，入知。何流光床度思晓风习觉河春床莲明觉！里风",
               "春前少莲江，前更低叶知。明莲河低上，夜山不习一。山一前少光，举不霜前雨。流一思何知，觉床楼深习。"]
OLD_GREEDY = ["床前明月光，不不不一一。处处处乡处，南南南南南。", "深处处处乡处处，度一一一处处处。学处处乡处处处，习一一一处处处。",
              "春？" + "南？" * 32, "南南南南南，南南南南南。" + "好南南南南，南南南南南。" * 3]


def test_allow_repeats_writes_the_poems_written_before():
    gen = Generator(tiny_model(), VOCAB, max_len=MAX_LEN)
    old = [gen.request(**kw, allow_repeats=True) for kw in OLD_REQUESTS]
    assert [p.text for p in gen.generate(old, Sampling(), seed=0)] == OLD_SAMPLED
    assert [p.text for p in gen.generate(old, Sampling(greedy=True, plain_argmax=True))] == OLD_GREEDY
    # With the rules (the default) the dull greedy poems change, and repeat nothing.
    new = [gen.request(**kw) for kw in OLD_REQUESTS]
    for p, r, was in zip(gen.generate(new, Sampling(greedy=True)), new, OLD_GREEDY):
        assert repetitions(p.text, r.form) == ([], []) and p.text != was


# ---- the CLI -------------------------------------------------------------------------------------

def test_cli_best_of_allow_repeats_and_logprob(tiny, tiny_export, capsys, monkeypatch):
    from rnnjax.poetry import checkpoint

    # The folder is real (the CLI reads its record); the model is `tiny`'s, so its compiled loops are reused.
    monkeypatch.setattr(checkpoint, "load_model", lambda path: (tiny[0], VOCAB, {}))
    main = _generate_main()
    args = ["--checkpoint", str(tiny_export), "--prefix", "床前", "--form", "5x4", "--num", "4", "--json",
            "--max-len", str(MAX_LEN), "--seed", "3"]
    runs = []
    for extra in (["--best-of", "4"], ["--best-of", "4"], ["--allow-repeats"]):
        main([*args, *extra])
        runs.append([json.loads(line) for line in capsys.readouterr().out.splitlines()])
    assert runs[0] == runs[1] and len(runs[0]) == 4  # deterministic per seed
    for run in runs:
        assert all(isinstance(p["logprob"], float) and p["logprob"] < 0 for p in run)
    gen = tiny[1]
    want = gen.generate([gen.request(prefix="床前", form="5x4")] * 4, Sampling(best_of=4), seed=3)
    assert [p["text"] for p in runs[0]] == [p.text for p in want]
    for bad, match in ((["--best-of", "2", "--greedy"], "needs sampling"), (["--best-of", "0"], "between 1 and 64"),
                       (["--best-of", "x"], "not an integer")):
        with pytest.raises(SystemExit) as e:
            main([*args, *bad])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and err[-1].startswith("error: ") and match in err[-1], err
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--best-of N" in help_text and "--allow-repeats" in help_text and "mean log-probability" in help_text


# ---- a batch decoded in parts, one thread each ----------------------------------------------------

@pytest.mark.parametrize("sampling", [Sampling(), Sampling(greedy=True), Sampling(best_of=2, top_k=5)],
                         ids=["sampled", "greedy", "best-of"])
def test_a_batch_split_across_threads_writes_the_same_poems(tiny, sampling):
    """Each row's tokens depend on its own inputs and key: 1, 2 or 4 parts give the same poems."""
    _, gen = tiny
    reqs = [gen.request(prefix="春", form="5x4"), gen.request(form="free"), gen.request(acrostic="春风", form="auto"),
            gen.request(form="7x4")]
    out = {}
    try:
        for parts in (1, 2, 4):
            gen.threads = parts
            d = gen.decode(reqs, sampling, seed=5, score=True)
            out[parts] = (d.ids, d.logprob)
    finally:
        gen.threads = None
    assert len({tuple(map(tuple, ids)) for ids, _ in out.values()}) == 1
    # Scores agree to rounding: XLA:CPU sums a one-row output matmul (4 parts of one row) in another
    # order than a matrix one, about 1e-7 of a logit (two and more rows gave the same bits).
    np.testing.assert_array_equal(out[1][1], out[2][1])
    np.testing.assert_allclose(out[1][1], out[4][1], rtol=1e-6)


@pytest.mark.parametrize("cores,poems,best_of,parts", [
    (2, 256, 1, 2), (2, 64, 1, 2), (2, 63, 1, 1), (2, 65, 1, 1), (1, 256, 1, 1), (8, 256, 1, 8),
    (8, 96, 1, 3), (8, 4, 16, 2), (2, 1, 64, 1), (64, 1024, 1, g.MAX_PARTS)])
def test_decode_parts(monkeypatch, cores, poems, best_of, parts):
    """Equal parts of at least MIN_PART_ROWS rows, no more than the cores, on a CPU only."""
    monkeypatch.setattr(g.os, "cpu_count", lambda: cores)
    assert g.decode_parts(poems, best_of) == parts
    monkeypatch.setattr(g.jax, "default_backend", lambda: "gpu")
    assert g.decode_parts(poems, best_of) == 1


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_the_loops_recurrent_step_is_the_models(cell):
    """`stack_step` from a row of `input_table` computes what `model.rnn` computes on the token's
    embedding, state and output (float32: the same sums but for the order of the first matmul's);
    with a bfloat16 h, h stays bfloat16 and an LSTM's c float32."""
    from rnnjax.poetry.model import PoetryModel

    model = PoetryModel(len(VOCAB), 8, 16, 2, cell=cell, rngs=nnx.Rngs(3))
    tokens = jnp.array([4, 9, 0, 17])
    rng = np.random.default_rng(0)
    h = jnp.asarray(rng.normal(size=(2, 4, 16)) * 0.5, jnp.float32)
    hx = (h, jnp.asarray(rng.normal(size=(2, 4, 16)), jnp.float32)) if cell == "lstm" else h
    want_y, want_hx = model.rnn(model.embeddings(tokens[None, :]), hx)
    table = decoding.input_table(model)
    assert table.shape == (len(VOCAB), {"lstm": 4, "gru": 3, "rnn": 1}[cell] * 16)
    got_y, got_hx = decoding.stack_step(model.rnn.config, model.rnn.params_dict(), table[tokens], hx)
    np.testing.assert_allclose(got_y, want_y[0], rtol=1e-5, atol=1e-6)
    for got, want in zip(jax.tree.leaves(got_hx), jax.tree.leaves(want_hx)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    half = jax.tree.map(lambda a: a.astype(jnp.bfloat16), hx) if cell != "lstm" else (h.astype(jnp.bfloat16), hx[1])
    y16, hx16 = decoding.stack_step(model.rnn.config, model.rnn.params_dict(), table[tokens], half)
    assert y16.dtype == jnp.bfloat16
    if cell == "lstm":
        assert hx16[0].dtype == jnp.bfloat16 and hx16[1].dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y16, np.float32), want_y[0], atol=3e-2)


def test_half_precision_samples_with_half_recurrent_matmuls_and_greedy_without(tiny):
    """Sampling in bfloat16 runs the recurrent matmuls in bfloat16 (it is a draw either way);
    greedy keeps them float32 (a rounded state flips near-ties and changes the rest of the poem)."""
    model, f32 = tiny
    bf16 = Generator(model, VOCAB, max_len=MAX_LEN, precision="bfloat16")
    assert bf16.recurrent_dtype(Sampling()) == "bfloat16"
    assert bf16.recurrent_dtype(Sampling(top_p=1.0)) == "bfloat16"
    assert bf16.recurrent_dtype(Sampling(greedy=True)) is None
    assert bf16.recurrent_dtype(Sampling(greedy=True, plain_argmax=True)) is None
    assert f32.recurrent_dtype(Sampling()) is None
    requests = [bf16.request(form="5x4")] * 4
    for sampling in (Sampling(), Sampling(greedy=True)):
        poems = bf16.generate(requests, sampling, seed=2)
        assert all(p.complete and [len(line) for line in p.lines] == [12, 12] for p in poems)


def test_full_distribution_draws_follow_the_softmax():
    """--top-p 1 samples the whole distribution (`decoding._draw`): over 40,000 draws from one row of
    300 logits at temperature 0.7, every token's count is within 4.5 standard deviations of
    softmax(logits / 0.7) times 40,000, the chi-square statistic is that of a fair sample, and the
    masked tokens (a third of them, the first and last token and two whole blocks among them) are
    never drawn. Blocks of 16 make the two-level sum cross 19 blocks, the last one padded."""
    rng = np.random.default_rng(0)
    v, n, t = 300, 40_000, 0.7
    logits = rng.normal(0, 1.5, v).astype(np.float32)
    masked = rng.random(v) < 0.3
    masked[[0, v - 1]] = True
    masked[32:64] = True
    logits[masked] = -np.inf
    keys = jax.random.split(jax.random.key(7), n)
    draws = np.asarray(jax.jit(decoding._draw, static_argnums=2)(keys, jnp.tile(logits / t, (n, 1)), 16))
    counts = np.bincount(draws, minlength=v)
    assert counts[masked].sum() == 0
    p = np.exp((logits - logits[~masked].max()) / t)
    p /= p.sum()
    expected = p * n
    sd = np.sqrt(expected * (1 - p))
    assert np.all(np.abs(counts - expected) <= 4.5 * sd + 1)
    live = expected >= 5
    chi2 = ((counts[live] - expected[live]) ** 2 / expected[live]).sum()
    dof = live.sum() - 1
    assert chi2 < dof + 5 * np.sqrt(2 * dof), (chi2, dof)


@pytest.mark.parametrize("block", [1, 7, 128])
def test_invert_mass_is_the_first_token_to_reach_u(block):
    """The inversion against numpy's `searchsorted` of the running mass, for u from the smallest
    (the first token with mass) to 1 (the last token with mass), on rows with zero-mass runs at
    the start, the end and inside, and a row with a single token of mass. Where the float32 running
    sums of the two ways could disagree (u within 1e-5 of a boundary), the draw is only checked to
    have mass."""
    rng = np.random.default_rng(block)
    b, v = 64, 250
    e = rng.random((b, v)).astype(np.float32) ** 4
    e[rng.random((b, v)) < 0.4] = 0
    e[:, :5] = 0
    e[:, -9:] = 0
    e[0] = 0
    e[0, 101] = 0.25
    u = rng.random(b).astype(np.float32)
    u[1], u[2], u[3] = 1.0, np.float32(1e-30), np.nextafter(np.float32(0), np.float32(1))
    got = np.asarray(decoding.invert_mass(jnp.asarray(e), jnp.asarray(u), block))
    cum = np.cumsum(e.astype(np.float64), axis=1)
    for r in range(b):
        assert e[r, got[r]] > 0, (r, got[r])
        frac = cum[r] / cum[r, -1]
        want = int(np.searchsorted(frac, u[r], side="left"))
        if np.min(np.abs(frac - u[r])) > 1e-5:
            assert got[r] == want, (r, got[r], want)
    assert got[0] == 101
    assert got[1] == np.flatnonzero(e[1])[-1] and got[2] == np.flatnonzero(e[2])[0]
