"""Helpers the LSTM, GRU and Elman kernels share: gate projections, the backward loop's inputs and
buffers, and weight gradients as single matmuls after the loop. The cells' pointwise math, sigmoid
included, lives in :mod:`rnnjax.cells`.

Each is a layout or memory choice measured on XLA:CPU; the reason sits in its docstring.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def project(x: jax.Array, w_ih: jax.Array, gates: int) -> tuple[jax.Array, ...]:
    """``x @ W_ih^T`` split by gate: ``gates`` ``(T, B, H)`` arrays (see the module docstring)."""
    return tuple(x @ w.T for w in jnp.split(w_ih, gates, axis=0))


def weight_grad(inp: jax.Array, dgates: jax.Array) -> jax.Array:
    """``dgates^T @ inp`` as ``(inp^T @ dgates)^T``; the barrier keeps XLA from swapping it back."""
    flat = inp.reshape(-1, inp.shape[-1])
    dw_t = jax.lax.dot_general(flat, dgates.reshape(-1, dgates.shape[-1]), (((0,), (0,)), ((), ())))
    return jax.lax.optimization_barrier(dw_t).T


def previous_outputs(reverse: bool, ys: jax.Array, h0: jax.Array) -> jax.Array:
    """Each step's ``h_prev`` when every step is valid: ``ys`` shifted by one step (in scan order)
    with ``h0`` first. Shifting the ``(T, B, H)`` outputs is a small copy; slicing ``dgates`` instead
    would copy ``(T, B, 4H)``."""
    if reverse:
        return jnp.concatenate([ys[1:], h0[None]])
    return jnp.concatenate([h0[None], ys[:-1]])


def step_inputs(inp: tuple[jax.Array, ...], masked: bool
                ) -> tuple[jax.Array, jax.Array, jax.Array, list[jax.Array]]:
    """A backward step's ``(t, dy, m, rest)`` from its scanned inputs ``(t, dy[, mask], *rest)``;
    ``m`` is ``(B, 1)``, or a constant ``True`` (folded away by XLA) when nothing is masked."""
    if masked:
        t, dy, m, *rest = inp
        return t, dy, m[:, None], rest
    t, dy, *rest = inp
    return t, dy, jnp.ones((1, 1), bool), rest


def loop_buffer(shape: tuple[int, ...], *sources: jax.Array) -> jax.Array:
    """A ``shape`` array for a backward loop to fill, one step per iteration.

    ``lax.scan`` starts its stacked outputs as zeros. XLA merges the equal zero buffers of all
    layers into one and copies it before the first loop writes, so two ``(T, B, 4H)`` buffers are
    live together from the start of the call (the 2-layer benchmark's temp memory: 389 MiB, against
    264 MiB with this), and every page of it is faulted in again on each call. A buffer broadcast
    from a value of this layer's own inputs cannot be merged and is made only when they exist;
    the loop overwrites every element.
    """
    seed = sum(a.reshape(-1)[-1] for a in sources)
    return jnp.broadcast_to(seed, shape)
