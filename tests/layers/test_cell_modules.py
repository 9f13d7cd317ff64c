"""rnnjax.RNNCell / LSTMCell / GRUCell against torch.nn's cells: values and gradients on randomized
configurations (float32 and float64), state dicts, torch's checks and errors, jit / grad / vmap / scan."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st
from test_parity import rel_err

import rnnjax

KINDS = ["rnn_tanh", "rnn_relu", "lstm", "gru"]


def build(kind, input_size, hidden_size, bias=True, dtype=np.float32):
    """(torch cell, rnnjax cell) of one kind, the rnnjax one holding the torch one's weights."""
    args = (input_size, hidden_size, bias)
    jkw = dict(param_dtype=dtype, rngs=nnx.Rngs(0))
    if kind.startswith("rnn"):
        nl = kind.split("_")[1]
        t, j = torch.nn.RNNCell(*args, nonlinearity=nl), rnnjax.RNNCell(*args, nonlinearity=nl, **jkw)
    elif kind == "lstm":
        t, j = torch.nn.LSTMCell(*args), rnnjax.LSTMCell(*args, **jkw)
    else:
        t, j = torch.nn.GRUCell(*args), rnnjax.GRUCell(*args, **jkw)
    t = t.to(getattr(torch, np.dtype(dtype).name))
    j.load_torch_state_dict(t.state_dict())
    return t, j


@st.composite
def configs(draw):
    return dict(kind=draw(st.sampled_from(KINDS)), input_size=draw(st.integers(1, 6)),
                hidden_size=draw(st.integers(1, 7)), bias=draw(st.booleans()), unbatched=draw(st.booleans()),
                with_hx=draw(st.booleans()), batch=draw(st.integers(1, 4)), seed=draw(st.integers(0, 2**16)))


def check_parity(cfg, dtype, value_tol, grad_tol):
    """One step on random input and state; the outputs, and the gradients of a random linear function
    of them with respect to the input, the state and every parameter, against torch's autograd."""
    torch.manual_seed(cfg["seed"])
    kind, hidden = cfg["kind"], cfg["hidden_size"]
    tcell, jcell = build(kind, cfg["input_size"], hidden, cfg["bias"], dtype)
    rng = np.random.default_rng(cfg["seed"])
    lead = () if cfg["unbatched"] else (cfg["batch"],)
    x = rng.standard_normal((*lead, cfg["input_size"])).astype(dtype)
    n_states = 2 if kind == "lstm" else 1
    hs = tuple(rng.standard_normal((*lead, hidden)).astype(dtype) for _ in range(n_states)) if cfg["with_hx"] else None
    cots = [rng.standard_normal((*lead, hidden)).astype(dtype) for _ in range(n_states)]

    t_x = torch.tensor(x, requires_grad=True)
    t_hs = None if hs is None else tuple(torch.tensor(h, requires_grad=True) for h in hs)
    t_out = tcell(t_x, None if t_hs is None else (t_hs if kind == "lstm" else t_hs[0]))
    t_outs = t_out if kind == "lstm" else (t_out,)
    sum((o * torch.tensor(c)).sum() for o, c in zip(t_outs, cots)).backward()

    graphdef, _ = nnx.split(jcell)

    def j_loss(params, x, hs):
        cell = nnx.merge(graphdef, nnx.State({k: nnx.Param(v) for k, v in params.items()}))
        out = cell(x, None if hs is None else (hs if kind == "lstm" else hs[0]))
        outs = out if kind == "lstm" else (out,)
        return sum((o * c).sum() for o, c in zip(outs, cots)), outs

    (_, j_outs), (g_params, g_x, g_hs) = jax.jit(jax.value_and_grad(j_loss, argnums=(0, 1, 2), has_aux=True))(
        jcell.params_dict(), x, hs)
    for t, j in zip(t_outs, j_outs):
        assert j.dtype == dtype and j.shape == tuple(t.shape)
        assert rel_err(j, t.detach().numpy()) <= value_tol
    assert rel_err(g_x, t_x.grad.numpy()) <= grad_tol, "grad x"
    if hs is not None:
        for t, j in zip(t_hs, g_hs):
            assert rel_err(j, t.grad.numpy()) <= grad_tol, "grad hx"
    names = [name for name, _ in tcell.named_parameters()]
    assert sorted(names) == sorted(g_params)
    for name, p in tcell.named_parameters():
        assert rel_err(g_params[name], p.grad.numpy()) <= grad_tol, f"grad {name}"


