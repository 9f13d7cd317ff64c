r"""bfloat16 (mixed precision) against the float32 path: each kernel and the fused loss, values and gradients.

Tolerances. bfloat16 keeps 8 significant bits: one rounding to nearest moves a value by at most
:math:`U = 2^{-8}` of itself, about :math:`2^{-9}` on average. The mixed path rounds the layer input
``x``, each weight and, at every step, the ``h`` that feeds the recurrent matmul; sums, gate math,
``c`` (LSTM) and ``h`` (GRU) stay float32. So each step's pre-activation carries 3-4 independent
roundings, whose relative errors (root mean square about :math:`0.4U` each) add in quadrature to
:math:`\approx 0.8U`; tanh and the sigmoid have slope at most 1, so ``h`` carries the same. Errors
of earlier steps come along through the recurrence, but at torch's initialisation
(:math:`\mathcal{U}(\pm 1/\sqrt{H})`) with unit-scale inputs the step map is contractive (spectral
radius :math:`\rho < 0.75` measured), so they add up as a geometric series, to at most
:math:`0.8U/\sqrt{1-\rho^2} \approx 1.2U`, however long the sequence (``T`` below is 9 and 10;
relative error norms were the same at 6 and 24 steps). Hence:

* outputs and final states: relative error norm :math:`\le 3U` (1.2%; measured :math:`\le 0.75U`);
* gradients: the backward adds the roundings of the gate gradients and of the weights in the
  recurrent, ``dx`` and ``dW`` matmuls (about :math:`0.7U` more) to the forward error carried by
  the saved activations: :math:`\le 4U` (1.6%; measured :math:`\le 0.95U`);
* ReLU gradients are the exception: :math:`[z > 0]` jumps, and a rounding that moves a
  pre-activation across 0 (a fraction :math:`\approx \varphi(0)\,\delta z/\sigma_z \sim U` of
  units) changes that unit's gradient by all of itself, so the error norm grows like
  :math:`\sqrt{U}` rather than :math:`U`: bound :math:`4\sqrt{U}` (25%; measured :math:`\le 8\%`).

A wrong gate, mask, bias, direction or a missing term gives errors of order 1 and fails these.
They cannot see one rounding more or less per step (that moves the error by a fraction of U), so
``test_kernel_rounds_where_documented`` and the second half of the loss test check the rounding
points themselves, against the same roundings done by hand: there the two sides differ only by
float32 arithmetic, 0.05U allows it, and one extra rounding (a bfloat16 matmul result, ``c`` kept
in bfloat16, rounded logits, a rounded ``dz`` in ``db``) fails.

The fused loss (``rnnjax.losses``): with ``h`` and ``W`` rounded, a logit :math:`z_{nv}` moves by at
most :math:`\delta_{nv} = 2U \sum_i |h_{ni} W_{iv}|` (first order), and a row's loss
:math:`\mathrm{lse}(z_n) - z_{n t_n}` by at most :math:`2 \max_v \delta_{nv}`: that bound is checked
for every row. Its gradients round ``dz`` once more for the matmuls: :math:`\le 4U` as above
(measured :math:`\le 1U`).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnnjax import cells, recurrent
from rnnjax.kernels.common import weight_grad
from rnnjax.losses import linear_cross_entropy

U = 2.0 ** -8  # bfloat16's unit roundoff
OUT_TOL, GRAD_TOL, RELU_GRAD_TOL = 3 * U, 4 * U, 4 * np.sqrt(U)


def rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def _layer(mode: str, bidirectional: bool, seed: int = 0):
    cfg = recurrent.Config(mode, input_size=24, hidden_size=32, bidirectional=bidirectional)
    keys = jax.random.split(jax.random.key(seed), 16)
    bound = 1 / np.sqrt(cfg.hidden_size)  # torch's initialisation
    params = {name: jax.random.uniform(k, shape, minval=-bound, maxval=bound)
              for k, (name, shape) in zip(keys, recurrent.param_shapes(cfg).items())}
    return cfg, params, keys[-1]


@pytest.mark.parametrize("masked", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"])
def test_kernel_forward_and_backward_match_float32(mode, masked):
    # The LSTM with lengths in both directions (the reverse loops too); T = 9 with lengths
    # (weight-gradient chunks of 3 steps), 10 without (chunks of 5).
    cfg, params, key = _layer(mode, bidirectional=mode == "LSTM" and masked)
    steps, batch = (9, 6) if masked else (10, 6)
    kx, ky, kh = jax.random.split(key, 3)
    x = jax.random.normal(kx, (steps, batch, cfg.input_size))
    lengths = jnp.array([steps, 1, 4, steps, 7, 2]) if masked else None
    out_dim = cfg.hidden_size * cfg.num_directions
    dy = jax.random.normal(ky, (steps, batch, out_dim))
    dh = jax.random.normal(kh, (cfg.num_directions, batch, cfg.hidden_size))

    def run(dtype):
        def f(p, x):
            y, h = recurrent.apply(cfg, p, x.astype(dtype), lengths=lengths)
            h_n = h[0] if mode == "LSTM" else h
            return y, h_n, (h[1] if mode == "LSTM" else h_n)

        (y, h_n, c_n), vjp = jax.vjp(f, params, x)
        grads = vjp((dy.astype(y.dtype), dh.astype(h_n.dtype), dh.astype(c_n.dtype)))
        return (y, h_n, c_n), grads

    (y32, h32, c32), (gp32, gx32) = jax.jit(lambda: run(jnp.float32))()
    (y16, h16, c16), (gp16, gx16) = jax.jit(lambda: run(jnp.bfloat16))()

    # Outputs in the compute dtype, h_n as h_0 (zeros of x's dtype), c_n float32; float32 gradients.
    assert y16.dtype == h16.dtype == jnp.bfloat16
    assert c16.dtype == (jnp.float32 if mode == "LSTM" else jnp.bfloat16)
    assert gx16.dtype == jnp.float32 and all(g.dtype == jnp.float32 for g in jax.tree.leaves(gp16))
    for got, want in ((y16, y32), (h16, h32), (c16, c32)):
        assert rel_err(got, want) <= OUT_TOL
    if masked:  # packed-sequence semantics hold exactly: zeros past each sequence's end
        past = np.arange(steps)[:, None] >= np.asarray(lengths)[None, :]
        assert not np.any(np.asarray(y16, np.float32)[past])
    tol = RELU_GRAD_TOL if mode == "RNN_RELU" else GRAD_TOL
    assert rel_err(gx16, gx32) <= tol
    for name in params:
        assert rel_err(gp16[name], gp32[name]) <= tol, name


@pytest.mark.parametrize("masked", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"])
def test_kernel_rounds_where_documented(mode, masked):
    """The kernels' forward against a plain step loop written from the documented rounding
    points: matmul operands (``x``, ``h``, the weights) in bfloat16 with float32 sums, gate math in
    float32, ``h`` rounded to bfloat16 as the next step's operand, ``c`` (LSTM) and ``h`` (GRU)
    carried in float32. Both sides do the same float32 arithmetic up to the order of the bias
    additions, so they agree to float32 rounding (measured: bit for bit) unless that moves an ``h``
    across a bfloat16 rounding boundary; 0.05U allows a few such flips. One more rounding per
    step than documented (a bfloat16 matmul result, or ``c`` kept in bfloat16) moves the outputs
    by about 0.3-0.5U and fails."""
    cfg, params, key = _layer(mode, bidirectional=False, seed=2)
    steps, batch, hidden = 10, 6, cfg.hidden_size
    x = jax.random.normal(key, (steps, batch, cfg.input_size)).astype(jnp.bfloat16)
    lengths = jnp.array([steps, 1, 4, steps, 7, 2]) if masked else None
    y, _ = jax.jit(lambda p, x: recurrent.apply(cfg, p, x, lengths=lengths))(params, x)

    p = {name[: -len("_l0")]: value for name, value in params.items()}
    bf = jnp.bfloat16
    mask = jnp.arange(steps)[:, None] < (lengths if masked else jnp.full(batch, steps))[None, :]

    def matmul(a, w):  # bfloat16 operands, float32 sum
        return jnp.dot(a.astype(bf), w.astype(bf).T, preferred_element_type=jnp.float32)

    def step(carry, inp):
        x_t, m = inp
        gx = matmul(x_t, p["weight_ih"]) + p["bias_ih"]
        if mode == "LSTM":
            h, c = carry
            z = jnp.split(gx + matmul(h, p["weight_hh"]) + p["bias_hh"], 4, axis=-1)
            h_new, c_new, _ = cells.lstm_pointwise(*z, c)
            new = (h_new.astype(bf), c_new)
        elif mode == "GRU":
            (h,) = carry
            xr, xz, xn = jnp.split(gx, 3, axis=-1)
            hr, hz, hn = jnp.split(matmul(h, p["weight_hh"]) + p["bias_hh"], 3, axis=-1)
            h_new, _ = cells.gru_pointwise(xr + hr, xz + hz, xn, hn, h)
            new = (h_new,)
        else:
            (h,) = carry
            h_new = cells.ELMAN_ACTIVATIONS[mode](gx + matmul(h, p["weight_hh"]) + p["bias_hh"])
            new = (h_new.astype(bf),)
        m = m[:, None]
        new = tuple(jnp.where(m, n, o) for n, o in zip(new, carry))
        return new, jnp.where(m, h_new, 0).astype(bf)  # the output, in the compute dtype

    carry = ((jnp.zeros((batch, hidden), bf), jnp.zeros((batch, hidden))) if mode == "LSTM"
             else (jnp.zeros((batch, hidden), jnp.float32 if mode == "GRU" else bf),))
    _, want = jax.jit(lambda: jax.lax.scan(step, carry, (x, mask)))()
    assert rel_err(y, want) <= 0.05 * U


def test_bfloat16_weights_one_step_matches_float32():
    """Decoding's path: bfloat16 weights *and* input, one step at a time (``cells``, not a loop)."""
    cfg, params, key = _layer("LSTM", bidirectional=False, seed=1)
    x = jax.random.normal(key, (1, 5, cfg.input_size))
    low = {k: v.astype(jnp.bfloat16) if v.ndim == 2 else v for k, v in params.items()}
    y32, (h32, c32) = recurrent.apply(cfg, params, x)
    y16, (h16, c16) = recurrent.apply(cfg, low, x.astype(jnp.bfloat16))
    assert y16.dtype == jnp.bfloat16 and c16.dtype == jnp.float32
    assert rel_err(y16, y32) <= OUT_TOL and rel_err(c16, c32) <= OUT_TOL


