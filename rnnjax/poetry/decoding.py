"""The decoding loop: one `lax.while_loop` that writes a batch of poems, every rule a mask on the logits.

Every constraint (forced prefix tokens, acrostic heads, line length and punctuation, rhyme class,
格律, repetition) is carried as arrays and applied by masking the logits, so one compiled loop
serves any prefix, form or sampling setting of the same batch size and `max_len`.
`rnnjax.poetry.generation.Generator` validates the requests and builds the loop's per-poem arrays
(`batch`) and per-vocabulary tables (`tab`); `decode` runs it. Everything here is traced.

格律 (`meter=True`, and `rhyme="pingshui"`): the poem's template (one of `prosody.TEMPLATES`, chosen
in Python before decoding) is a per-poem index into a stacked `(19, 8, 7)` code table (the 16
templates, two rhyme-only pseudo-templates for `--rhyme pingshui`, one all-free row for the other
poems). At a character position of a fixed form the code picks one of six extra rows of the kind
table (the character row and-ed with `prosody.ProsodyTables.rows`), so the tone pattern costs no
more per step than the line-length mask; at a rhyme position (a `lax.cond`, taken on the few steps
where some poem is at one) the tokens outside the poem's running 平水韵 group bitmask and those
already used are masked too. The loop carries `prosody.MaskState` as arrays - `guard_debt` (B,),
`rhyme_groups` (B,) int32 and `used_rhymes` (B, 5) - and forced tokens update it exactly as
sampled ones do (`prosody.advance` is the numpy reference of one step). A batch without 格律 or
平水韵 rhyme compiles the loop without any of this.

Repetition (on unless `allow_repeats`): no line may repeat an earlier line of the poem, in every form
(律诗 and free form included: a repeated line is never what a reader wants), and in a 绝句 (5x4, 7x4)
no character may appear more than twice (`CHAR_CAP`; only there: 28 characters leave no room for the
refrain a longer poem may keep). Both are masks in the loop: the token that would complete a line
identical to an earlier one is refused (a fixed form's last character, the last token of a free line
at its longest, free form's closing mark), and in a 绝句 so is every character already written twice.
Prefix and acrostic characters count (an acrostic's heads from the start) but are never refused,
punctuation and specials are exempt, and where the masks together would leave no token (a 格律 or
rhyme position whose few candidates are all capped) the repetition mask gives way for that step.
The loop carries where each finished line starts (B, lines), which earlier lines still agree with
the current one, and the list of capped characters (B, 14).

Scores and --best-of: with `score=True` (and always with --best-of) the loop adds up, per poem, log
softmax of the model's raw logits (temperature 1, before top-k / top-p and every mask) at each token
the model chose - not the prefix or acrostic heads, nor the form's punctuation and final <EOP> (the
only token the form allows there). The mean over those tokens is `Poem.logprob`. The log-sum-exp is
one more pass over the vocabulary per step (~5% of a 256-poem sampled batch, ~10% of a greedy one),
so a loop that has no use for scores (the CLI without --json) is compiled without it. With
`Sampling.best_of` N, each poem is decoded as N candidates in the same batch (poems x N rows;
candidate 0 is the plain sample) and the candidate with the highest mean is kept, chosen in the
compiled program.

Greedy decides structure by mass: the allowed tokens fall into three classes by what they do to the
poem - <EOP> (end it), a line-closing mark (end the line), anything else (go on) - and greedy first
takes the class with the most probability, then the likeliest token inside it. Plain argmax ended
all 20 free-form poems of bench/decoding_quality.py (shipped model) after one couplet: after `。`
<EOP> (p 0.02-0.24, median 0.05) beats every single character (p <= 0.03), although going on holds
77-98% of the mass. Sampling is unchanged (it samples tokens, and so classes, in proportion).
`Sampling(plain_argmax=True)` keeps the old rule, for comparison.

Decoding order: the model first reads `<START>` (and, with a style, `<START>` + style, as
pytorch-book's `prefix_words`: the poem then continues straight from the style's state, no second
`<START>`, because training never shows `<START>` mid-sequence). Each step predicts one token; a
forced token (prefix character, acrostic head) replaces the prediction.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from rnnjax import cells, recurrent
from rnnjax.poetry import forms, prosody, topk

__all__ = ["decode", "stack_step", "input_table", "candidate_keys", "keep_best", "invert_mass", "CANDIDATES",
           "CANDIDATE_TAG", "DRAW_BLOCK",
           "EXACT_CANDIDATES",
           "CHAR_CAP", "CAP_FORMS", "CAP_SLOTS", "GO_ON", "CLOSE", "END",
           "TEMPLATE_RHYME5", "TEMPLATE_RHYME7", "TEMPLATE_NONE"]

# --top-k / --top-p choose among this many likeliest allowed tokens (see `_choose`).
CANDIDATES = 64
# Sampling from the whole distribution sums its mass in blocks of this many tokens (see `_draw`).
DRAW_BLOCK = 128
# Greedy in bfloat16/float16 re-scores this many best candidates in float32 (see `_exact_best`).
EXACT_CANDIDATES = 3
# --best-of: candidate 0 draws with the poem's own key (so it is the plain sample); candidate j > 0
# with the key folded with CANDIDATE_TAG, then j (see `candidate_keys`).
CANDIDATE_TAG = 0x62657374
# Repetition: in the forms of CAP_FORMS (绝句) no character more than CHAR_CAP times. A 七言绝句 has 28
# characters, so at most 14 distinct ones reach the cap: the loop's list of capped characters.
CHAR_CAP = 2
CAP_FORMS = ("5x4", "7x4")
CAP_SLOTS = 28 // CHAR_CAP
# Greedy's token classes (see the module docstring): go on, close the line, end the poem. On a tie of
# masses the earlier class wins: a tie goes on.
GO_ON, CLOSE, END = 0, 1, 2
# Rows of the loop's stacked code table after the 16 templates: --rhyme pingshui for 5- and
# 7-character lines, then the all-FREE row of every poem without 格律.
TEMPLATE_RHYME5, TEMPLATE_RHYME7, TEMPLATE_NONE = (len(prosody.TEMPLATES) + k for k in range(3))


def _kind(line, col, n_lines, line_len, line_cap, n_heads, rhyme_on, rhyme_cls):
    """(B,) int: which row of `forms.kind_table` each poem draws its next token from."""
    # Fixed form: line_len characters, then `，` (odd lines) or `。` (even lines, last line), then <EOP>.
    period = (line % 2 == 1) | (line == n_lines - 1)
    rhyme_pos = rhyme_on & (col == line_len - 1) & (line % 2 == 1)
    char = jnp.where(rhyme_pos, jnp.where(rhyme_cls >= 0, forms.K_RHYME + rhyme_cls, forms.K_RHYME_ANY),
                     forms.K_CHAR)
    fixed = jnp.where(line >= n_lines, forms.K_EOP,
                      jnp.where(col == line_len, jnp.where(period, forms.K_PERIOD, forms.K_COMMA), char))
    # Free form: no empty line, lines of at most line_cap tokens, <EOP> only after a closed line, and
    # with an acrostic exactly n_heads lines.
    start = jnp.where((line > 0) & (line >= n_heads), forms.K_FREE_START_OR_END, forms.K_FREE_START)
    free = jnp.where(col == 0, start, jnp.where(col >= line_cap, forms.K_FREE_CLOSE, forms.K_FREE_BODY))
    free = jnp.where((n_heads > 0) & (line >= n_heads), forms.K_EOP, free)
    return jnp.where(line_len == 0, free, fixed)


def _argmax(x):
    """First index of the maximum; two plain reductions, faster on CPU than argmax's variadic one."""
    m = jnp.max(x, axis=-1, keepdims=True)
    return jnp.min(jnp.where(x == m, jnp.arange(x.shape[-1]), x.shape[-1]), axis=-1).astype(jnp.int32)


