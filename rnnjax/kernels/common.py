"""Helpers the LSTM, GRU and Elman kernels share: gate projections, the backward loop's inputs and
buffers, and weight gradients as single matmuls after the loop. The cells' pointwise math, sigmoid
included, lives in :mod:`rnnjax.cells`.

Each is a layout or memory choice measured on XLA:CPU; the reason sits in its docstring.

Precision: a kernel computes in the dtype of its input ``x`` (the *compute dtype*: float32, or
bfloat16 for mixed precision). What follows was measured on XLA:CPU (jax 0.10, AVX-512 BF16):

* Matmul operands are cast to the compute dtype and every matmul sums into and returns
  :func:`accum_dtype`, float32: XLA hands such a matmul to YNNPACK, 1.4-2.1x faster than float32
  at the training shapes, while one with a bfloat16 result ran 1.8-5x *slower*. YNNPACK takes it only
  as a 2-D, row-major left operand contracting its last axis, with no transpose op in front of
  either operand; anything else is quietly computed in float32 after converting both operands
  (hence :func:`dot_t`, the transposes made outside loops, and :func:`weight_grad`'s loop). A
  one-row matmul (decoding a single poem) is always converted, 4-5x slower than float32.
* The gate math is float32: XLA:CPU runs a bfloat16 elementwise op by converting its operands,
  2.7x slower for a gate's ``tanh``.
* What the loops carry, save and fill stays float32 too: the cell state ``c`` (LSTM), ``h``
  (GRU), the saved activations and the backward's gate gradients. XLA:CPU rewrites a bfloat16
  dynamic-slice or dynamic-update-slice (how a loop reads and writes its stacked arrays) to
  float32, converting the whole array before the loop: bfloat16 storage there would add passes
  and memory, not save them. The outputs are in the compute dtype, and ``h`` feeds the recurrent
  matmul rounded to it (LSTM, Elman: that is also the carry).

Gradients come back in each input's own dtype: float32 master weights get float32 gradients,
summed in float32. For float32 input every cast is the identity and the compiled code is the
float32 kernel's (optimised HLO identical but for instruction names).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def accum_dtype(dtype) -> jnp.dtype:
    """Where a computation in ``dtype`` accumulates: float32 for bfloat16 and float16, else ``dtype``."""
    return jnp.promote_types(dtype, jnp.float32)


def _dot(a: jax.Array, b: jax.Array, rhs_contract: int) -> jax.Array:
    flat = a.reshape(-1, a.shape[-1])  # a 2-D left operand: XLA:CPU's bfloat16 matmul takes no other
    out = jax.lax.dot_general(flat, b.astype(a.dtype), (((1,), (rhs_contract,)), ((), ())),
                              preferred_element_type=accum_dtype(a.dtype))
    return out.reshape(*a.shape[:-1], out.shape[-1])


def dot(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a @ b`` for ``b`` ``(K, N)``, in ``a``'s dtype (``b`` cast to it), returned in :func:`accum_dtype`."""
    return _dot(a, b, 0)


def dot_t(a: jax.Array, w: jax.Array) -> jax.Array:
    """``a @ w^T`` for ``w`` ``(N, K)``, as :func:`dot`. Written as one ``dot_general`` contracting the
    last axes: a transpose op before the matmul would leave a column-major operand that XLA:CPU
    computes in float32."""
    return _dot(a, w, 1)


def project(x: jax.Array, w_ih: jax.Array, gates: int) -> tuple[jax.Array, ...]:
    """``x @ W_ih^T`` split by gate: ``gates`` ``(T, B, H)`` arrays (see the module docstring), in
    ``accum_dtype(x.dtype)``."""
    return tuple(dot_t(x, w) for w in jnp.split(w_ih, gates, axis=0))


