"""`lax.top_k` over a wide vocabulary, in a fraction of its time on XLA:CPU.

XLA:CPU computes `lax.top_k` as one `std::partial_sort` per row, on one thread, through a
comparator it calls for every element and every heap move: 3.9 ms for 128 rows of 8,293 logits
at k = 64, where a vectorised max over the same array takes 0.08 ms. In a sampled decoding step
that was more than a third of the time. `top_k` hands `lax.top_k` a short list instead:

1. Strided blocks. The row is cut into `k` interleaved blocks (block `c` holds tokens `c`,
   `c + k`, `c + 2k`, ...; interleaved because the vocabulary is sorted by frequency, so the
   likeliest tokens would crowd the first contiguous block). On average a block holds one of the
   row's k largest, and `DEPTH` = 7 or more of them in about one block in 12,000 (Poisson(1)).
2. The `DEPTH` largest of every block, by `DEPTH` vectorised max passes, each over what the pass
   before left. Each logit is packed with its row in the block into one int32 (the float's
   order-preserving integer, its low bits replaced by the row), so keys are distinct and one max
   gives value and position together.
3. `lax.top_k` over those `DEPTH * k` candidates (pass-major: every block's largest first, which
   fills its heap early), on their exact float values.

Exact, not approximate: a token of the true top k can be missing from the candidates only if its
block had `DEPTH` candidates at least as large (by the packed key), and then that block's
smallest candidate is no smaller than the k-th value found (in the key's precision). The rows that
show that (about 0.7 a call for 128 rows of random logits at k = 64) are redone by `lax.top_k` on
their whole row, up to `REDO_ROWS` of them; past that, the whole batch is (a `lax.switch`). So
the values are always `lax.top_k`'s, to the bit, and so are the indices, except among exactly
equal logits: those may come in another order, and where they tie at the k-th place another of
them may be the one included (entries of -inf, which the decoding loop never samples, may name
any masked token).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["top_k", "DEPTH", "MIN_WIDTH", "REDO_ROWS"]

# Candidates kept per block (see the module docstring for the odds of needing more).
DEPTH = 7
# Rows whose candidates may fall short are redone alone, up to this many in a call.
REDO_ROWS = 4
# Rows narrower than this many times k go straight to lax.top_k: the passes would not pay.
MIN_WIDTH = 32


def _int_key(x: jax.Array) -> jax.Array:
    """int32 with the order of float32 `x` (-0.0 below +0.0, as lax.top_k's own comparator)."""
    bits = jax.lax.bitcast_convert_type(x, jnp.int32)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def top_k(x: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """`lax.top_k(x, k)` for float32 `x` (B, V): values (B, k) descending, their indices (B, k) int32.

    Same values as `lax.top_k`, always; same indices but for exact ties (module docstring)."""
    b, v = x.shape
    rows = v // k  # whole rows of the (rows, k) blocks; the last v % k tokens are candidates outright
    if v < MIN_WIDTH * k or x.dtype != jnp.float32:
        return jax.lax.top_k(x, k)
    low = (1 << (rows - 1).bit_length()) - 1
    # Lower rows get the larger low bits: among equal truncated keys the lower token wins.
    r = (rows - 1 - jnp.arange(rows, dtype=jnp.int32))[None, :, None]
    packed = (_int_key(x[:, : rows * k]).reshape(b, rows, k) & ~low) | r
    cand = [jnp.max(packed, axis=1)]
    for _ in range(DEPTH - 1):
        below = jnp.where(packed < cand[-1][:, None, :], packed, jnp.iinfo(jnp.int32).min)
        cand.append(jnp.max(below, axis=1))
    cand = jnp.concatenate(cand, axis=1)  # (B, DEPTH * k): pass-major
    tok = (rows - 1 - (cand & low)) * k + jnp.tile(jnp.arange(k, dtype=jnp.int32), DEPTH)[None, :]
    tok = jnp.concatenate([tok, jnp.broadcast_to(jnp.arange(rows * k, v, dtype=jnp.int32), (b, v - rows * k))], 1)
    vals, pos = jax.lax.top_k(jnp.take_along_axis(x, tok, axis=1), k)
    # Without the barrier XLA merges the gather below into the top_k, as a sort that carries `tok`
    # along: 7.8 ms where TopK takes 0.7.
    vals, pos = jax.lax.optimization_barrier((vals, pos))
    idx = jnp.take_along_axis(tok, pos, axis=1)
    # Could a block hold more of the top k than its DEPTH candidates? Its smallest candidate then
    # ranks at or above the k-th value found. (A block whose candidates run into -inf has none left.)
    kth = vals[:, -1:]
    last = cand[:, -k:]
    last_val = jnp.take_along_axis(x, tok[:, (DEPTH - 1) * k: DEPTH * k], axis=1)
    unsure = ((last & ~low) >= (_int_key(kth) & ~low)) & ((last_val > -jnp.inf) | (kth > -jnp.inf))
    # Usually no row is unsure; a few at times (a block holding DEPTH of the top k: ~0.7 rows a step
    # at k = 64, 128 rows of random logits): those rows alone are redone, and only where more than
    # REDO_ROWS are, the whole batch.
    rows_unsure = jnp.any(unsure, axis=1)
    n_unsure = jnp.sum(rows_unsure)

    def redo_rows():
        which = jnp.nonzero(rows_unsure, size=REDO_ROWS, fill_value=b)[0]  # b: dropped below
        v1, i1 = jax.lax.top_k(jnp.take(x, which, axis=0, mode="clip"), k)
        return vals.at[which].set(v1, mode="drop"), idx.at[which].set(i1, mode="drop")

    branch = jnp.where(n_unsure == 0, 0, jnp.where(n_unsure <= REDO_ROWS, 1, 2))
    return jax.lax.switch(branch, [lambda: (vals, idx), redo_rows, lambda: tuple(jax.lax.top_k(x, k))])