@pytest.mark.parametrize("steps", [2, 7])
def test_weight_gradient_in_chunks_is_the_float32_sum(steps):
    """``weight_grad`` below float32 runs a loop over chunks of steps (prime T: chunks of one step;
    T = 2: the fewest steps that make two chunks). Each term is a product of two rounded operands
    (:math:`\\le 2U` relative) summed in float32: :math:`\\le 3U` in norm."""
    k1, k2 = jax.random.split(jax.random.key(steps))
    inp = jax.random.normal(k1, (steps, 8, 16))
    dgates = jax.random.normal(k2, (steps, 8, 40))
    want = np.einsum("tbi,tbg->gi", np.asarray(inp, np.float64), np.asarray(dgates, np.float64))
    got = jax.jit(weight_grad, static_argnums=2)(inp.astype(jnp.bfloat16), dgates, jnp.float32)
    assert got.dtype == jnp.float32 and got.shape == (40, 16)
    assert rel_err(got, want) <= 3 * U


def test_fused_loss_matches_float32():
    rng = np.random.default_rng(0)
    n, d, v = 300, 32, 500
    h = rng.standard_normal((n, d)).astype(np.float32)
    w = (rng.standard_normal((d, v)) / np.sqrt(d) * 3).astype(np.float32)
    b = rng.standard_normal(v).astype(np.float32)
    t = rng.integers(0, v, n).astype(np.int32)
    wt = ((rng.random(n) < 0.7) * rng.uniform(0.5, 2.0, n)).astype(np.float32)

    def loss(h, w, b, dtype):
        return linear_cross_entropy(h.astype(dtype), w, b, t, wt, 64)

    def per_row(dtype):  # each row's loss alone (weight 1), by vmap over one-row batches
        return jax.vmap(lambda hn, tn: linear_cross_entropy(hn[None].astype(dtype), w, b, tn[None],
                                                            jnp.ones(1), 1))(h, t)

    v32, g32 = jax.jit(jax.value_and_grad(lambda *a: loss(*a, jnp.float32), argnums=(0, 1, 2)))(h, w, b)
    v16, g16 = jax.jit(jax.value_and_grad(lambda *a: loss(*a, jnp.bfloat16), argnums=(0, 1, 2)))(h, w, b)
    assert v16.dtype == jnp.float32  # the loss and its log-sum-exp are float32 whatever h's dtype
    bound = 2 * np.max(2 * U * (np.abs(h) @ np.abs(w)), axis=1)  # per row, first order
    rows = jax.jit(per_row, static_argnums=0)
    rows32, rows16 = rows(jnp.float32), rows(jnp.bfloat16)
    assert np.all(np.abs(np.asarray(rows16) - np.asarray(rows32)) <= bound)
    assert abs(float(v16) - float(v32)) <= np.sum(wt * bound)
    for got, want in zip(g16, g32):
        assert got.dtype == jnp.float32
        assert rel_err(got, want) <= GRAD_TOL

    # The rounding points themselves, against float64 arithmetic on the same roundings: h and W
    # rounded; logits, log-sum-exp and the loss exact; dz rounded once for the dh and dW matmuls,
    # not for db; dh, a bfloat16 h's cotangent, rounded. Only float32-vs-float64 arithmetic (and
    # the few values it moves across a bfloat16 rounding boundary) remains: 0.05U in norm.
    # Rounded logits, or dz rounded for db, fail.
    def bf(a):
        return np.asarray(jnp.asarray(a, jnp.bfloat16), np.float64)

    hr, wr = bf(h), bf(w)
    z = hr @ wr + b
    lse = np.log(np.sum(np.exp(z - z.max(1, keepdims=True)), 1)) + z.max(1)
    assert abs(float(v16) - np.sum(wt * (lse - z[np.arange(n), t]))) <= 1e-5 * abs(float(v16))
    dz = (np.exp(z - lse[:, None]) - np.eye(v)[t]) * wt[:, None]
    want = (bf(bf(dz) @ wr.T), hr.T @ bf(dz), dz.sum(0))
    for got, w_ in zip(g16, want):
        assert rel_err(got, w_) <= 0.05 * U
