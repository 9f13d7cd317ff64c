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

Precision: the matmuls run in ``h``'s dtype (``w`` is cast to it) with float32 results, as in
:mod:`rnnjax.kernels.common`; the logits, their max and log-sum-exp, the loss and the sums that form
``dW`` and ``db`` across chunks are float32 (or wider) whatever ``h``'s dtype, and each gradient is
returned in its input's dtype (``dh`` rounded to bfloat16 for a bfloat16 ``h``; ``dW`` and ``db``
float32 for float32 weights). With bfloat16 ``h`` the three matmuls (logits, ``dh``, ``dW``) take
bfloat16 operands: ``dz`` is rounded once for the two that need it, after the softmax, and made in
that dtype only, while ``db`` stays float32 without a float32 ``dz``:
``db = sum_n (w_n / s_n) x_n - sum_n w_n e_{t_n}`` (``x_n = exp(z_n - max_v z_{n,v})``, ``s_n`` its
sum, ``e_{t_n}`` the one-hot row of the target), a float32 product over the exponentials and a
scatter of the weights.

Chunk size: each chunk's logits, exponentials and ``dz`` are ``(chunk, V)`` arrays that every pass
reads and writes, so a smaller chunk keeps them nearer the core, down to where the matmuls lose
efficiency. Measured with ``bench/train_throughput.py`` (2 cores, Intel Xeon, real tokens/s of the
training step): bfloat16 17,850 at 512 rows, 18,898 at 256, 19,121 at 192, 18,515 at 128, 16,310 at
1,024; float32 8,696 at 512 and 9,212 at 256. Earlier, on an AMD EPYC, 512 rows had been 5-8%
faster than 1,024.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from rnnjax.kernels.common import after

CHUNK = 256


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


def _acc(dtype):
    return jnp.promote_types(dtype, jnp.float32)


def _chunk_terms(h, w, b, t):
    """Per-row NLL, ``exp(z - max)`` and its row sums; ``w`` is in ``h``'s dtype, ``b`` in the
    accumulation dtype, and so are the logits."""
    logits = jax.lax.dot_general(h, w, (((1,), (0,)), ((), ())), preferred_element_type=_acc(h.dtype)) + b
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
    The result is in float32 or wider: ``h``'s dtype promoted with float32 (see the module docstring).
    """
    acc = _acc(h.dtype)
    hc, tc, wc = _chunked(h, targets, weights.astype(acc), chunk)
    wx, bx = w.astype(h.dtype), b.astype(acc)

    def body(total, inp):
        hx, t, wt = inp
        nll, _, _ = _chunk_terms(hx, wx, bx, t)
        return total + jnp.sum(wt * nll), None

    total, _ = jax.lax.scan(body, jnp.zeros((), acc), (hc, tc, wc))
    return total


def _fwd(h, w, b, targets, weights, chunk):
    n, cdt, acc = h.shape[0], h.dtype, _acc(h.dtype)
    hc, tc, wc = _chunked(h, targets, weights.astype(acc), chunk)
    # The cast weight is made once h exists (see kernels.common.after), not during the layers' pass.
    wx, bx = (w if w.dtype == cdt else after(w, h).astype(cdt)), b.astype(acc)
    cols = jnp.arange(w.shape[1])
    # dW = h^T dz contracts the rows. XLA:CPU runs that float32 matmul as it is, but a bfloat16
    # one only with a row-major left operand that contracts its last axis: below float32 the
    # loop also reads each chunk transposed, (k, D, chunk), copied once before the loop.
    low = cdt != acc
    xs = (hc, tc, wc, jnp.swapaxes(hc, 1, 2)) if low else (hc, tc, wc)

    def body(carry, inp):
        total, dw, db = carry
        hx, t, wt = inp[:3]
        nll, e, s = _chunk_terms(hx, wx, bx, t)
        target = (cols[None, :] == t[:, None]).astype(e.dtype)
        if low:
            # No float32 dz beside dz_c (see the module docstring): it was one more (chunk, V)
            # array written and read: 256 -> 219 ms for this loss at 8,320 rows.
            r = wt[:, None] / s
            dz_c = (e * r - target * wt[:, None]).astype(cdt)
            dh = jax.lax.dot_general(dz_c, wx, (((1,), (1,)), ((), ())), preferred_element_type=acc)
            dw = dw + jax.lax.dot_general(inp[3], dz_c, (((1,), (0,)), ((), ())), preferred_element_type=acc)
            db = db + jax.lax.dot_general(r[:, 0], e, (((0,), (0,)), ((), ()))) - jnp.zeros_like(db).at[t].add(wt)
        else:
            dz = (e / s - target) * wt[:, None]
            dh = dz @ w.T
            dw = dw + jax.lax.dot_general(hx, dz, (((0,), (0,)), ((), ())))
            db = db + jnp.sum(dz, axis=0)
        return (total + jnp.sum(wt * nll), dw, db), dh

    init = (jnp.zeros((), acc), jnp.zeros(w.shape, acc), jnp.zeros(b.shape, acc))
    (total, dw, db), dh = jax.lax.scan(body, init, xs)
    return total, (dh.reshape(-1, h.shape[1])[:n].astype(cdt), dw, db, w, b)


def _bwd(chunk, res, g):
    dh, dw, db, w, b = res  # dw, db are float32 (or wider) sums; w, b only give the dtypes
    return (g * dh).astype(dh.dtype), (g * dw).astype(w.dtype), (g * db).astype(b.dtype), None, None


linear_cross_entropy.defvjp(_fwd, _bwd)
