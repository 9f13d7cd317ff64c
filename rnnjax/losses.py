r"""Output layer and cross-entropy in one pass over row chunks, never holding the ``(N, V)`` logits.

For the poetry model the output layer (256 -> 8,711) is about 70% of a training step's FLOPs, and
the plain form, ``logits = h @ W + b`` then ``log_softmax``, writes ``N x V`` floats (290 MB for a
batch of 128 poems of 65 characters) several times: the logits, the bias add, the softmax, its
gradient, a transposed copy for ``dW``. On a CPU that memory traffic, not the matmuls, was most of
the step. Here rows are processed ``chunk`` at a time, so the logits of a chunk stay in cache, and
the gradients are formed in the same pass (as fused "linear cross-entropy" kernels do on GPUs):

.. math::
    \ell = \sum_n w_n\,(\mathrm{logsumexp}(z_n) - z_{n,t_n}), \quad z_n = h_n W + b, \qquad
    \frac{\partial \ell}{\partial z_n} = w_n\,(\mathrm{softmax}(z_n) - e_{t_n})

so ``dh = dz W^T``, ``dW = h^T dz`` and ``db = sum_n dz_n`` are accumulated chunk by chunk.
The value alone (no gradient, e.g. validation) skips the gradient work.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

CHUNK = 512


def _chunked(h, targets, weights, chunk):
    """Pad rows to a multiple of ``chunk`` (padding rows weigh 0) and split into ``(n_chunks, chunk, ...)``."""
    n = h.shape[0]
    chunk = max(1, min(chunk, n))
    pad = (-n) % chunk
    if pad:
        h = jnp.pad(h, ((0, pad), (0, 0)))
        targets = jnp.pad(targets, (0, pad))
        weights = jnp.pad(weights, (0, pad))
    k = (n + pad) // chunk
    return h.reshape(k, chunk, -1), targets.reshape(k, chunk), weights.reshape(k, chunk)


def _chunk_terms(h, w, b, t):
    logits = h @ w + b
    m = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    e = jnp.exp(logits - m)
    s = jnp.sum(e, axis=-1, keepdims=True)
    lse = (m + jnp.log(s))[:, 0]
    picked = jnp.take_along_axis(logits, t[:, None], axis=-1)[:, 0]
    return lse - picked, e, s


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def linear_cross_entropy(h: jax.Array, w: jax.Array, b: jax.Array, targets: jax.Array, weights: jax.Array,
                         chunk: int = CHUNK) -> jax.Array:
    """``sum_n weights[n] * CE(h[n] @ w + b, targets[n])`` for ``h`` ``(N, D)``, ``w`` ``(D, V)``.

    Differentiable in ``h``, ``w`` and ``b`` (``weights`` is treated as a constant mask/scale).
    """
    hc, tc, wc = _chunked(h, targets, weights, chunk)

    def body(total, inp):
        hx, t, wt = inp
        nll, _, _ = _chunk_terms(hx, w, b, t)
        return total + jnp.sum(wt * nll), None

    total, _ = jax.lax.scan(body, jnp.zeros((), h.dtype), (hc, tc, wc))
    return total


def _fwd(h, w, b, targets, weights, chunk):
    n = h.shape[0]
    hc, tc, wc = _chunked(h, targets, weights, chunk)
    cols = jnp.arange(w.shape[1])

    def body(carry, inp):
        total, dw, db = carry
        hx, t, wt = inp
        nll, e, s = _chunk_terms(hx, w, b, t)
        dz = (e / s - (cols[None, :] == t[:, None]).astype(e.dtype)) * wt[:, None]
        dh = dz @ w.T
        dw = dw + jax.lax.dot_general(hx, dz, (((0,), (0,)), ((), ())))
        return (total + jnp.sum(wt * nll), dw, db + jnp.sum(dz, axis=0)), dh

    init = (jnp.zeros((), h.dtype), jnp.zeros_like(w), jnp.zeros_like(b))
    (total, dw, db), dh = jax.lax.scan(body, init, (hc, tc, wc))
    return total, (dh.reshape(-1, h.shape[1])[:n], dw, db)


def _bwd(chunk, res, g):
    dh, dw, db = res
    return g * dh, g * dw, g * db, None, None


linear_cross_entropy.defvjp(_fwd, _bwd)
