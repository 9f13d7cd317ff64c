"""One direction of an Elman RNN layer (tanh or ReLU) with a hand-written backward pass.

The same plan as ``lstm``: the forward loop keeps only the outputs, the backward loop carries
only ``dh`` and emits each step's pre-activation gradient ``dz``, and the weight gradients are
single large matmuls after the loop (autodiff of ``lax.scan`` would accumulate ``dW_hh`` step by
step and save residuals op by op). Both nonlinearities have derivatives that are functions of their
output, so the outputs are the only residual (see ``_bwd``).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from rnnjax.cells import ELMAN_ACTIVATIONS
from rnnjax.kernels.common import accum_dtype, dot, dot_t, loop_buffer, previous_outputs, step_inputs, weight_grad


def _derivative(mode, y):
    """The activation's derivative from its output ``y``: ``1 - y^2`` (tanh), ``[y > 0]`` (ReLU)."""
    return 1 - y * y if mode == "RNN_TANH" else (y > 0).astype(y.dtype)


def _forward(mode, reverse, unroll, w_ih, w_hh, b, x, h0, mask, *, save):
    """``(outs, h_n)``: ``outs`` the stacked outputs in the accumulation dtype (with ``save`` and a
    mask, and each step's ``h_prev``), ``h_n`` in ``h0``'s dtype."""
    act = ELMAN_ACTIVATIONS[mode]
    cdt, acc = x.dtype, accum_dtype(x.dtype)  # see common's module docstring
    gx = dot_t(x, w_ih)
    w_hh_t = w_hh.T.astype(cdt)  # transposed once, outside the loop
    b = b.astype(acc)

    def body(h, inp):
        h_new = act(inp[0] + dot(h, w_hh_t) + b)
        if mask is None:
            return h_new.astype(cdt), h_new
        m = inp[1][:, None]
        y = jnp.where(m, h_new, jnp.zeros_like(h_new))
        # With a mask h_prev is not ys shifted, so it is saved for dW_hh.
        return jnp.where(m, h_new.astype(cdt), h), ((y, h.astype(acc)) if save else y)

    xs = (gx,) if mask is None else (gx, mask)
    h_n, outs = jax.lax.scan(body, h0.astype(cdt), xs, reverse=reverse, unroll=unroll)
    return outs, h_n.astype(h0.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def elman_direction(mode: str, reverse: bool, unroll: int, w_ih: jax.Array, w_hh: jax.Array,
                    b: jax.Array, x: jax.Array, h0: jax.Array, mask: jax.Array | None
                    ) -> tuple[jax.Array, jax.Array]:
    """An RNN direction over ``x`` ``(T, B, I)``; returns ``(ys, h_n)``.

    Each step is ``h' = cells.ELMAN_ACTIVATIONS[mode](W_ih x_t + W_hh h + b)``. ``mode`` is
    ``"RNN_TANH"`` or ``"RNN_RELU"``, ``b`` is ``b_ih + b_hh``; ``mask`` as in
    ``lstm.lstm_direction`` (``None``: every step valid).

    Precision: the compute dtype is ``x``'s (see :mod:`rnnjax.kernels.common`); ``ys`` and the
    carried ``h`` have it, ``h_n`` has ``h0``'s.
    """
    ys, h_n = _forward(mode, reverse, unroll, w_ih, w_hh, b, x, h0, mask, save=False)
    return ys.astype(x.dtype), h_n


def _fwd(mode, reverse, unroll, w_ih, w_hh, b, x, h0, mask):
    outs, h_n = _forward(mode, reverse, unroll, w_ih, w_hh, b, x, h0, mask, save=True)
    ys, hs = (outs, None) if mask is None else outs
    return (ys.astype(x.dtype), h_n), (w_ih, w_hh, b, x, h0, mask, ys, hs)


def _bwd(mode, reverse, unroll, res, cts):
    r"""The derivative of the step :math:`h' = \phi(z)`, :math:`z = W_{ih} x + W_{hh} h + b`, step by
    step backwards. With :math:`\delta_{h'}` the step's output gradient plus the ``dh`` carried from
    the step after (zero where masked):

    .. math::
        \partial z = \delta_{h'} \, \phi'(z), \quad
        \phi' = 1 - h'^2 \ (\tanh), \quad [h' > 0] \ (\mathrm{ReLU}), \qquad
        \delta_h = \partial z \, W_{hh}

    and after the loop :math:`\partial W_{ih} = \partial z^T x`,
    :math:`\partial W_{hh} = \partial z^T h_{prev}`, :math:`\partial b = \sum \partial z`,
    :math:`\partial x = \partial z \, W_{ih}`.
    """
    w_ih, w_hh, b, x, h0, mask, ys, hs = res
    dys, dh_n = cts
    cdt, acc = x.dtype, accum_dtype(x.dtype)  # activations and gradients in acc, matmul operands in cdt
    w_hh_c = w_hh.astype(cdt)

    def body(carry, inp):
        dh, db, dz_all = carry
        t, dy, m, (y,) = step_inputs(inp, mask is not None)
        dz = jnp.where(m, (dh + dy) * _derivative(mode, y), 0)
        dh_prev = dot(dz.astype(cdt), w_hh_c) + jnp.where(m, 0, dh)
        dz_all = jax.lax.dynamic_update_index_in_dim(dz_all, dz, t, 0)
        return (dh_prev, db + dz.sum(axis=0), dz_all), None

    steps = jnp.arange(x.shape[0])
    dys = dys.astype(acc)
    xs = (steps, dys, ys) if mask is None else (steps, dys, mask, ys)
    db0 = jnp.zeros(w_hh.shape[0], acc)
    dz0 = loop_buffer(ys.shape, acc, dys, ys)  # see common.loop_buffer
    (dh0, db, dz), _ = jax.lax.scan(body, (dh_n.astype(acc), db0, dz0), xs, reverse=not reverse,
                                    unroll=unroll)
    h_prev = previous_outputs(reverse, ys, h0) if mask is None else hs
    return (weight_grad(x, dz, w_ih.dtype), weight_grad(h_prev.astype(cdt), dz, w_hh.dtype), db.astype(b.dtype),
            dot(dz.astype(cdt), w_ih).astype(cdt), dh0.astype(dh_n.dtype), None)


elman_direction.defvjp(_fwd, _bwd)