def _choose(step, logits, temperature, top_k, top_p, poem_keys, mode):
    """Next token per poem from masked logits (disallowed tokens are -inf).

    mode "greedy": argmax. "full": sample the whole distribution. "cut": top-k / top-p among the
    CANDIDATES likeliest tokens (a partial sort: a full sort of the vocabulary costs more than the
    model on a CPU); the nucleus is measured within those candidates.
    """
    if mode == "greedy":
        return _argmax(logits)
    keys = jax.vmap(jax.random.fold_in, (0, None))(poem_keys, step)
    if mode == "full":
        return _draw(keys, logits / temperature)
    n = min(CANDIDATES, logits.shape[-1])
    vals, idx = topk.top_k(logits, n)  # sorted, descending
    vals = vals / temperature
    keep = jnp.arange(n)[None, :] < jnp.where(top_k > 0, top_k, n)
    probs = jax.nn.softmax(vals, axis=-1)
    # The smallest head of the sorted list whose mass reaches top_p (the first token always stays).
    keep &= (jnp.cumsum(probs, axis=-1) - probs) < top_p
    pick = jax.vmap(jax.random.categorical)(keys, jnp.where(keep, vals, -jnp.inf))
    return jnp.take_along_axis(idx, pick[:, None], axis=-1)[:, 0].astype(jnp.int32)


