"""One direction of a GRU layer with a hand-written backward pass.

The same plan as ``lstm``: the forward loop saves only what the backward needs, the backward
loop carries only ``dh`` and emits each step's gate gradients, and every weight gradient is one
large matmul after the loop. The GRU differs in that ``b_hn`` sits inside the reset gate's product,
so the input side and the hidden side of the gates get different gradients in the ``n`` block
(the equations are in ``_bwd``'s docstring).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from rnnjax.cells import gru_pointwise
from rnnjax.kernels.common import (accum_dtype, dot, loop_buffer, previous_outputs, project,
                                   step_inputs, weight_grad)


def _forward(reverse, unroll, w_ih, w_hh, b_ih, b_hh, x, h0, mask, *, save):
    """``(outs, h_n)``: ``outs`` the stacked outputs in the accumulation dtype (with ``save``,
    followed by what the backward needs), ``h_n`` in ``h0``'s dtype."""
    hidden = w_hh.shape[1]
    cdt, acc = x.dtype, accum_dtype(x.dtype)  # see common's module docstring
    gx = project(x, w_ih, 3)
    w_hh_t = w_hh.T.astype(cdt)  # transposed once, outside the loop
    bi, bh = jnp.split(b_ih.astype(acc), 3), jnp.split(b_hh.astype(acc), 3)
    b_r, b_z = bi[0] + bh[0], bi[1] + bh[1]  # only b_hn has to stay apart

    def body(h, inp):
        # h is carried in the accumulation dtype: h' = (1 - z) n + z h accumulates over the steps.
        hw = dot(h.astype(cdt), w_hh_t)
        zr = inp[0] + hw[:, :hidden] + b_r
        zz = inp[1] + hw[:, hidden:2 * hidden] + b_z
        hn = hw[:, 2 * hidden:] + bh[2]
        h_new, (r, z, n) = gru_pointwise(zr, zz, inp[2] + bi[2], hn, h)
        if mask is None:
            return h_new, ((h_new, r, z, n, hn) if save else h_new)
        m = inp[3][:, None]
        y = jnp.where(m, h_new, jnp.zeros_like(h_new))
        return jnp.where(m, h_new, h), ((y, h, r, z, n, hn) if save else y)

    xs = gx if mask is None else (*gx, mask)
    h_n, outs = jax.lax.scan(body, h0.astype(acc), xs, reverse=reverse, unroll=unroll)
    return outs, h_n.astype(h0.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def gru_direction(reverse: bool, unroll: int, w_ih: jax.Array, w_hh: jax.Array, b_ih: jax.Array,
                  b_hh: jax.Array, x: jax.Array, h0: jax.Array, mask: jax.Array | None
                  ) -> tuple[jax.Array, jax.Array]:
    """A GRU direction over ``x`` ``(T, B, I)``; returns ``(ys, h_n)``.

    Each step is :func:`rnnjax.cells.gru_pointwise` (gates in torch's order ``r, z, n``); ``mask``
    as in ``lstm.lstm_direction`` (``None``: every step valid).

    Precision: the compute dtype is ``x``'s (see :mod:`rnnjax.kernels.common`); ``ys`` has it,
    ``h_n`` has ``h0``'s, and ``h`` is carried in float32 or wider.
    """
    ys, h_n = _forward(reverse, unroll, w_ih, w_hh, b_ih, b_hh, x, h0, mask, save=False)
    return ys.astype(x.dtype), h_n


def _fwd(reverse, unroll, w_ih, w_hh, b_ih, b_hh, x, h0, mask):
    (ys, *acts), h_n = _forward(reverse, unroll, w_ih, w_hh, b_ih, b_hh, x, h0, mask, save=True)
    if mask is None:  # h_prev is ys shifted by one step, with h0 first (in scan order)
        acts = [(ys, h0), *acts]
    return (ys.astype(x.dtype), h_n), (w_ih, w_hh, b_ih, b_hh, x, mask, *acts)


def _bwd(reverse, unroll, res, cts):
    r"""The derivative of :func:`rnnjax.cells.gru_pointwise` and the matmuls around it, step by step
    backwards. With :math:`\delta_{h'}` the step's output gradient plus the ``dh`` carried from the
    step after (zero where masked), and :math:`h_n = W_{hn} h + b_{hn}`:

    .. math::
        \bar n = \delta_{h'} (1 - z) (1 - n^2), \qquad
        \partial(W_{in} x + b_{in}) = \bar n, \qquad \partial h_n = r \bar n, \\
        \partial z_r = \bar n \, h_n \, r (1 - r), \qquad
        \partial z_z = \delta_{h'} (h - n) \, z (1 - z), \qquad
        \delta_h = \delta_{h'} z + \partial(W_{hh} h)\, W_{hh}

    where the input side's gradients are ``dgx = [dz_r, dz_z, n̄]`` and the hidden side's
    ``dgh = [dz_r, dz_z, r n̄]``; after the loop :math:`\partial W_{ih} = dgx^T x`,
    :math:`\partial W_{hh} = dgh^T h_{prev}`, :math:`\partial x = dgx\, W_{ih}`, and the biases get
    the sums over steps and batch.
    """
    w_ih, w_hh, b_ih, b_hh, x, mask, hs, r, z, n, hn = res
    dys, dh_n = cts
    cdt, acc = x.dtype, accum_dtype(x.dtype)  # activations and gradients in acc, matmul operands in cdt
    w_hh_c = w_hh.astype(cdt)
    h_prev = previous_outputs(reverse, *hs) if mask is None else hs

    def body(carry, inp):
        dh, dbi, dbh, dgx_all, dgh_all = carry
        t, dy, m, (h, r, z, n, hn) = step_inputs(inp, mask is not None)
        d = jnp.where(m, dh + dy, 0)
        dn = d * (1 - z) * (1 - n * n)
        dr = dn * hn * r * (1 - r)
        dz = d * (h - n) * z * (1 - z)
        dgx = jnp.concatenate([dr, dz, dn], axis=-1)
        dgh = jnp.concatenate([dr, dz, dn * r], axis=-1)
        dh_prev = d * z + dot(dgh.astype(cdt), w_hh_c) + jnp.where(m, 0, dh)
        dgx_all = jax.lax.dynamic_update_index_in_dim(dgx_all, dgx, t, 0)
        dgh_all = jax.lax.dynamic_update_index_in_dim(dgh_all, dgh, t, 0)
        return (dh_prev, dbi + dgx.sum(axis=0), dbh + dgh.sum(axis=0), dgx_all, dgh_all), None

    steps = jnp.arange(x.shape[0])
    dys = dys.astype(acc)
    xs = (steps, dys, h_prev, r, z, n, hn)
    if mask is not None:
        xs = (steps, dys, mask, h_prev, r, z, n, hn)
    shape = (*x.shape[:2], w_hh.shape[0])
    zeros = jnp.zeros(w_hh.shape[0], acc)
    init = (dh_n.astype(acc), zeros, zeros, loop_buffer(shape, acc, dys, r), loop_buffer(shape, acc, dys, z))
    (dh0, db_ih, db_hh, dgx, dgh), _ = jax.lax.scan(body, init, xs, reverse=not reverse,
                                                    unroll=unroll)
    return (weight_grad(x, dgx, w_ih.dtype), weight_grad(h_prev.astype(cdt), dgh, w_hh.dtype),
            db_ih.astype(b_ih.dtype), db_hh.astype(b_hh.dtype), dot(dgx.astype(cdt), w_ih).astype(cdt),
            dh0.astype(dh_n.dtype), None)


gru_direction.defvjp(_fwd, _bwd)
