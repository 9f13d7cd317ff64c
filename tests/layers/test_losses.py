"""The chunked output layer + cross-entropy against the plain form, values and gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnjax.losses import linear_cross_entropy


def plain(h, w, b, targets, weights):
    logits = h @ w + b
    nll = jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]
    return jnp.sum(nll * weights)


def _inputs(seed, n, d, v, dtype):
    rng = np.random.default_rng(seed)
    h = rng.standard_normal((n, d)) * 2
    w = rng.standard_normal((d, v)) / np.sqrt(d) * 3
    b = rng.standard_normal(v)
    targets = rng.integers(0, v, n).astype(np.int32)
    weights = (rng.random(n) < 0.7) * rng.uniform(0.5, 2.0, n)  # a mask that also scales
    return (*(jnp.asarray(a, dtype) for a in (h, w, b)), jnp.asarray(targets), jnp.asarray(weights, dtype))


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(1, 70), d=st.integers(1, 9), v=st.integers(2, 40),
       chunk=st.sampled_from([1, 7, 16, 64, 1024]))
def test_value_and_gradients_equal_plain_float64(seed, n, d, v, chunk):
    with jax.enable_x64(True):
        h, w, b, t, wt = _inputs(seed, n, d, v, jnp.float64)
        # Under jit, as training calls it (eager dispatch of the chunk loop took three times as long).
        want_val, want_grads = jax.jit(jax.value_and_grad(plain, argnums=(0, 1, 2)))(h, w, b, t, wt)
        got_val, got_grads = jax.jit(jax.value_and_grad(
            lambda h, w, b: linear_cross_entropy(h, w, b, t, wt, chunk), argnums=(0, 1, 2)))(h, w, b)
        value_only = jax.jit(lambda h, w, b: linear_cross_entropy(h, w, b, t, wt, chunk))(h, w, b)
        np.testing.assert_allclose(got_val, want_val, rtol=1e-12)
        np.testing.assert_allclose(value_only, want_val, rtol=1e-12)
        for got, want in zip(got_grads, want_grads):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_float32_under_jit_and_scaled_cotangent():
    h, w, b, t, wt = _inputs(0, 300, 32, 500, jnp.float32)
    want = jax.grad(lambda h, w, b: 3.0 * plain(h, w, b, t, wt), argnums=(0, 1, 2))(h, w, b)
    got = jax.jit(jax.grad(lambda h, w, b: 3.0 * linear_cross_entropy(h, w, b, t, wt, 128),
                           argnums=(0, 1, 2)))(h, w, b)
    for g, e in zip(got, want):
        np.testing.assert_allclose(g, e, rtol=2e-4, atol=2e-6)


def test_large_logits_do_not_overflow():
    h, w, b, t, wt = _inputs(1, 20, 4, 30, jnp.float32)
    val = linear_cross_entropy(h * 1e3, w, b, t, wt, 8)
    assert jnp.isfinite(val)
    np.testing.assert_allclose(val, plain(h * 1e3, w, b, t, wt), rtol=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_model_nll_sum_equals_cross_entropy_of_logits(cell):
    from flax import nnx

    from rnnjax.poetry.model import PoetryModel

    model = PoetryModel(50, 8, 16, 2, cell=cell, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, 50, (7, 3)), jnp.int32)
    targets = jnp.asarray(rng.integers(0, 50, (7, 3)), jnp.int32)
    mask = jnp.asarray(rng.random((7, 3)) < 0.8, jnp.float32)
    logits, _ = model(tokens)
    want = plain(logits.reshape(-1, 50), jnp.eye(50), jnp.zeros(50), targets.reshape(-1), mask.reshape(-1))
    np.testing.assert_allclose(model.nll_sum(tokens, targets, mask), want, rtol=1e-5)