def _draw(keys, scaled, block=DRAW_BLOCK):
    """One token per row from softmax(`scaled`) (B, V), by inverting the cumulative mass at one
    uniform number per row: the first token whose cumulative mass reaches u times the total.

    Why not `jax.random.categorical`: its Gumbel-max draws threefry noise for every token of every
    row, 13 ms at 128 x 8,293 on a CPU where this takes 0.9 ms; it made sampling from the whole
    distribution (--top-p 1) 5.8x slower than --top-p 0.9. The cumulative sum is taken in two
    levels, over blocks of `block` tokens and then inside the chosen block (a flat `cumsum` over the
    vocabulary: 2.3 ms). A token of no mass (masked, -inf, or padding) is never drawn (see
    `invert_mass`)."""
    m = jnp.max(scaled, axis=-1, keepdims=True)
    mass = jnp.exp(scaled - jnp.where(jnp.isfinite(m), m, 0.0))
    return invert_mass(mass, 1.0 - jax.vmap(jax.random.uniform)(keys), block)


def invert_mass(e, u, block=DRAW_BLOCK):
    """`_draw`'s inversion: per row of the masses `e` (B, V) (>= 0, not all 0), the first token
    whose cumulative mass reaches `u` (B,) in (0, 1] times the row's total; never a token of zero mass."""
    b, v = e.shape
    n = -(-v // block)
    blocks = jnp.pad(e, ((0, 0), (0, n * block - v))).reshape(b, n, block)
    upto = jnp.cumsum(blocks.sum(axis=-1), axis=-1)  # (B, n): mass up to the end of each block
    target = u * upto[:, -1]
    # Clipped to the blocks and tokens with mass, where rounding could step past them: u times the
    # total can underflow to 0 before the first, and the block's own sum can fall short at the last.
    k = jnp.clip(jnp.sum(upto < target[:, None], axis=-1), jnp.argmax(upto > 0, axis=-1), n - 1)
    before = jnp.where(k > 0, jnp.take_along_axis(upto, jnp.maximum(k - 1, 0)[:, None], axis=1)[:, 0], 0.0)
    inner = jnp.take_along_axis(blocks, k[:, None, None], axis=1)[:, 0]  # (B, block)
    first, last = jnp.argmax(inner > 0, axis=-1), block - 1 - jnp.argmax(inner[:, ::-1] > 0, axis=-1)
    j = jnp.clip(jnp.sum(jnp.cumsum(inner, axis=-1) < (target - before)[:, None], axis=-1), first, last)
    return (k * block + j).astype(jnp.int32)


def _rhyme_bias(tab, rhyme_groups, used, at_rhyme, logits):
    """-inf on the tokens a RHYME position forbids: outside every group still open for the poem,
    or a rhyme used before (`used` holds token ids, V where empty). Only rows `at_rhyme` change."""
    ok = (tab["groups"][None, :] & rhyme_groups[:, None]) != 0
    ok = ok.at[jnp.arange(ok.shape[0])[:, None], used].set(False, mode="drop")
    return jnp.where(at_rhyme[:, None] & ~ok, -jnp.inf, logits)


def _greedy(logits, tab, mixed):
    """Greedy by class: the class (go on / close the line / end the poem) with the most probability
    among the allowed tokens, then the likeliest token of that class. (B,) int32.

    Why: ending or closing a line is one token, going on is thousands, so the plain argmax ends when
    <EOP> is merely the single likeliest token - after `。` the shipped model gives <EOP> ~0.05 and
    its best character ~0.02, and free-form greedy poems stopped after one couplet. Deciding the
    event by its mass - end iff P(<EOP>) > P(go on) where only the two are allowed - is greedy on
    the choice the token actually makes. Where a row's kind allows one class only (every step of a
    fixed form) this is the plain argmax; when no row is `mixed`, the masses are not computed.

    The two small classes are read off by index (`tab["special"]`: the marks, then <EOP>), so the
    vocabulary is passed over three times: the best token that goes on, the mass that goes on, and
    the index of that best token."""
    def by_class():
        go = logits + tab["go_bias"]
        go_max = jnp.max(go, axis=-1)
        special = jnp.take_along_axis(logits, jnp.broadcast_to(tab["special"], (logits.shape[0], 6)), axis=1,
                                      mode="fill", fill_value=-jnp.inf)
        m = jnp.maximum(go_max, jnp.max(special, axis=-1))
        m = jnp.where(jnp.isfinite(m), m, 0.0)[:, None]
        close_end = jnp.exp(special - m)  # 0 where masked
        mass = jnp.stack([jnp.sum(jnp.exp(go - m), axis=-1), jnp.sum(close_end[:, :5], axis=-1), close_end[:, 5]], -1)
        cls = _argmax(mass)  # the first of equal masses: a tie goes on
        go_tok = jnp.min(jnp.where(go == go_max[:, None], jnp.arange(go.shape[1]), go.shape[1]), axis=-1)
        close_tok = tab["special"][_argmax(special[:, :5])]
        return jnp.select([cls == GO_ON, cls == CLOSE], [go_tok, close_tok], tab["special"][5]).astype(jnp.int32)
    return jax.lax.cond(jnp.any(mixed), by_class, lambda: _argmax(logits))


def _exact_best(logits, tok, h, exact, klass, n=EXACT_CANDIDATES):
    """Greedy's token re-decided in float32: among the `n` likeliest allowed tokens of `tok`'s class
    (by the half-precision `logits`), the one whose logit under the float32 output layer `exact`
    ((V, H) kernel rows, bias) is the highest, the likelier first on a tie. (B,) int32.

    Why: rounding the output layer's weights to bfloat16 moves a logit by about 1e-2, enough to flip
    a near-tie between the two best characters, and one flipped character changes the rest of a
    greedy poem. Recomputing a few candidates' logits costs n dot products of H per row."""
    kernel, bias = exact
    cols = jnp.arange(logits.shape[1])
    x = jnp.where(klass[None, :] == klass[tok][:, None], logits, -jnp.inf)
    cand = [tok]
    for _ in range(n - 1):
        x = jnp.where(cols[None, :] == cand[-1][:, None], -jnp.inf, x)
        cand.append(_argmax(x))
    cand = jnp.stack(cand, axis=1)  # (B, n), likeliest first
    allowed = jnp.isfinite(jnp.take_along_axis(logits, cand, axis=1))
    score = jnp.einsum("bnh,bh->bn", kernel[cand], h.astype(jnp.float32)) + bias[cand]
    best = _argmax(jnp.where(allowed, score, -jnp.inf))
    return jnp.take_along_axis(cand, best[:, None], axis=1)[:, 0]


def _repeat_mask(tab, batch, s, earlier, kind, narrowed, rhyme_pos, logits_fn):
    """-inf on the tokens the repetition rules refuse this step, unless that leaves a row no token.
    `logits_fn()`: the logits with the forms' and 格律's masks (called again, in the rare step where
    some row gives way, instead of keeping a copy of the logits at every step). `narrowed` (B,):
    rows whose allowed tokens are fewer than their kind's (a 格律 rhyme position). `rhyme_pos` (B,):
    rows at a `--rhyme modern` rhyme.

    Refused: the last token of a line that must close next (a fixed form's last character, a free
    line at its longest) when the line would then equal an earlier line (`earlier` (B, lines): each
    earlier line's token at this column; `match`: the earlier lines that agree with this line so
    far); free form's closing marks when the line so far equals an earlier line; in a 绝句 every
    character already written CHAR_CAP times (`capped`); at a `--rhyme modern` rhyme, a rhyme
    character used before (重韵, which a teacher marks wrong; 平水韵 rhyme refuses it in its mask)."""
    col, v = s["col"], tab["go_bias"].shape[0]
    same = s["match"] & batch["no_repeat"][:, None]
    longest = jnp.where(batch["line_len"] > 0, batch["line_len"], batch["line_cap"])
    last = jnp.where(same & (col == longest - 1)[:, None] & (s["lens"] == col[:, None] + 1), earlier, v)
    free_done = (batch["line_len"] == 0) & (col > 0) & jnp.any(same & (s["lens"] == col[:, None]), axis=1)
    marks = jnp.where(free_done[:, None], tab["special"][None, :5], v)
    capped = jnp.where(batch["char_cap"][:, None], s["capped"], v)
    # Fixed forms have at most 8 lines; the rhymes stand at the end of every second one.
    k = jnp.arange(min(8, earlier.shape[1]))[None, :]
    rhymed = jnp.where((batch["no_repeat"] & rhyme_pos)[:, None] & (k % 2 == 1) & (k < s["line"][:, None]), earlier[:, : k.shape[1]], v)
    refused = jnp.concatenate([last, marks, capped, rhymed], axis=1)
    rows = jnp.arange(refused.shape[0])[:, None]
    masked = logits_fn().at[rows, refused].set(-jnp.inf, mode="drop")  # in place
    # The forms' and 格律's masks come first: where they leave nothing else, a repeat is written.
    # A row can be left without a token only if it refuses as many tokens as its kind allows (or its
    # rhyme mask narrowed them): only then is the vocabulary searched. (And only the refused entries
    # pass through the conds: a (B, V) array would be copied every step.)
    n_refused = jnp.sum(refused < v, axis=1)
    at_risk = (n_refused > 0) & ((n_refused >= tab["n_allowed"][kind]) | narrowed)
    left = jax.lax.cond(jnp.any(at_risk), lambda: jnp.max(masked, axis=-1) > -jnp.inf,
                        lambda: jnp.ones(refused.shape[0], bool))
    kept = jax.lax.cond(jnp.all(left), lambda: jnp.zeros(refused.shape, masked.dtype),
                        lambda: jnp.take_along_axis(logits_fn(), jnp.minimum(refused, v - 1), axis=1))
    return masked.at[rows, jnp.where(left[:, None], v, refused)].set(kept, mode="drop")


def _advance_repeats(tab, batch, s, earlier, tok, ends, use_head):
    """The repetition state after `tok` (sampled or forced alike): the finished line's start and
    length, which earlier lines still agree with the current one, the capped characters."""
    k = jnp.arange(s["match"].shape[1])[None, :]
    line, col = s["line"][:, None], s["col"][:, None]
    closes = ends[:, None] & (k == line)
    agree = s["match"] & (earlier == tok[:, None]) & (s["lens"] > col)
    # Occurrences of `tok` so far, the acrostic heads still to come included (they were counted from
    # the start, so writing one adds nothing); the occurrence that reaches CHAR_CAP enters the list.
    later_heads = (batch["heads"] == tok[:, None]) & (jnp.arange(batch["heads"].shape[1])[None, :] > line)
    seen = jnp.sum(s["out"] == tok[:, None], axis=1) + jnp.sum(later_heads, axis=1)
    reach = batch["char_cap"] & tab["content"][tok] & (seen == CHAR_CAP - 1) & ~s["done"] & ~use_head
    slot = reach[:, None] & (jnp.arange(CAP_SLOTS)[None, :] == s["n_capped"][:, None])
    return dict(
        starts=jnp.where(closes, s["line_start"][:, None], s["starts"]),
        lens=jnp.where(closes, col, s["lens"]),
        match=jnp.where(ends[:, None], k <= line, agree),  # a new line agrees with every line so far
        line_start=jnp.where(ends, s["t"] + 1, s["line_start"]),
        capped=jnp.where(slot, tok[:, None], s["capped"]),
        n_capped=s["n_capped"] + reach,
    )


def output_product(features, kernel):
    """(B, V) float32: `features` (B, H) times the output layer's `kernel` (V, H) transposed, the
    operands in the kernel's dtype with float32 sums.

    One half-precision row takes another form: `kernel @ [h h]`, h as two columns. In the decoding
    loop, inside the `lax.cond` that skips the output layer, XLA:CPU runs a half-precision
    `(1, H) @ (H, V)` by converting the whole kernel to float32 every step, which made one bfloat16
    poem 1.7x slower than a float32 one; with the kernel as the left operand and two columns (one
    column is slow again) a 48-step loop of it took 5.5 ms where the row form took 22.5 and float32
    8.9. From two rows up the row form is the fast one (8.9 against 25 ms at 2 rows)."""
    if features.shape[0] == 1 and kernel.dtype != jnp.float32:
        cols = jnp.broadcast_to(features.astype(kernel.dtype).T, (features.shape[1], 2))
        return jax.lax.dot_general(kernel, cols, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)[:, :1].T
    return jax.lax.dot_general(features.astype(kernel.dtype), kernel, (((1,), (1,)), ((), ())),
                               preferred_element_type=jnp.float32)


def candidate_keys(key, poem_ids, best_of):
    """(B * best_of,) keys, candidates of a poem together: candidate 0 has the poem's own key (as
    without --best-of), candidate j > 0 the poem's key folded with CANDIDATE_TAG and then j."""
    poem_keys = jax.vmap(jax.random.fold_in, (None, 0))(key, poem_ids)
    if best_of == 1:
        return poem_keys
    rows = jnp.repeat(poem_keys, best_of)
    j = jnp.tile(jnp.arange(best_of, dtype=jnp.uint32), poem_ids.shape[0])
    tagged = jax.vmap(jax.random.fold_in, (0, None))(rows, CANDIDATE_TAG)
    others = jax.vmap(jax.random.fold_in)(tagged, j)
    data = jnp.where((j == 0)[:, None], jax.random.key_data(rows), jax.random.key_data(others))
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(key))


