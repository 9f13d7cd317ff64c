"""rnnjax against torch on randomized configurations: values and gradients, float32 and float64."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnjax

MODES = ["rnn_tanh", "rnn_relu", "lstm", "gru"]


@st.composite
def configs(draw):
    mode = draw(st.sampled_from(MODES))
    hidden = draw(st.integers(2, 6))
    cfg = dict(
        mode=mode,
        input_size=draw(st.integers(1, 5)),
        hidden_size=hidden,
        num_layers=draw(st.integers(1, 3)),
        bidirectional=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        bias=draw(st.booleans()),
        proj_size=draw(st.integers(0, hidden - 1)) if mode == "lstm" else 0,
        unbatched=draw(st.booleans()),
        with_hx=draw(st.booleans()),
        steps=draw(st.integers(1, 6)),
        batch=draw(st.integers(1, 4)),
        seed=draw(st.integers(0, 2**16)),
    )
    # torch packs only batched input
    cfg["with_lengths"] = (not cfg["unbatched"]) and draw(st.booleans())
    return cfg


def build(cfg, dtype=np.float32):
    kw = dict(num_layers=cfg["num_layers"], bias=cfg["bias"], batch_first=cfg["batch_first"],
              bidirectional=cfg["bidirectional"])
    jkw = dict(kw, param_dtype=dtype)
    args = (cfg["input_size"], cfg["hidden_size"])
    mode = cfg["mode"]
    if mode.startswith("rnn"):
        nl = mode.split("_")[1]
        return torch.nn.RNN(*args, nonlinearity=nl, **kw), rnnjax.RNN(*args, nonlinearity=nl, rngs=nnx.Rngs(0), **jkw)
    if mode == "lstm":
        return (torch.nn.LSTM(*args, proj_size=cfg["proj_size"], **kw),
                rnnjax.LSTM(*args, proj_size=cfg["proj_size"], rngs=nnx.Rngs(0), **jkw))
    return torch.nn.GRU(*args, **kw), rnnjax.GRU(*args, rngs=nnx.Rngs(0), **jkw)


def make_inputs(cfg, dtype):
    rng = np.random.default_rng(cfg["seed"])
    T, B, I = cfg["steps"], cfg["batch"], cfg["input_size"]
    D = 2 if cfg["bidirectional"] else 1
    nd = cfg["num_layers"] * D
    h_out = cfg["proj_size"] or cfg["hidden_size"]
    if cfg["unbatched"]:
        x_shape, h_shape, c_shape = (T, I), (nd, h_out), (nd, cfg["hidden_size"])
    else:
        x_shape = (B, T, I) if cfg["batch_first"] else (T, B, I)
        h_shape, c_shape = (nd, B, h_out), (nd, B, cfg["hidden_size"])
    x = rng.standard_normal(x_shape).astype(dtype)
    hx = None
    if cfg["with_hx"]:
        h = rng.standard_normal(h_shape).astype(dtype)
        hx = (h, rng.standard_normal(c_shape).astype(dtype)) if cfg["mode"] == "lstm" else h
    lengths = rng.integers(1, T + 1, size=B) if cfg["with_lengths"] else None
    return x, hx, lengths


def torch_forward(tmod, cfg, x, hx, lengths):
    if lengths is None:
        return tmod(x, hx)
    packed = pack_padded_sequence(x, torch.as_tensor(lengths), batch_first=cfg["batch_first"], enforce_sorted=False)
    out, h = tmod(packed, hx)
    T = x.shape[1] if cfg["batch_first"] else x.shape[0]
    out, _ = pad_packed_sequence(out, batch_first=cfg["batch_first"], total_length=T)
    return out, h


def flat(out_h):
    out, h = out_h
    return [out, *h] if isinstance(h, tuple) else [out, h]


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-30) if a.size else 0.0


def check_parity(cfg, dtype, value_tol, grad_tol):
    torch.manual_seed(cfg["seed"])
    tmod, jmod = build(cfg, dtype)
    tmod = tmod.to(getattr(torch, np.dtype(dtype).name))
    jmod.load_torch_state_dict(tmod.state_dict())
    x, hx, lengths = make_inputs(cfg, dtype)

    # Random cotangents make every output element matter to the gradient.
    t_x = torch.tensor(x, requires_grad=True)
    t_hx = None if hx is None else (tuple(torch.tensor(h, requires_grad=True) for h in hx)
                                    if isinstance(hx, tuple) else torch.tensor(hx, requires_grad=True))
    t_outs = flat(torch_forward(tmod, cfg, t_x, t_hx, lengths))
    rng = np.random.default_rng(cfg["seed"] + 1)
    cot = [rng.standard_normal(tuple(o.shape)).astype(dtype) for o in t_outs]
    loss = sum((o * torch.tensor(c)).sum() for o, c in zip(t_outs, cot))
    loss.backward()

    params = jmod.params_dict()

    def j_loss(params, x, hx):
        outs = flat(rnnjax.recurrent.apply(jmod.config, params, x, hx, lengths=lengths))
        return sum((o * c).sum() for o, c in zip(outs, cot)), outs

    (_, j_outs), grads = jax.jit(jax.value_and_grad(j_loss, argnums=(0, 1, 2), has_aux=True))(params, x, hx)
    assert len(j_outs) == len(t_outs)
    for name, t, j in zip(["output", "h_n", "c_n"], t_outs, j_outs):
        assert j.dtype == dtype
        assert rel_err(j, t.detach().numpy()) <= value_tol, name
    g_params, g_x, g_hx = grads
    assert rel_err(g_x, t_x.grad.numpy()) <= grad_tol, "grad x"
    if hx is not None:
        t_hxs = t_hx if isinstance(t_hx, tuple) else (t_hx,)
        j_hxs = g_hx if isinstance(g_hx, tuple) else (g_hx,)
        for t, j in zip(t_hxs, j_hxs):
            assert rel_err(j, t.grad.numpy()) <= grad_tol, "grad hx"
    for name, p in tmod.named_parameters():
        assert rel_err(g_params[name], p.grad.numpy()) <= grad_tol, f"grad {name}"


@settings(max_examples=30)
@given(configs())
def test_parity_float32(cfg):
    check_parity(cfg, np.float32, value_tol=1e-5, grad_tol=1e-4)


@settings(max_examples=15)
@given(configs())
def test_parity_float64(cfg):
    with jax.enable_x64(True):
        check_parity(cfg, np.float64, value_tol=1e-10, grad_tol=1e-10)


@pytest.mark.parametrize("mode", MODES)
def test_parity_under_jit_and_vmap(mode):
    """The module works inside jax.jit and jax.vmap (over a batch of independent sequences)."""
    cfg = dict(mode=mode, input_size=3, hidden_size=4, num_layers=2, bidirectional=True, batch_first=False,
               bias=True, proj_size=2 if mode == "lstm" else 0)
    torch.manual_seed(0)
    tmod, jmod = build(cfg)
    jmod.load_torch_state_dict(tmod.state_dict())
    x = np.random.default_rng(0).standard_normal((5, 3, 3)).astype(np.float32)
    expected = [t.detach().numpy() for t in flat(tmod(torch.tensor(x)))]

    got = flat(nnx.jit(lambda m, x: m(x))(jmod, x))
    for e, g in zip(expected, got):
        assert rel_err(g, e) <= 1e-5

    # vmap over the batch axis with unbatched inputs: output (T, I) per sequence, h (L*D, H)
    out_v = jax.vmap(lambda xb: flat(jmod(xb)), in_axes=1, out_axes=1)(x)
    for e, g in zip(expected, out_v):
        assert rel_err(g, e) <= 1e-5


def test_dropout_between_layers_only_in_training():
    lstm = rnnjax.LSTM(3, 4, num_layers=2, dropout=0.5, rngs=nnx.Rngs(0))
    x = jnp.ones((5, 2, 3))
    a, _ = lstm(x)
    b, _ = lstm(x)
    assert not np.allclose(a, b), "training mode draws a fresh dropout mask each call"
    lstm.eval()
    c, _ = lstm(x)
    d, _ = lstm(x)
    np.testing.assert_array_equal(c, d)
    # eval output equals the dropout-free stack with the same weights
    ref = rnnjax.LSTM(3, 4, num_layers=2, rngs=nnx.Rngs(0))
    ref.load_torch_state_dict(lstm.torch_state_dict())
    np.testing.assert_array_equal(ref(x)[0], c)
    # the first layer's input is never dropped: a 1-layer stack ignores dropout
    one = rnnjax.LSTM(3, 4, num_layers=1, dropout=0.5, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(one(x)[0], one(x)[0])


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_hand_written_backward(mode, bias):
    """The custom VJPs (LSTM without projection, GRU, Elman RNN) on every path they have: both directions,
    with lengths (masked steps, h_prev saved) and without (h_prev taken from the outputs), hx, layers."""
    cfg = dict(mode=mode, input_size=3, hidden_size=5, num_layers=2, bidirectional=True, batch_first=True,
               bias=bias, proj_size=0, unbatched=False, with_hx=True, steps=6, batch=4, seed=7,
               with_lengths=True)
    with jax.enable_x64(True):
        check_parity(cfg, np.float64, value_tol=1e-10, grad_tol=1e-10)
        check_parity(dict(cfg, with_lengths=False), np.float64, value_tol=1e-10, grad_tol=1e-10)
    check_parity(dict(cfg, with_lengths=False, with_hx=False), np.float32, value_tol=1e-5, grad_tol=1e-4)