@settings(max_examples=40)
@given(configs())
def test_cell_parity_float32(cfg):
    check_parity(cfg, np.float32, value_tol=1e-5, grad_tol=1e-4)


@settings(max_examples=20)
@given(configs())
def test_cell_parity_float64(cfg):
    with jax.enable_x64(True):
        check_parity(cfg, np.float64, value_tol=1e-10, grad_tol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_round_trip_and_initialisation(kind):
    """torch's keys, shapes and bias switch; export -> torch -> export is the identity; a fresh cell
    is initialised in torch's range U(-1/sqrt(H), 1/sqrt(H))."""
    for bias in (True, False):
        tcell, jcell = build(kind, 3, 5, bias)
        sd = jcell.torch_state_dict()
        assert list(sd) == list(tcell.state_dict())
        assert all(sd[k].shape == tuple(v.shape) for k, v in tcell.state_dict().items())
        again = build(kind, 3, 5, bias)[0]
        again.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
        assert all(torch.equal(again.state_dict()[k], tcell.state_dict()[k]) for k in sd)
    # A fresh cell: torch's distribution (its values are torch's RNG's, so only the range is compared).
    cell = {"rnn_tanh": rnnjax.RNNCell, "rnn_relu": rnnjax.RNNCell, "lstm": rnnjax.LSTMCell,
            "gru": rnnjax.GRUCell}[kind](3, 400, rngs=nnx.Rngs(1))
    values = np.concatenate([v.ravel() for v in cell.torch_state_dict().values()])
    assert 0.049 < np.abs(values).max() <= 1 / 20 and abs(values.mean()) < 1e-3


def test_state_dict_is_strict_and_all_or_nothing():
    tcell, jcell = build("lstm", 3, 5)
    before = jcell.torch_state_dict()
    bad = {k: v for k, v in tcell.state_dict().items() if k != "bias_hh"}
    with pytest.raises(ValueError, match=r"LSTMCell: missing key\(s\) \['bias_hh'\]"):
        jcell.load_torch_state_dict(bad)
    wrong = dict(tcell.state_dict(), weight_ih=torch.zeros(20, 4))
    with pytest.raises(ValueError, match="size mismatch for weight_ih"):
        jcell.load_torch_state_dict(wrong)
    layer_keys = torch.nn.LSTM(3, 5).state_dict()  # a layer's keys carry _l0: not a cell's
    with pytest.raises(ValueError, match="unexpected key"):
        jcell.load_torch_state_dict(layer_keys)
    assert all(np.array_equal(before[k], v) for k, v in jcell.torch_state_dict().items())


def _torch_error(fn):
    try:
        fn()
    except (RuntimeError, ValueError) as e:
        return str(e).splitlines()[0]
    raise AssertionError("torch accepted it")


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_bad_inputs_fail_in_torchs_words(kind):
    """Every check torch's cells make, with torch's message (a ValueError here, where torch's
    ATen checks raise RuntimeError)."""
    tcell, jcell = build(kind, 10, 20)
    lstm = kind == "lstm"

    def state(*shape):
        return (np.ones(shape, np.float32), np.ones(shape, np.float32)) if lstm else np.ones(shape, np.float32)

    def t_state(*shape):
        return (torch.ones(shape), torch.ones(shape)) if lstm else torch.ones(shape)

    cases = [((3, 7), None), ((3, 10), (2, 20)), ((3, 10), (3, 21)), ((2, 3, 10), None), ((3, 10), (1, 3, 20))]
    for x_shape, h_shape in cases:
        expected = _torch_error(lambda: tcell(torch.ones(x_shape), None if h_shape is None else t_state(*h_shape)))
        with pytest.raises(ValueError) as e:
            jcell(np.ones(x_shape, np.float32), None if h_shape is None else state(*h_shape))
        assert str(e.value) == expected
    if lstm:  # the second state is checked as well
        expected = _torch_error(lambda: tcell(torch.ones(3, 10), (torch.ones(3, 20), torch.ones(2, 20))))
        with pytest.raises(ValueError) as e:
            jcell(np.ones((3, 10), np.float32), (np.ones((3, 20), np.float32), np.ones((2, 20), np.float32)))
        assert str(e.value) == expected == "Input batch size 3 doesn't match hidden1 batch size 2"


def test_errors_torch_words_badly_are_plain_here():
    """Where torch's message misleads (a batched state with an unbatched input, the wrong kind of
    state) or torch fails late (an unknown nonlinearity, at the first call), the error says what is
    wrong, at once."""
    _, lstm = build("lstm", 10, 20)
    with pytest.raises(ValueError, match=r"LSTMCell: Expected hx\[0\] to be 1D like the input \(unbatched\), got 2D"):
        lstm(np.ones(10, np.float32), (np.ones((3, 20), np.float32), np.ones((3, 20), np.float32)))
    with pytest.raises(ValueError, match=r"LSTMCell expects hx as a tuple \(h_0, c_0\)"):
        lstm(np.ones((3, 10), np.float32), np.ones((3, 20), np.float32))
    _, gru = build("gru", 10, 20)
    with pytest.raises(ValueError, match="GRUCell: Expected hidden to be 2D like the input \\(batched\\), got 1D"):
        gru(np.ones((3, 10), np.float32), np.ones(20, np.float32))
    with pytest.raises(ValueError, match="GRUCell expects hx as a single array h_0, not a tuple"):
        gru(np.ones((3, 10), np.float32), (np.ones((3, 20), np.float32),))
    with pytest.raises(ValueError, match=r"GRUCell input dtype \(int32\) is not a floating-point type"):
        gru(np.ones((3, 10), np.int32))  # torch: "mat1 and mat2 must have the same dtype"
    with pytest.raises(ValueError, match=r"LSTMCell hx\[1\] dtype \(int32\) is not a floating-point type"):
        lstm(np.ones((3, 10), np.float32), (np.ones((3, 20), np.float32), np.ones((3, 20), np.int32)))
    with pytest.raises(ValueError, match="Unknown nonlinearity 'gelu'. Select from 'tanh' or 'relu'."):
        rnnjax.RNNCell(10, 20, nonlinearity="gelu", rngs=nnx.Rngs(0))
    for size in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="hidden_size must be a positive integer"):
            rnnjax.GRUCell(10, size, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("kind", KINDS)
def test_cell_in_jit_vmap_and_scan_equals_the_layer(kind):
    """The cell under nnx.jit, jax.vmap (unbatched rows) and lax.scan over time gives what the torch
    cell gives step by step and what the one-layer rnnjax layer with the same weights gives."""
    tcell, jcell = build(kind, 3, 4)
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((6, 2, 3)).astype(np.float32)
    lstm = kind == "lstm"
    zeros = np.zeros((2, 4), np.float32)
    carry0 = (zeros, zeros) if lstm else zeros

    t_h, expected = None, []
    for x in xs:
        t_h = tcell(torch.tensor(x), t_h)
        expected.append((t_h[0] if lstm else t_h).detach().numpy())
    expected = np.stack(expected)

    step = nnx.jit(lambda cell, x, h: cell(x, h))
    one = step(jcell, xs[0], carry0)
    assert rel_err(one[0] if lstm else one, expected[0]) <= 1e-5
    rows = jax.vmap(lambda x: jcell(x), in_axes=0)(xs[0])  # each row unbatched
    assert rel_err(rows[0] if lstm else rows, expected[0]) <= 1e-5

    def body(carry, x):
        out = jcell(x, carry)
        return out, (out[0] if lstm else out)

    _, ys = jax.lax.scan(body, carry0, xs)
    assert rel_err(ys, expected) <= 1e-5

    layer_cls = {"lstm": rnnjax.LSTM, "gru": rnnjax.GRU}.get(kind)
    layer = (layer_cls(3, 4, rngs=nnx.Rngs(0)) if layer_cls
             else rnnjax.RNN(3, 4, nonlinearity=kind.split("_")[1], rngs=nnx.Rngs(0)))
    layer.load_torch_state_dict({f"{k}_l0": v for k, v in jcell.torch_state_dict().items()})
    assert rel_err(layer(xs)[0], ys) <= 1e-6


def test_bfloat16_input_keeps_the_cell_state_float32():
    """As in the layers: a bfloat16 input computes its matmuls in bfloat16 and h comes back in
    bfloat16, while the default c is float32 and stays so; the step is float32's within bfloat16's
    rounding."""
    _, cell = build("lstm", 8, 16)
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    h, c = cell(jnp.asarray(x, jnp.bfloat16))
    h32, c32 = cell(x)
    assert h.dtype == jnp.bfloat16 and c.dtype == jnp.float32
    assert rel_err(c, c32) < 2e-2 and rel_err(h.astype(jnp.float32), h32) < 2e-2