def stack_step(cfg, params, gx0, hx):
    """One time step of a unidirectional recurrent stack, `rnnjax.recurrent.apply` on a one-step
    input, but from the first layer's input projection `gx0` (B, G*H) instead of its input: the
    decoding loop reads that projection from a table (`input_table`), one row per token, where a
    matmul would cost a fifth of the stack's work. `hx` and the result's state are shaped as
    `apply`'s (`(h, c)` for an LSTM, each (layers, B, H)); the output is the last layer's h (B, H).
    The matmuls take h's dtype (see `apply`'s precision)."""
    lstm = cfg.mode == "LSTM"
    h, c = hx if lstm else (hx, None)
    hs, cs, y = [], [], None
    for layer in range(cfg.num_layers):
        p = recurrent.layer_params(params, layer, 0)
        gx = gx0 if layer == 0 else cells.input_projection(p, y)
        carry, y = cells.STEPS[cfg.mode](p, (h[layer], c[layer]) if lstm else h[layer], gx)
        hs.append(carry[0] if lstm else carry)
        if lstm:
            cs.append(carry[1])
    return y, ((jnp.stack(hs), jnp.stack(cs)) if lstm else jnp.stack(hs))


def input_table(model) -> jax.Array:
    """(V, G*H) float32: the first recurrent layer's input projection `W_ih x + b_ih` of every
    token's embedding, for `stack_step`."""
    p = recurrent.layer_params(model.rnn.params_dict(), 0, 0)
    return cells.input_projection(p, jnp.asarray(model.embeddings.embedding[...], jnp.float32))


