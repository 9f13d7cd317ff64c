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
   before left and each one fused loop over the keys (a chain of elementwise maxima over the
   blocks' rows, up to `MAX_CHAIN_ROWS` of them). Each logit is packed with its row in the block
   into one int32 (the float's order-preserving integer, its low bits replaced by the row), so keys
   are distinct and one max gives value and position together.
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

import functools

import jax
import jax.numpy as jnp

__all__ = ["top_k", "block_candidates", "DEPTH", "MIN_WIDTH", "MAX_CHAIN_ROWS", "MIN_ROWS", "REDO_ROWS"]

# Candidates kept per block (see the module docstring for the odds of needing more).
DEPTH = 7
# Rows whose candidates may fall short are redone alone, up to this many in a call.
REDO_ROWS = 4
# Rows narrower than this many times k go straight to lax.top_k: the passes would not pay.
MIN_WIDTH = 32
# Batches of fewer rows go straight to lax.top_k, faster there (0.020 against 0.085 ms for one row of
# 8,293 at k = 64; 0.084 against 0.069 at 4 rows), and the one-poem command then traces no passes.
MIN_ROWS = 4
# Up to this many rows of blocks (a vocabulary of 12,288 at k = 64) the passes run as chains of
# maxima over (B, k) slices; past it as reductions (see `top_k`; measured at 128 rows of logits:
# chains 1.94 against 2.74 ms at 129 rows, 2.44 against 3.54 at 187, 4.05 against 4.44 at 218,
# 8.82 against 4.62 at 250).
MAX_CHAIN_ROWS = 192


def _int_key(x: jax.Array) -> jax.Array:
    """int32 with the order of float32 `x` (-0.0 below +0.0, as lax.top_k's own comparator)."""
    bits = jax.lax.bitcast_convert_type(x, jnp.int32)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def block_candidates(x: jax.Array, k: int) -> tuple[jax.Array, jax.Array, int]:
    """Steps 1 and 2 of the module docstring for float32 `x` (B, V) with V >= k: `(tok, cand, low)`.

    `tok` (B, DEPTH * k + V % k) int32: the tokens of each block's DEPTH largest logits, pass-major
    (every block's largest, then every block's second, ...), followed by the last V % k tokens.
    `cand` (B, DEPTH * k) int32: their packed keys (the float's order-preserving integer with its
    `low` bits replaced by the row in the block, lower rows larger), distinct within a block since
    a block has at least MIN_WIDTH > DEPTH rows."""
    b, v = x.shape
    rows = v // k  # whole rows of the (rows, k) blocks; the last v % k tokens are candidates outright
    low = (1 << (rows - 1).bit_length()) - 1
    row = jnp.repeat(rows - 1 - jnp.arange(rows, dtype=jnp.int32), k)  # each token's row, reversed
    keys = (_int_key(x[:, : rows * k]) & ~low) | row[None, :]  # (B, rows * k)
    floor = jnp.iinfo(jnp.int32).min
    if rows <= MAX_CHAIN_ROWS:
        # Each pass as a chain of elementwise maxima over the rows' (B, k) slices: XLA:CPU fuses it
        # into one loop that reads the keys once, where `max` over the middle axis of (B, rows, k)
        # became a select and a reduce-window, two passes each. 256 sampled poems: 1.33x the
        # poems/s. Past MAX_CHAIN_ROWS slices the chain's fusion gets slower than the reduce.
        # (Written in lax ops: a few thousand of them, traced in every process before the
        # compilation cache is consulted, take half the time of jnp's.)
        slices = [jax.lax.slice_in_dim(keys, j * k, (j + 1) * k, axis=1) for j in range(rows)]
        none = jax.lax.full((b, k), floor, jnp.int32)
        cand = [functools.reduce(jax.lax.max, slices)]
        for _ in range(DEPTH - 1):
            below = [jax.lax.select(jax.lax.lt(r, cand[-1]), r, none) for r in slices]
            cand.append(functools.reduce(jax.lax.max, below))
    else:
        packed = keys.reshape(b, rows, k)
        cand = [jnp.max(packed, axis=1)]
        for _ in range(DEPTH - 1):
            cand.append(jnp.max(jnp.where(packed < cand[-1][:, None, :], packed, floor), axis=1))
    cand = jnp.concatenate(cand, axis=1)  # (B, DEPTH * k): pass-major
    tok = (rows - 1 - (cand & low)) * k + jnp.tile(jnp.arange(k, dtype=jnp.int32), DEPTH)[None, :]
    tok = jnp.concatenate([tok, jnp.broadcast_to(jnp.arange(rows * k, v, dtype=jnp.int32), (b, v - rows * k))], 1)
    return tok, cand, low


def top_k(x: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """`lax.top_k(x, k)` for float32 `x` (B, V): values (B, k) descending, their indices (B, k) int32.

    Same values as `lax.top_k`, always; same indices but for exact ties (module docstring)."""
    b, v = x.shape
    if v < MIN_WIDTH * k or b < MIN_ROWS or x.dtype != jnp.float32:
        return jax.lax.top_k(x, k)
    tok, cand, low = block_candidates(x, k)
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
