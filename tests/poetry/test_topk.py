"""`topk.top_k` against `lax.top_k`: the same values to the bit, always; the same indices except
among exactly equal logits; and the rows whose candidates may fall short (a block holding many of
the top k) redone, alone or with the whole batch."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnjax.poetry import topk

fast = jax.jit(topk.top_k, static_argnums=1)


def compare(x, k, *, same_indices):
    x = np.asarray(x, np.float32)
    want_v, want_i = (np.asarray(a) for a in jax.lax.top_k(x, k))
    got_v, got_i = (np.asarray(a) for a in fast(x, k))
    np.testing.assert_array_equal(got_v, want_v)
    assert got_i.dtype == np.int32 and ((0 <= got_i) & (got_i < x.shape[1])).all()
    np.testing.assert_array_equal(np.take_along_axis(x, got_i, axis=1), got_v)  # each index holds its value
    for row_v, row_i in zip(got_v, got_i):
        finite = row_i[row_v > -np.inf]
        assert len(set(finite.tolist())) == len(finite)  # no token twice
    if same_indices:
        np.testing.assert_array_equal(got_i, want_i)


def distinct(rng, b, v):
    """(b, v) logits with no two equal in a row, spread like a model's (a few standing out)."""
    return np.stack([rng.permutation(v) for _ in range(b)]).astype(np.float32) / v * 4 + rng.normal(size=(b, 1))


# Passes as chains of maxima (8293/64, 2048/64, the last chained width) and as reductions (the rest).
@pytest.mark.parametrize("v, k", [(8293, 64), (8293, 8), (2048, 64), (20000, 16),
                                  (64 * topk.MAX_CHAIN_ROWS + 63, 64), (64 * topk.MAX_CHAIN_ROWS + 64, 64)])
def test_same_as_lax_top_k(v, k):
    rng = np.random.default_rng(v + k)
    compare(distinct(rng, 16, v), k, same_indices=True)


@pytest.mark.parametrize("v, k", [(8293, 64), (2048, 64), (64 * topk.MAX_CHAIN_ROWS + 64, 64), (2048, 8)])
def test_block_candidates_are_each_blocks_largest(v, k):
    """The passes (chains of maxima up to MAX_CHAIN_ROWS rows of blocks, reductions past it) find
    each strided block's DEPTH largest packed keys, pass-major, as a sort of each block does. (A
    slip here costs only speed in `top_k`, whose check redoes the rows it leaves unsure, so it is
    tested on its own.)"""
    rng = np.random.default_rng(v * k)
    x = np.concatenate([distinct(rng, 3, v), np.round(rng.normal(size=(2, v)) * 2)]).astype(np.float32)
    tok, cand, low = (np.asarray(a) for a in jax.jit(topk.block_candidates, static_argnums=1)(x, k))
    rows = v // k
    bits = x[:, : rows * k].view(np.int32)
    keys = ((bits ^ ((bits >> 31) & 0x7FFFFFFF)) & ~low).reshape(len(x), rows, k)
    keys = keys | (rows - 1 - np.arange(rows, dtype=np.int32))[None, :, None]
    want = -np.sort(-keys, axis=1)[:, : topk.DEPTH, :].reshape(len(x), -1)  # (B, DEPTH * k), pass-major
    np.testing.assert_array_equal(cand, want)
    want_tok = np.argsort(-keys, axis=1, kind="stable")[:, : topk.DEPTH, :] * k + np.arange(k)
    np.testing.assert_array_equal(tok[:, : topk.DEPTH * k], want_tok.reshape(len(x), -1))
    np.testing.assert_array_equal(tok[:, topk.DEPTH * k:], np.broadcast_to(np.arange(rows * k, v), (len(x), v % k)))


def test_rows_whose_block_holds_many_of_the_top_are_redone():
    """The largest logits all in one strided block (tokens 0, k, 2k, ...) of some rows: more than
    DEPTH of the top k there, so the candidates miss some. One such row is redone alone; more
    than REDO_ROWS, the whole batch."""
    rng = np.random.default_rng(0)
    v, k = 8293, 64
    for crowded in (1, topk.REDO_ROWS, topk.REDO_ROWS + 1, 16):
        x = distinct(rng, 16, v)
        x[:crowded, 0:k * 40:k] += 10.0  # 40 of the top 64 in block 0
        compare(x, k, same_indices=True)


def test_masked_rows_and_fewer_finite_logits_than_k():
    """-inf where the forms mask a token; a row may allow fewer than k (a rhyme position)."""
    rng = np.random.default_rng(1)
    x = distinct(rng, 8, 8293)
    x[:, 5000:] = -np.inf
    x[3, 20:] = -np.inf  # 20 allowed
    x[4, :] = -np.inf
    x[4, [7, 4000, 4063]] = 1.0, 3.0, 2.0  # 3 allowed, in one block's neighbourhood
    want_v, want_i = (np.asarray(a) for a in jax.lax.top_k(x, 64))
    compare(x, 64, same_indices=False)
    got_v, got_i = (np.asarray(a) for a in fast(x, 64))
    finite = want_v > -np.inf
    np.testing.assert_array_equal(got_i[finite], want_i[finite])  # only -inf entries may name other tokens


def test_ties_keep_the_values():
    rng = np.random.default_rng(2)
    compare(np.round(rng.normal(size=(8, 8293)) * 2), 64, same_indices=False)  # ~20 distinct values


def test_narrow_rows_small_batches_and_other_dtypes_are_lax_top_k():
    rng = np.random.default_rng(3)
    narrow = rng.normal(size=(4, topk.MIN_WIDTH * 64 - 1)).astype(np.float32)
    compare(narrow, 64, same_indices=True)
    compare(distinct(rng, topk.MIN_ROWS - 1, 8293), 64, same_indices=True)  # a small batch
    half = jnp.asarray(rng.normal(size=(4, 8293)), jnp.bfloat16)
    for got, want in zip(fast(half, 64), jax.lax.top_k(half, 64)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), k=st.sampled_from([4, 8, 64]), width=st.integers(0, 3000),
       levels=st.sampled_from([0, 2, 40]), masked=st.floats(0.0, 0.995), crowded=st.integers(0, 6))
def test_random_configurations(seed, k, width, levels, masked, crowded):
    """Logits of any scale; with `levels`, rounded to that many steps per unit (ties everywhere);
    a share `masked` of -inf; the first `crowded` rows with one block standing out."""
    rng = np.random.default_rng(seed)
    v = topk.MIN_WIDTH * k + width
    x = rng.normal(size=(8, v)) * 10.0 ** rng.uniform(-3, 6)
    if levels:
        x = np.round(x / x.std() * levels)
    x[rng.random(x.shape) < masked] = -np.inf
    block = int(rng.integers(k))
    x[:crowded, block::k] += 10 * np.abs(x[np.isfinite(x)]).max(initial=1.0)
    compare(x, k, same_indices=False)
