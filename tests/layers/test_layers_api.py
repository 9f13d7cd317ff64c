"""Shapes from the tutorial, state-dict interop, bad input, unroll, and the pure cells on their own."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import rnnjax
from rnnjax import cells

R = nnx.Rngs(0)


def shapes(result):
    out, h = result
    return [tuple(out.shape)] + ([tuple(t.shape) for t in h] if isinstance(h, tuple) else [tuple(h.shape)])


@pytest.mark.parametrize(
    "make, x_shape, expected",
    [
        (lambda: rnnjax.RNN(10, 20, rngs=R), (5, 3, 10), [(5, 3, 20), (1, 3, 20)]),
        (lambda: rnnjax.RNN(10, 20, bidirectional=True, rngs=R), (5, 3, 10), [(5, 3, 40), (2, 3, 20)]),
        (lambda: rnnjax.RNN(5, 10, 2, rngs=R), (4, 3, 5), [(4, 3, 10), (2, 3, 10)]),
        (lambda: rnnjax.LSTM(4, 3, 1, rngs=R), (3, 2, 4), [(3, 2, 3), (1, 2, 3), (1, 2, 3)]),
        (lambda: rnnjax.LSTM(4, 3, num_layers=2, rngs=R), (3, 2, 4), [(3, 2, 3), (2, 2, 3), (2, 2, 3)]),
        # batch_first changes input and output, never h_n; proj_size shrinks h, not c
        (lambda: rnnjax.GRU(4, 3, batch_first=True, rngs=R), (2, 7, 4), [(2, 7, 3), (1, 2, 3)]),
        (lambda: rnnjax.LSTM(4, 6, 2, proj_size=2, bidirectional=True, rngs=R), (3, 2, 4),
         [(3, 2, 4), (4, 2, 2), (4, 2, 6)]),
        (lambda: rnnjax.LSTM(4, 3, rngs=R), (5, 4), [(5, 3), (1, 3), (1, 3)]),  # unbatched
    ],
)
def test_tutorial_shapes(make, x_shape, expected):
    assert shapes(make()(jnp.zeros(x_shape))) == expected


@pytest.mark.parametrize(
    "tmod, jmod",
    [
        (lambda: torch.nn.LSTM(10, 20, num_layers=2, bidirectional=True, proj_size=5),
         lambda: rnnjax.LSTM(10, 20, num_layers=2, bidirectional=True, proj_size=5, rngs=R)),
        (lambda: torch.nn.GRU(3, 4, 3, bias=False), lambda: rnnjax.GRU(3, 4, 3, bias=False, rngs=R)),
        (lambda: torch.nn.RNN(3, 4, nonlinearity="relu"), lambda: rnnjax.RNN(3, 4, nonlinearity="relu", rngs=R)),
    ],
)
def test_state_dict_names_shapes_and_round_trip(tmod, jmod):
    t, j = tmod(), jmod()
    ours = j.torch_state_dict()
    theirs = t.state_dict()
    assert list(ours) == list(theirs)  # same keys in torch's order
    assert {k: v.shape for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    j.load_torch_state_dict(theirs)
    t2 = tmod()
    t2.load_state_dict({k: torch.from_numpy(v) for k, v in j.torch_state_dict().items()})
    for k, v in t2.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), theirs[k].numpy())


def test_init_is_torch_uniform():
    lstm = rnnjax.LSTM(50, 100, 2, rngs=nnx.Rngs(1))
    bound = 1 / np.sqrt(100)
    for name, v in lstm.torch_state_dict().items():
        assert v.dtype == np.float32
        assert np.abs(v).max() <= bound, name
        assert np.abs(v).max() > 0.9 * bound, name  # spread over the whole interval, not a narrower one
        assert abs(v.mean()) < 0.1 * bound, name
    a = rnnjax.LSTM(5, 7, rngs=nnx.Rngs(3)).torch_state_dict()
    b = rnnjax.LSTM(5, 7, rngs=nnx.Rngs(3)).torch_state_dict()
    c = rnnjax.LSTM(5, 7, rngs=nnx.Rngs(4)).torch_state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["weight_ih_l0"], c["weight_ih_l0"])


@pytest.mark.parametrize("cls", [rnnjax.LSTM, rnnjax.GRU])
def test_unroll_gives_same_result_and_gradients(cls):
    x = jax.random.normal(jax.random.key(0), (9, 2, 3))
    lengths = jnp.array([9, 5])
    a = cls(3, 4, 2, bidirectional=True, rngs=nnx.Rngs(0))
    b = cls(3, 4, 2, bidirectional=True, unroll=4, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(a(x)[0], b(x)[0], rtol=1e-6, atol=1e-7)

    def grads(module):  # under jit, as training takes them (and half the time of eager dispatch)
        graphdef, params = nnx.split(module)
        return jax.jit(jax.grad(lambda p, x: jnp.sum(nnx.merge(graphdef, p)(x, lengths=lengths)[0] ** 2),
                                argnums=(0, 1)))(params, x)

    for ga, gb in zip(jax.tree.leaves(grads(a)), jax.tree.leaves(grads(b))):
        np.testing.assert_allclose(ga, gb, rtol=1e-5, atol=1e-6)


def test_lengths_zero_output_past_end_and_state_at_last_step():
    gru = rnnjax.GRU(3, 4, rngs=R)
    x = jax.random.normal(jax.random.key(0), (6, 2, 3))
    out, h = gru(x, lengths=jnp.array([6, 3]))
    assert np.all(np.asarray(out[3:, 1]) == 0)
    short, h_short = gru(x[:3, 1:])
    np.testing.assert_allclose(out[:3, 1], short[:, 0], rtol=1e-6)
    np.testing.assert_allclose(h[:, 1], h_short[:, 0], rtol=1e-6)


def test_pure_cell_matches_layer_step():
    lstm = rnnjax.LSTM(3, 4, rngs=R)
    p = {k[:-3]: v for k, v in lstm.params_dict().items()}  # strip "_l0"
    x = jax.random.normal(jax.random.key(1), (1, 2, 3))
    carry = (jnp.zeros((2, 4)), jnp.zeros((2, 4)))
    (h, c), y = cells.lstm_cell(p, carry, x[0])
    out, (h_n, c_n) = lstm(x)
    np.testing.assert_allclose(y, out[0], rtol=1e-6)
    np.testing.assert_allclose(c, c_n[0], rtol=1e-6)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: rnnjax.LSTM(4, 3, rngs=R)(jnp.zeros((2, 3, 4, 5))), "Expected input to be 2D or 3D, got 4D"),
        (lambda: rnnjax.LSTM(4, 3, rngs=R)(jnp.zeros((2, 3, 7))), "input_size. Expected 4, got 7"),
        (lambda: rnnjax.GRU(4, 3, rngs=R)(jnp.zeros((0, 3, 4))), "sequence length to be larger than 0"),
        (lambda: rnnjax.LSTM(4, 3, batch_first=True, rngs=R)(jnp.zeros((3, 0, 4))), "larger than 0"),
        (lambda: rnnjax.GRU(4, 3, rngs=R)(jnp.zeros((2, 3, 4)), jnp.zeros((2, 3, 3))),
         r"Expected hidden size \(1, 3, 3\), got \(2, 3, 3\)"),
        (lambda: rnnjax.LSTM(4, 3, rngs=R)(jnp.zeros((2, 3, 4)), (jnp.zeros((1, 3, 3)), jnp.zeros((1, 2, 3)))),
         r"Expected hidden\[1\] size \(1, 3, 3\), got \(1, 2, 3\)"),
        (lambda: rnnjax.LSTM(4, 3, rngs=R)(jnp.zeros((2, 3, 4)), jnp.zeros((1, 3, 3))), "tuple"),
        (lambda: rnnjax.RNN(4, 3, rngs=R)(jnp.zeros((2, 4)), jnp.zeros((1, 1, 3))), "should also be 2-D"),
        (lambda: rnnjax.RNN(4, 3, rngs=R)(jnp.zeros((2, 3, 4)), lengths=[1, 2]), r"expected shape \(3,\)"),
        (lambda: rnnjax.RNN(4, 3, rngs=R)(jnp.zeros((2, 3, 4)), lengths=[1, 0, 3]), r"1..2.*\[0, 3\]"),
        (lambda: rnnjax.LSTM(4, 3, proj_size=3, rngs=R), "proj_size has to be smaller than hidden_size"),
        (lambda: rnnjax.LSTM(4, 3, proj_size=-1, rngs=R), "proj_size should be a non-negative"),
        (lambda: rnnjax.GRU(4, 3, proj_size=1, rngs=R), "only supported for LSTM"),
        (lambda: rnnjax.LSTM(4, 3, dropout=1.0, rngs=R), r"dropout should be a number in range \[0, 1\)"),
        (lambda: rnnjax.LSTM(4, 3, dropout=-0.1, rngs=R), "dropout"),
        (lambda: rnnjax.RNN(4, 3, nonlinearity="sigmoid", rngs=R), "Unknown nonlinearity 'sigmoid'"),
        (lambda: rnnjax.RNN(0, 3, rngs=R), "input_size must be a positive integer"),
        (lambda: rnnjax.RNN(4, 3, num_layers=0, rngs=R), "num_layers must be a positive integer"),
        # integer input would have the weights cast to integers (torch refuses it too)
        (lambda: rnnjax.LSTM(4, 3, rngs=R)(jnp.ones((2, 3, 4), jnp.int32)),
         r"LSTM input dtype \(int32\) is not a floating-point type: convert it, e\.g\. input\.astype"),
        (lambda: rnnjax.GRU(4, 3, rngs=R)(jnp.ones((2, 3, 4)), jnp.ones((1, 3, 3), bool)),
         r"GRU hx dtype \(bool\) is not a floating-point type"),
        (lambda: rnnjax.LSTM(4, 3, rngs=R)(jnp.ones((2, 3, 4)), (jnp.ones((1, 3, 3)), jnp.ones((1, 3, 3), int))),
         r"LSTM hx\[1\] dtype \(int32\) is not a floating-point type"),
    ],
)
def test_bad_input_names_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_bad_state_dict_is_rejected_whole():
    lstm = rnnjax.LSTM(4, 3, rngs=R)
    before = lstm.torch_state_dict()
    good = torch.nn.LSTM(4, 3).state_dict()

    missing = dict(good)
    missing.pop("bias_hh_l0")
    with pytest.raises(ValueError, match=r"missing key\(s\) \['bias_hh_l0'\]"):
        lstm.load_torch_state_dict(missing)

    extra = dict(good, weight_hr_l0=torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"unexpected key\(s\) \['weight_hr_l0'\]"):
        lstm.load_torch_state_dict(extra)

    # The wrong shape is the *last* key: earlier keys must not have been copied.
    wrong = dict(good, bias_hh_l0=torch.zeros(5))
    with pytest.raises(ValueError, match=r"bias_hh_l0.*\(5,\).*\(12,\)"):
        lstm.load_torch_state_dict(wrong)
    for k, v in lstm.torch_state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_import_does_not_need_torch():
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None; import rnnjax, numpy as np; from flax import nnx\n"
            "m = rnnjax.LSTM(2, 3, rngs=nnx.Rngs(0)); m.load_torch_state_dict(m.torch_state_dict()); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize("make", [lambda: rnnjax.LSTM(3, 4, 2, bidirectional=True, rngs=R),
                                  lambda: rnnjax.GRU(3, 4, 2, rngs=R),
                                  lambda: rnnjax.RNN(3, 4, nonlinearity="relu", rngs=R)])
def test_one_step_path_matches_torch(make):
    """T == 1 skips lax.scan (decoding speed); it must still be torch's step, with hx and lengths."""
    mod = make()
    name = type(mod).__name__
    kw = dict(num_layers=mod.num_layers, bidirectional=mod.bidirectional)
    if name == "RNN":
        kw["nonlinearity"] = "relu"
    t = getattr(torch.nn, name)(3, 4, **kw)
    mod.load_torch_state_dict(t.state_dict())
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, 3)).astype(np.float32)
    h = rng.standard_normal((mod.num_layers * (2 if mod.bidirectional else 1), 2, 4)).astype(np.float32)
    hx = (h, h * 0.5) if name == "LSTM" else h
    t_hx = tuple(torch.tensor(a) for a in hx) if name == "LSTM" else torch.tensor(hx)
    t_out, t_h = t(torch.tensor(x), t_hx)
    out, hn = mod(x, hx, lengths=jnp.array([1, 1]))
    np.testing.assert_allclose(out, t_out.detach().numpy(), rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(hn), t_h if isinstance(t_h, tuple) else (t_h,)):
        np.testing.assert_allclose(a, b.detach().numpy(), rtol=1e-5, atol=1e-6)
