"""Mixed precision in the app: bfloat16 training that learns like float32, resuming in the other
precision from float32 checkpoints, and generation with bfloat16 weights."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import train as train_cli
from rnnjax.poetry.checkpoint import load_model
from rnnjax.poetry.cli import config_from_args
from rnnjax.poetry.config import TrainConfig
from rnnjax.poetry.errors import UserError
from rnnjax.poetry.generation import Generator, Sampling
from rnnjax.poetry.hardware import auto_precision, cpu_flags, native_bfloat16
from rnnjax.poetry.training import train

TINY = dict(embedding_dim=8, hidden_dim=16, batch_size=8, sample_every=0, log_every=1, quiet=True,
            progress=False, val_fraction=0.0, lr=2e-2, schedule="constant", warmup_steps=0)


def _losses(ckpt_dir):
    lines = (ckpt_dir / "metrics.jsonl").read_text().splitlines()
    return np.array([json.loads(line)["loss"] for line in lines])


def test_bfloat16_training_falls_like_float32(tiny_corpus, tmp_path):
    """Same seed, same batches, 100 steps. The first loss differs only by rounding (the same
    initial parameters; the logits move by a few 2^-8 of their size, so the loss, ~ln(vocab), by
    well under 1%); from there the runs part slowly, each step's gradient differing by ~2^-8
    relative, which Adam's per-parameter scaling does not amplify (measured: at most 6% apart at
    any step). Both must fall from ~4.4 to the memorised corpus (< 0.6 over the last 10 steps),
    within 0.1 of each other there and within 20% of each other at every step."""
    runs = {}
    for precision in ("float32", "bfloat16"):
        train(data=tiny_corpus, checkpoint_dir=tmp_path / precision, max_steps=100, save_every=0,
              precision=precision, **TINY)
        runs[precision] = _losses(tmp_path / precision)
    f32, bf16 = runs["float32"], runs["bfloat16"]
    assert len(f32) == len(bf16) == 100
    assert abs(bf16[0] - f32[0]) <= 0.01 * f32[0]
    assert f32[0] > 3.5 and bf16[0] > 3.5
    assert f32[-10:].mean() < 0.6 and bf16[-10:].mean() < 0.6, (f32[-10:], bf16[-10:])
    assert abs(bf16[-10:].mean() - f32[-10:].mean()) < 0.1
    assert np.max(np.abs(bf16 - f32) / f32) < 0.2


def test_resume_in_float32_from_a_bfloat16_run(tiny_corpus, tmp_path):
    """Checkpoints hold float32 parameters whatever the precision, so a bfloat16 run resumes in
    float32 and goes on from where it stopped (its first loss is the bfloat16 run's next one, not
    the ~3.9 of a fresh start), and the switch is recorded."""
    kw = dict(TINY, data=tiny_corpus, checkpoint_dir=tmp_path, save_every=0)
    first = train(max_steps=20, precision="bfloat16", **kw)
    assert first.step == 20
    model, _, config = load_model(tmp_path)
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(model.torch_state_dict()))
    assert config["flags"]["precision"] == "bfloat16"
    resumed = train(max_steps=30, precision="float32", **kw)
    assert resumed.step == 30
    losses = _losses(tmp_path)
    # A fresh start would be back at ~4.4: the first float32 step goes on from the last bfloat16 one.
    assert len(losses) == 30 and losses[20] < 0.8 * losses[0], losses
    assert abs(losses[20] - losses[19]) < 0.1 * losses[19], losses
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["flags"]["precision"] == "float32"
    assert {"step": 20, "flag": "precision", "from": "bfloat16", "to": "float32"} in config["flag_changes"]
    model, _, _ = load_model(tmp_path)
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(model.torch_state_dict()))


def test_precision_flag(capsys):
    assert config_from_args(TrainConfig, train_cli.parse_args(["--precision", "bfloat16"])).precision == "bfloat16"
    assert config_from_args(TrainConfig, train_cli.parse_args([])).precision == "auto"
    with pytest.raises(SystemExit):
        train_cli.parse_args(["--precision", "float16"])
    with pytest.raises(UserError, match="--precision"):
        TrainConfig(precision="fp8")


class _Gpu:  # what auto_precision reads of a jax device
    platform = "gpu"

    def __init__(self, capability):
        self.compute_capability = capability


def test_auto_precision_is_bfloat16_only_on_native_bfloat16(tmp_path):
    """--precision auto: bfloat16 on the hardware that multiplies it (AVX512-BF16 or AMX on x86, a
    GPU of compute capability 8.0 on, a TPU), float32 on anything else or unknown, and float32 if
    any device of the run lacks it (every device runs the same program)."""
    avx2 = "fpu sse2 avx avx2 fma avx512f"  # AVX-512 without BF16 (Skylake-X, Zen 3 has none at all)
    assert auto_precision(["cpu"], cpu_flags_text=avx2) == "float32"
    assert auto_precision(["cpu"], cpu_flags_text=avx2 + " avx512_bf16") == "bfloat16"  # Zen 4, Cooper Lake
    assert auto_precision(["cpu"], cpu_flags_text=avx2 + " amx_bf16 amx_tile") == "bfloat16"
    assert auto_precision(["cpu"], cpu_flags_text="") == "float32"  # /proc/cpuinfo unreadable
    assert auto_precision([_Gpu("8.0"), _Gpu("9.0")]) == "bfloat16"
    assert auto_precision([_Gpu("7.5")]) == "float32"  # Turing: no bfloat16 tensor cores
    assert auto_precision([_Gpu(None)]) == "float32"
    assert auto_precision(["tpu", _Gpu("7.0")]) == "float32"
    assert auto_precision(["tpu"]) == "bfloat16"
    assert auto_precision([]) == "float32"
    assert not native_bfloat16("metal")
    # The flags line of x86 and the Features line of ARM; a missing file is no flags.
    (tmp_path / "x86").write_text("processor\t: 0\nflags\t\t: fpu avx512_bf16 amx_bf16\n\n")
    (tmp_path / "arm").write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert cpu_flags(tmp_path / "x86") == {"fpu", "avx512_bf16", "amx_bf16"}
    assert cpu_flags(tmp_path / "arm") == {"fp", "asimd", "bf16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_auto_precision_run_records_what_ran(tiny_corpus, tmp_path, monkeypatch, capsys):
    """A run with the default --precision auto trains in the precision the machine gets, says it,
    and config.json records that precision (not "auto"): a resume on the same machine changes
    nothing, and one on another machine is a said and recorded change, as with the flag."""
    import rnnjax.poetry.training as training

    for choice in ("bfloat16", "float32"):
        monkeypatch.setattr(training, "auto_precision", lambda devices, choice=choice: choice)
        folder = tmp_path / "run"
        train(data=tiny_corpus, checkpoint_dir=folder, max_steps=4 if choice == "bfloat16" else 6, save_every=0,
              **{**TINY, "quiet": False})
        config = json.loads((folder / "config.json").read_text())
        assert config["flags"]["precision"] == choice
        out = capsys.readouterr().out
        assert (f"{choice} mixed precision (--precision auto" if choice == "bfloat16"
                else "float32 (--precision auto: no native bfloat16 here)") in out
    assert config["flag_changes"] == [{"step": 4, "flag": "precision", "from": "bfloat16", "to": "float32"}]


def test_generator_casts_the_output_layer_once(tiny_checkpoint):
    model, vocab, _ = load_model(tiny_checkpoint)
    f32 = Generator(model, vocab, max_len=32)
    bf16 = Generator(model, vocab, max_len=32, precision="bfloat16")
    kernel, bias = model.linear1.kernel[...], model.linear1.bias[...]
    # The loop's output layer: the kernel as (V, H) rows in the precision, the bias float32.
    k16, b16 = bf16._out_layer
    assert k16.dtype == jnp.bfloat16 and k16.shape == kernel.T.shape and b16.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(k16, np.float32), np.asarray(kernel.T.astype(jnp.bfloat16), np.float32))
    k32, _ = f32._out_layer
    np.testing.assert_array_equal(np.asarray(k32), np.asarray(kernel).T)
    # Everything else stays float32, and the caller's model is untouched.
    assert {str(a.dtype) for a in jax.tree.leaves(bf16.params)} == {"float32"}
    assert model.linear1.kernel[...].dtype == jnp.float32 and model.linear1.bias[...].dtype == bias.dtype
    requests = [f32.request(prefix="床"), f32.request(form="5x4")]
    a = f32.generate_ids(requests, Sampling(greedy=True))
    b = bf16.generate_ids(requests, Sampling(greedy=True))
    c = Generator(model, vocab, max_len=32, precision="float16").generate_ids(requests, Sampling(greedy=True))
    assert a.shape == b.shape == c.shape and b.dtype == np.int32
    # One poem alone takes the one-row form of the output product (decoding.output_product).
    np.testing.assert_array_equal(bf16.generate_ids(requests[:1], Sampling(greedy=True))[0], b[0])
    with pytest.raises(UserError, match="--precision"):
        Generator(model, vocab, precision="int8")


def test_greedy_in_half_precision_re_decides_in_float32():
    """`_exact_best`: among the few likeliest allowed tokens of the chosen token's class, the one
    the float32 output layer scores highest; masked tokens and other classes never win."""
    from rnnjax.poetry.decoding import _exact_best

    klass = jnp.array([0, 0, 0, 0, 1, 2])  # four characters, a mark, <EOP>
    exact_logits = np.array([1.0, 1.2, 0.5, 3.0, 5.0, 6.0], np.float32)
    kernel = np.stack([exact_logits, np.zeros(6, np.float32)], axis=1)  # (V, H): logit = h . row with h = (1, 0)
    bias = jnp.zeros(6)
    rounded = jnp.array([[1.1, 1.0, 0.4, -jnp.inf, 4.0, 7.0],   # 0 and 1 swapped by rounding; 3 masked
                         [1.1, 1.0, 0.4, -jnp.inf, 4.0, 7.0],
                         [1.1, -jnp.inf, 0.4, -jnp.inf, 4.0, 7.0]])
    tok = jnp.array([0, 5, 0])  # greedy by class chose: go on, end, go on
    h = jnp.array([[1.0, 0.0]] * 3, jnp.bfloat16)
    got = _exact_best(rounded, tok, h, (jnp.asarray(kernel), bias), klass)
    assert got.tolist() == [1, 5, 0]


@pytest.mark.parametrize("rows", [1, 3])
def test_output_product_in_each_form(rows):
    """`output_product`: features times the (V, H) kernel transposed, operands in the kernel's dtype
    and float32 sums; one half-precision row takes the `kernel @ [h h]` form, more rows the row form."""
    from rnnjax.poetry.decoding import output_product

    rng = np.random.default_rng(rows)
    features = jnp.asarray(rng.standard_normal((rows, 64)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((300, 64)), jnp.float32)
    for dtype in (jnp.float32, jnp.bfloat16, jnp.float16):
        got = output_product(features, kernel.astype(dtype))
        f = np.asarray(features.astype(dtype), np.float64)
        want = f @ np.asarray(kernel.astype(dtype), np.float64).T  # the rounded operands, exact sums
        assert got.shape == (rows, 300) and got.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-4)