@functools.partial(jax.jit, static_argnames=("graphdef", "max_len", "mode", "meter", "repeats", "best_of", "score",
                                             "recurrent_dtype"))
def decode(graphdef, params, out_layer, exact, table, tab, batch, specials, key, poem_ids, temperature, top_k, top_p,
           *, max_len, mode, meter=False, repeats=False, best_of=1, score=False, recurrent_dtype=None):
    model = nnx.merge(graphdef, params)
    cfg, rnn_params = model.rnn.config, model.rnn.params_dict()

    def rnn(tokens, hx):
        """The recurrent stack on one step of tokens (B,): what `model.rnn(model.embeddings(...))`
        computes, its first matmul a row of `table` (`stack_step`). With `recurrent_dtype` the
        matmuls take that dtype (h is carried in it; c stays float32, as `recurrent.apply` does)."""
        return stack_step(cfg, rnn_params, table[tokens], hx)

    n_poems = batch["first"].shape[0]
    if best_of > 1:  # every candidate of a poem is a row of its own, next to the poem's other candidates
        batch = jax.tree.map(lambda a: jnp.repeat(a, best_of, axis=0), batch)
    b = batch["first"].shape[0]
    pad_id, eop_id = specials[0], specials[1]
    # Randomness depends on (seed, poem index, candidate, step) only: poem i is the same whatever --num is.
    poem_keys = candidate_keys(key, poem_ids, best_of)

    # The zero state, shaped as `recurrent.apply` makes it: h (layers, B, out_hidden) in the matmuls'
    # dtype, and for an LSTM c (layers, B, hidden) in float32.
    h = jnp.zeros((cfg.num_layers, b, cfg.out_hidden), recurrent_dtype or jnp.float32)
    hx = (h, jnp.zeros((cfg.num_layers, b, cfg.hidden_size), jnp.float32)) if cfg.mode == "LSTM" else h

    def prime_step(hx, xs):
        t, tok = xs
        _, new = rnn(tok, hx)
        live = t < batch["prime_len"]
        return jax.tree.map(lambda n, o: jnp.where(live[None, :, None], n, o), new, hx), None

    p = batch["prime"].shape[1]
    if p:
        hx, _ = jax.lax.scan(prime_step, hx, (jnp.arange(p), batch["prime"].T))

    # The output layer's bias added to each kind's mask (0 or -inf) once, not to the logits each step:
    # one pass over (B, V) fewer, and the same sums (x + (b + 0) is (x + b) + 0).
    kind_bias = tab["bias"] + out_layer[1][None, :]
    zeros = jnp.zeros(b, jnp.int32)
    init = dict(t=jnp.int32(0), inp=batch["first"], hx=hx, line=zeros, col=zeros, rhyme_cls=zeros - 1,
                done=jnp.zeros(b, bool), out=jnp.full((b, max_len), pad_id, jnp.int32))
    if score:
        init.update(lp_sum=jnp.zeros(b, jnp.float32), lp_n=zeros)
    if meter:  # prosody.MaskState, one row per poem
        v = tab["groups"].shape[0]
        init.update(guard_debt=jnp.zeros(b, bool), rhyme_groups=batch["rhyme_groups"],
                    used_rhymes=jnp.full((b, prosody.MAX_RHYMES), v, jnp.int32), n_used=zeros)
    if repeats:  # every line holds a character and its mark: at most max_len // 2 finished lines
        n_slots = max_len // 2 + 1
        init.update(line_start=zeros, starts=jnp.zeros((b, n_slots), jnp.int32),
                    lens=jnp.zeros((b, n_slots), jnp.int32), match=jnp.zeros((b, n_slots), bool),
                    capped=batch["capped"], n_capped=batch["n_capped"])

    def cond(s):
        return (s["t"] < max_len) & ~jnp.all(s["done"])

    def body(s):
        # model(tokens, hx) split in two, so that the output layer (most of a step's work at a
        # vocabulary of thousands) runs only when some poem's next token is still open.
        features, hx = rnn(s["inp"], s["hx"])
        line, col = s["line"], s["col"]
        kind = _kind(line, col, batch["n_lines"], batch["line_len"], batch["line_cap"], batch["n_heads"],
                     batch["rhyme"], s["rhyme_cls"])
        rhyme_pos = batch["rhyme"] & (col == batch["line_len"] - 1) & (line % 2 == 1)  # --rhyme modern
        if meter:
            # The template's code at this character (FREE off the characters of a fixed form).
            in_line = (line < batch["n_lines"]) & (col < batch["line_len"])
            code = tab["codes"][batch["tmpl"], jnp.clip(line, 0, 7), jnp.clip(col, 0, 6)]
            code = jnp.where(in_line, code, prosody.FREE)
            row = jnp.where((code == prosody.GUARD) & s["guard_debt"], prosody.GUARD_DEBT, code)
            kind = jnp.where(in_line & (batch["tmpl"] != TEMPLATE_NONE), forms.N_KINDS + row, kind)
            at_rhyme = code == prosody.RHYME
        forced = jax.lax.dynamic_index_in_dim(batch["forced"], s["t"], axis=1, keepdims=False)
        head = jnp.take_along_axis(batch["heads"], jnp.clip(line, 0, max_len - 1)[:, None], axis=1)[:, 0]
        use_head = (col == 0) & (line < batch["n_heads"])
        determined = s["done"] | (forced >= 0) | use_head | tab["single"][kind]

        if repeats:  # each earlier line's token at this column
            at = jnp.clip(s["starts"] + col[:, None], 0, max_len - 1)
            earlier = jnp.take_along_axis(s["out"], at, axis=1)

        def choose():
            """Each poem's token from its masked logits, and (with `score`) the model's log-probability of it."""
            # The output layer in the weights' dtype with float32 sums and logits (a bfloat16 matmul
            # with a bfloat16 result is slower on CPUs than float32); the log-sum-exp here, next to
            # the matmul, is the one extra pass over the vocabulary that the scores cost.
            kernel, bias = out_layer  # (V, H)
            product = output_product(features, kernel)
            lse = jax.nn.logsumexp(product + bias, axis=-1) if score else jnp.zeros(b)

            def masked_logits():
                logits = product + kind_bias[kind]  # the output layer's bias is in kind_bias
                if meter:
                    logits = jax.lax.cond(
                        jnp.any(at_rhyme),
                        functools.partial(_rhyme_bias, tab, s["rhyme_groups"], s["used_rhymes"], at_rhyme),
                        lambda x: x, logits)
                return logits

            if repeats:
                logits = _repeat_mask(tab, batch, s, earlier, kind, at_rhyme if meter else jnp.zeros(b, bool),
                                      rhyme_pos, masked_logits)
            else:
                logits = masked_logits()
            if mode == "greedy":
                sampled = _greedy(logits, tab, tab["mixed"][kind] & ~determined)
                if exact is not None:
                    sampled = _exact_best(logits, sampled, features, exact, tab["klass"])
            elif mode == "argmax":
                sampled = _argmax(logits)
            else:
                sampled = _choose(s["t"], logits, temperature, top_k, top_p, poem_keys, mode)
            # The model's own log-probability of the token it chose (temperature 1, no mask): a chosen
            # token's masked logit is its raw one (the masks add 0 or -inf, and the repetition mask
            # restores what it gives way on).
            lp = jnp.take_along_axis(logits, sampled[:, None], axis=1)[:, 0] - lse if score else jnp.zeros(b)
            return sampled, lp

        # Where every token is forced, a head, past <EOP> or the one token its kind allows (a line's
        # mark, <EOP>), no logits are needed: no output layer, the kind's own token, and no score.
        # (Forced, head and finished rows have theirs replaced just below.)
        sampled, lp = jax.lax.cond(jnp.all(determined), lambda: (tab["only"][kind], jnp.zeros(b)), choose)
        tok = jnp.where(forced >= 0, forced, jnp.where(use_head, head, sampled))
        tok = jnp.where(s["done"], pad_id, tok)
        ends = tab["ender"][tok]
        rhyme_cls = jnp.where(rhyme_pos & (s["rhyme_cls"] < 0), tab["rhyme"][tok], s["rhyme_cls"])
        new = dict(
            t=s["t"] + 1, inp=tok, hx=hx, line=line + ends, col=jnp.where(ends, 0, col + 1),
            rhyme_cls=rhyme_cls, done=s["done"] | (tok == eop_id),
            out=jax.lax.dynamic_update_index_in_dim(s["out"], tok, s["t"], axis=1),
        )
        if score:  # where a row's token is determined, nothing is counted
            new.update(lp_sum=s["lp_sum"] + jnp.where(determined, 0.0, lp), lp_n=s["lp_n"] + ~determined)
        if meter:  # prosody.advance, for sampled and forced tokens alike
            debt = jnp.where(code == prosody.GUARD, ~tab["level"][tok], s["guard_debt"])
            slot = at_rhyme[:, None] & (jnp.arange(prosody.MAX_RHYMES)[None, :] == s["n_used"][:, None])
            new.update(
                guard_debt=debt & ~ends,  # a line's punctuation clears its 孤平 debt
                rhyme_groups=jnp.where(at_rhyme, s["rhyme_groups"] & tab["groups"][tok], s["rhyme_groups"]),
                used_rhymes=jnp.where(slot, tok[:, None], s["used_rhymes"]),
                n_used=s["n_used"] + at_rhyme,
            )
        if repeats:
            new.update(_advance_repeats(tab, batch, s, earlier, tok, ends, use_head))
        return new

    s = jax.lax.while_loop(cond, body, init)
    if not score:
        return {"ids": s["out"]}
    return keep_best(s["out"], s["lp_sum"] / jnp.maximum(s["lp_n"], 1), n_poems, best_of)


def keep_best(out, logprob, n_poems, best_of):
    """{ids, logprob} per poem: with --best-of, the candidate of the highest mean log-probability
    (the first on a tie, so candidate 0 - the plain sample - wins ties), and every candidate."""
    if best_of == 1:
        return {"ids": out, "logprob": logprob}
    cands, scores = out.reshape(n_poems, best_of, -1), logprob.reshape(n_poems, best_of)
    pick = _argmax(scores)
    return {"ids": jnp.take_along_axis(cands, pick[:, None, None], axis=1)[:, 0],
            "logprob": jnp.take_along_axis(scores, pick[:, None], axis=1)[:, 0],
            "candidates": cands, "candidate_logprob": scores}
