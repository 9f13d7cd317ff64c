"""One direction of an LSTM layer (no projection) with a hand-written backward pass.

Autodiff of ``lax.scan`` would accumulate ``dW_hh`` inside the loop and save residuals op by op.
Here, as cuDNN does it, the forward loop saves only what the backward needs, the backward loop
carries only ``(dh, dc)`` and emits each step's gate gradients, and every weight gradient is one
large matmul after the loop.

The layout choices below are measured on XLA:CPU, where they decide most of the time:

* The input projection is four ``(T, B, H)`` arrays, one per gate, not one ``(T, B, 4H)`` array:
  a loop fusion that reads several slices of one dynamically indexed array runs several times
  slower than one that reads whole slices of separate arrays.
* ``b_ih + b_hh`` is added inside the step, where the recurrent matmul's output is read anyway,
  instead of in a separate pass over the ``(T, B, 4H)`` projection.
* ``cells.sigmoid`` is ``0.5 * tanh(0.5 x) + 0.5``, which XLA:CPU vectorises better than its logistic.
* The step's math is :func:`rnnjax.cells.lstm_pointwise`, the same function the cells call; it is
  traced into the loop body, so the compiled loop is the one the hand-inlined gates gave.
* Weight gradients are computed as ``x^T @ dgates`` (contracting the leading axis of both) and
  transposed afterwards behind an optimization barrier; XLA would otherwise rewrite them into
  ``dgates^T @ x``, which copies the large ``dgates`` into a transposed layout first.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from rnnjax.cells import lstm_pointwise
from rnnjax.kernels.common import (accum_dtype, dot, loop_buffer, previous_outputs, project,
                                   step_inputs, weight_grad)


def _forward(reverse, unroll, w_ih, w_hh, b, x, h0, c0, mask, *, save):
    """``(outs, h_n, c_n)``: ``outs`` the stacked outputs in the accumulation dtype (with ``save``,
    followed by what the backward needs), ``h_n`` in ``h0``'s dtype and ``c_n`` in ``c0``'s."""
    hidden = w_hh.shape[1]
    cdt, acc = x.dtype, accum_dtype(x.dtype)  # see common's module docstring
    gx = project(x, w_ih, 4)
    w_hh_t = w_hh.T.astype(cdt)  # transposed once, outside the loop
    bs = jnp.split(b.astype(acc), 4)

    def body(carry, inp):
        h, c = carry  # h in the compute dtype (it only feeds a matmul), c in the accumulation dtype
        hw = dot(h, w_hh_t)
        z = [inp[k] + hw[:, k * hidden:(k + 1) * hidden] + bs[k] for k in range(4)]
        h_new, c_new, gates = lstm_pointwise(*z, c)
        if mask is None:
            # Without a mask h_prev is the previous step's output, so it is not saved again.
            return (h_new.astype(cdt), c_new), ((h_new, c, *gates) if save else h_new)
        m = inp[4][:, None]
        y = jnp.where(m, h_new, jnp.zeros_like(h_new))
        out = (jnp.where(m, h_new.astype(cdt), h), jnp.where(m, c_new, c))
        return out, ((y, h.astype(acc), c, *gates) if save else y)

    xs = gx if mask is None else (*gx, mask)
    (h_n, c_n), outs = jax.lax.scan(body, (h0.astype(cdt), c0.astype(acc)), xs, reverse=reverse,
                                    unroll=unroll)
    return outs, h_n.astype(h0.dtype), c_n.astype(c0.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def lstm_direction(reverse: bool, unroll: int, w_ih: jax.Array, w_hh: jax.Array, b: jax.Array,
                   x: jax.Array, h0: jax.Array, c0: jax.Array, mask: jax.Array | None
                   ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """An LSTM direction over ``x`` ``(T, B, I)``; returns ``(ys, h_n, c_n)``.

    Each step is :func:`rnnjax.cells.lstm_pointwise` of ``split_4(W_ih x_t + W_hh h + b)``.
    ``unroll`` is ``lax.scan``'s, for the forward and the backward loop.
    ``b`` is ``b_ih + b_hh`` (``4H``); ``mask`` ``(T, B)`` marks valid steps: where it is false the
    carry passes through and the output is zero (packed-sequence semantics, see ``recurrent``);
    ``None`` means every step is valid.

    Precision: the compute dtype is ``x``'s (see :mod:`rnnjax.kernels.common`); ``ys`` has it,
    ``h_n`` and ``c_n`` have ``h0``'s and ``c0``'s dtypes, and ``c`` is carried in float32 or wider.
    """
    ys, h_n, c_n = _forward(reverse, unroll, w_ih, w_hh, b, x, h0, c0, mask, save=False)
    return ys.astype(x.dtype), h_n, c_n


def _fwd(reverse, unroll, w_ih, w_hh, b, x, h0, c0, mask):
    (ys, *acts), h_n, c_n = _forward(reverse, unroll, w_ih, w_hh, b, x, h0, c0, mask, save=True)
    ys = ys.astype(x.dtype)
    if mask is None:  # h_prev is ys shifted by one step, with h0 first (in scan order); in the
        # compute dtype, as the forward's matmul took it (no float32 copy kept for the backward)
        acts = [(ys, h0), *acts]
    return (ys, h_n, c_n), (w_ih, w_hh, b, x, mask, *acts)


def _bwd(reverse, unroll, res, cts):
    r"""The derivative of :func:`rnnjax.cells.lstm_pointwise` and the matmuls around it, step by step
    backwards. With :math:`\delta_{h'}` the step's output gradient plus the ``dh`` carried from the
    step after (zero where masked) and :math:`\delta_c` the carried ``dc``:

    .. math::
        \delta_{c'} = \delta_c + \delta_{h'}\, o\, (1 - \tanh^2 c') \\
        \partial z_i = \delta_{c'}\, g\, i (1 - i), \quad
        \partial z_f = \delta_{c'}\, c\, f (1 - f), \quad
        \partial z_g = \delta_{c'}\, i\, (1 - g^2), \quad
        \partial z_o = \delta_{h'} \tanh(c')\, o (1 - o) \\
        \delta_h = \partial z\, W_{hh}, \qquad \delta_c \leftarrow \delta_{c'} f

    and after the loop, over all steps at once: :math:`\partial W_{ih} = \partial z^T x`,
    :math:`\partial W_{hh} = \partial z^T h_{prev}`, :math:`\partial b = \sum \partial z`,
    :math:`\partial x = \partial z\, W_{ih}`. Where a step is masked, ``dh`` and ``dc`` pass through.
    """
    w_ih, w_hh, b, x, mask, hs, cs, i, f, g, o = res
    dys, dh_n, dc_n = cts
    cdt, acc = x.dtype, accum_dtype(x.dtype)  # activations and gradients in acc, matmul operands in cdt
    w_hh_c = w_hh.astype(cdt)

    def body(carry, inp):
        dh, dc, db, dgates_all = carry
        t, dy, m, (c_prev, i, f, g, o) = step_inputs(inp, mask is not None)
        c_new = f * c_prev + i * g  # c' recomputed: cheaper than saving tanh(c') per step
        tc = jnp.tanh(c_new)
        dh_new = jnp.where(m, dh + dy, 0)
        dc_new = jnp.where(m, dc, 0) + dh_new * o * (1 - tc * tc)
        dgates = jnp.concatenate([dc_new * g * i * (1 - i), dc_new * c_prev * f * (1 - f),
                                  dc_new * i * (1 - g * g), dh_new * tc * o * (1 - o)], axis=-1)
        dh_prev = dot(dgates.astype(cdt), w_hh_c) + jnp.where(m, 0, dh)
        dc_prev = dc_new * f + jnp.where(m, 0, dc)
        dgates_all = jax.lax.dynamic_update_index_in_dim(dgates_all, dgates, t, 0)
        return (dh_prev, dc_prev, db + dgates.sum(axis=0), dgates_all), None

    steps = jnp.arange(x.shape[0])
    dys = dys.astype(acc)
    xs = (steps, dys, cs, i, f, g, o) if mask is None else (steps, dys, mask, cs, i, f, g, o)
    db0 = jnp.zeros(w_hh.shape[0], acc)
    dgates0 = loop_buffer((*x.shape[:2], w_hh.shape[0]), acc, dys, cs)
    init = (dh_n.astype(acc), dc_n.astype(acc), db0, dgates0)
    (dh0, dc0, db, dgates), _ = jax.lax.scan(body, init, xs, reverse=not reverse, unroll=unroll)
    dx = dot(dgates.astype(cdt), w_ih).astype(cdt)
    h_prev = previous_outputs(reverse, *hs) if mask is None else hs
    return (weight_grad(x, dgates, w_ih.dtype), weight_grad(h_prev.astype(cdt), dgates, w_hh.dtype),
            db.astype(b.dtype), dx, dh0.astype(dh_n.dtype), dc0.astype(dc_n.dtype), None)


lstm_direction.defvjp(_fwd, _bwd)