def weight_grad(inp: jax.Array, dgates: jax.Array, dtype) -> jax.Array:
    """``dgates^T @ inp`` for ``inp`` ``(T, B, I)`` and ``dgates`` ``(T, B, G)``: a weight's gradient,
    summed over steps and batch in :func:`accum_dtype` and returned in ``dtype`` (the weight's).

    In float32 it is one matmul, ``(inp^T @ dgates)^T``; the barrier keeps XLA from swapping it back.
    Below float32 the matmul contracts the leading axis of both operands, which XLA:CPU computes in
    float32 (its bfloat16 matmul takes only a row-major left operand contracting its last axis, and
    a transpose before it is folded back into the matmul). So it runs as a loop over chunks of
    steps: each iteration transposes one chunk of ``inp`` to ``(I, rows)`` and adds
    ``chunk^T @ dgates_chunk`` to a float32 sum, 2.7x faster than float32 at ``(65, 128, 256)``.
    """
    acc = accum_dtype(inp.dtype)
    steps = inp.shape[0]
    if inp.dtype == acc or steps < 2:
        flat = inp.reshape(-1, inp.shape[-1]).astype(acc)
        dw_t = jax.lax.dot_general(flat, dgates.reshape(-1, dgates.shape[-1]).astype(acc),
                                   (((0,), (0,)), ((), ())))
        return jax.lax.optimization_barrier(dw_t).T.astype(dtype)
    # Steps per chunk: a divisor of T, at most 16, and at least two chunks (XLA inlines a loop of one
    # iteration, and then folds the transpose back into the matmul).
    n = max(d for d in range(1, min(16, steps // 2) + 1) if steps % d == 0)
    rows = n * inp.shape[1]
    inp_t = jnp.swapaxes(after(inp, dgates).reshape(steps // n, rows, inp.shape[-1]), 1, 2)
    dg = dgates.reshape(steps // n, rows, dgates.shape[-1])

    def body(total, xs):
        a, g = xs
        return total + jax.lax.dot_general(a.astype(inp.dtype), g.astype(inp.dtype), (((1,), (0,)), ((), ())),
                                           preferred_element_type=acc), None

    total, _ = jax.lax.scan(body, jnp.zeros((inp.shape[-1], dgates.shape[-1]), acc), (inp_t, dg))
    return total.T.astype(dtype)


def after(x: jax.Array, *deps: jax.Array) -> jax.Array:
    """``x``, made to depend on ``deps`` (plus ``0 * dep``): an op on ``x`` then waits for them.

    XLA:CPU's scheduler computes a cast as soon as its operand exists: the float32 copy of a
    forward input that only the backward reads, or the bfloat16 copy of a weight, would otherwise
    live through the whole forward pass, where the step's memory peaks."""
    zero = sum(d.reshape(-1)[-1] for d in deps).astype(x.dtype) * 0
    return x + zero


def previous_outputs(reverse: bool, ys: jax.Array, h0: jax.Array) -> jax.Array:
    """Each step's ``h_prev`` when every step is valid: ``ys`` shifted by one step (in scan order)
    with ``h0`` first. Shifting the ``(T, B, H)`` outputs is a small copy; slicing ``dgates`` instead
    would copy ``(T, B, 4H)``."""
    h0 = h0.astype(ys.dtype)
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


def loop_buffer(shape: tuple[int, ...], dtype, *sources: jax.Array) -> jax.Array:
    """A ``shape`` array of ``dtype`` for a backward loop to fill, one step per iteration.

    ``lax.scan`` starts its stacked outputs as zeros. XLA merges the equal zero buffers of all
    layers into one and copies it before the first loop writes, so two ``(T, B, 4H)`` buffers are
    live together from the start of the call (the 2-layer benchmark's temp memory: 389 MiB, against
    264 MiB with this), and every page of it is faulted in again on each call. A buffer broadcast
    from a value of this layer's own inputs cannot be merged and is made only when they exist;
    the loop overwrites every element.
    """
    seed = sum(a.reshape(-1)[-1] for a in sources)
    return jnp.broadcast_to(seed.astype(dtype), shape)
