"""Poem generation: prefix / acrostic / style, classical forms, rhyme, sampling - one jit-compiled loop.

The tutorial's `generate` is greedy, runs Python per character and crashes on a character outside the
vocabulary. Here a batch of poems is decoded by one `lax.while_loop` (`rnnjax.poetry.decoding`), every
constraint a mask on the logits. This module is the host side: it checks each request once, in
Python, with a one-line error for what cannot work; builds the loop's arrays and tables; runs big
batches in parts on a CPU; and turns token ids back into poems.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import os
import re
import typing
import unicodedata

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rnnjax.poetry import decoding, forms, prosody
from rnnjax.poetry.errors import UserError
from rnnjax.poetry.forms import Form

DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_P = 0.9
DEFAULT_MAX_LEN = 125
# --max-len: room for a one-character poem and its <EOP>, up to a length no Tang poem comes near.
MIN_MAX_LEN, MAX_MAX_LEN = 2, 1024
# --num: the poem index is an int32 in the compiled loop. Poems are written CHUNK at a time (bounded
# memory whatever --num is; each chunk is printed as it finishes).
MAX_NUM = 2**31 - 1
CHUNK = 256
# Free form closes a line after this many tokens: longer than any line of Tang verse (杂言 included),
# short enough that a model that never emits punctuation still writes lines, and acrostics finish.
FREE_LINE_MAX = 16
# --best-of: candidates per poem, 1..MAX_BEST_OF (the batch is poems x candidates rows; see
# `decoding.candidate_keys`).
MAX_BEST_OF = 64
# On a CPU a batch of at least 2 * MIN_PART_ROWS rows is decoded in equal parts, one thread each (see
# `decode_parts`); smaller parts lose more to thinner matmuls than the threads win.
MIN_PART_ROWS = 32
MAX_PARTS = 8
# --rhyme: today's 十三辙 classes by pypinyin finals, or 平水韵 level groups (no tone pattern).
RHYME_MODES = ("modern", "pingshui")
# --precision: the weights' dtype while decoding (Generator casts them once).
PRECISIONS = ("float32", "bfloat16", "float16")


def check_max_len(max_len: int) -> int:
    """The one range check of --max-len (the CLI calls it before the model loads)."""
    if not MIN_MAX_LEN <= max_len <= MAX_MAX_LEN:
        raise UserError(f"--max-len must be between {MIN_MAX_LEN} and {MAX_MAX_LEN}, got {max_len}")
    return max_len


@dataclasses.dataclass(frozen=True)
class Request:
    """One poem to write, validated and encoded. `heads` are acrostic token ids, one per line.

    `rhyme` is None, "modern" or "pingshui"; with `meter`, `templates` are the indices into
    `prosody.TEMPLATES` the prefix and heads fit (the poem keeps one of them, drawn per seed and
    poem index by `Generator.choose_templates`).
    """

    form: Form
    prefix: tuple[int, ...] = ()
    heads: tuple[int, ...] = ()
    style: tuple[int, ...] = ()
    rhyme: str | None = None
    prefix_text: str = ""
    acrostic_text: str = ""
    meter: bool = False
    templates: tuple[int, ...] = ()
    allow_repeats: bool = False  # True: no repetition masks (see `rnnjax.poetry.decoding`)


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How the next token is chosen among those the constraints allow.

    `best_of` N: sample N candidates per poem and keep the one the model finds likeliest, by mean
    log-probability per chosen token (`Poem.logprob`: log softmax of the raw logits at temperature 1,
    before top-k / top-p and the masks, over the tokens the model chose - not the prefix, acrostic
    heads, nor the punctuation and final <EOP> the form dictates). Candidate 0 is the plain sample,
    so best-of 1 is plain sampling and best-of N never keeps a poem less likely than it. Greedy
    writes one poem per request, so greedy with N > 1 is refused.

    `plain_argmax` (internal, for benchmarks): greedy as the likeliest token at every step, instead of
    the likeliest class (go on / close the line / end) and then the likeliest token in it.
    """

    temperature: float = DEFAULT_TEMPERATURE
    top_k: int = 0          # 0: no top-k cut
    top_p: float = DEFAULT_TOP_P  # 1.0: no nucleus cut
    greedy: bool = False    # the likeliest continuation; also what temperature 0 means
    best_of: int = 1
    plain_argmax: bool = False

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature == 0

    @property
    def mode(self) -> str:
        if self.is_greedy:
            return "argmax" if self.plain_argmax else "greedy"
        return "cut" if self.top_k > 0 or self.top_p < 1 else "full"

    def __post_init__(self):
        """The one check of the settings, worded for the command line (cli.py parses numbers only)."""
        if not self.temperature >= 0:
            raise UserError(f"--temperature must be >= 0 (0 is greedy), got {self.temperature}")
        if not 0 <= self.top_k <= decoding.CANDIDATES:
            raise UserError(f"--top-k must be in 0..{decoding.CANDIDATES} (0 turns it off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"--top-p must be in (0, 1], got {self.top_p}")
        if isinstance(self.best_of, bool) or not isinstance(self.best_of, (int, np.integer)) \
                or not 1 <= self.best_of <= MAX_BEST_OF:
            raise UserError(f"--best-of must be an integer between 1 and {MAX_BEST_OF}, got {self.best_of!r}")
        if self.best_of > 1 and self.is_greedy:
            raise UserError("--best-of needs sampling: greedy (--greedy or --temperature 0) writes the same "
                            "poem every time, so its candidates would all be one")


@dataclasses.dataclass(frozen=True)
class Poem:
    text: str          # characters and punctuation, no special tokens
    lines: list[str]   # as printed: one sentence (a couplet in the forms) per line
    form: str
    seed: int
    index: int         # which poem of the call; with `seed` it fixes the poem
    complete: bool     # ended with <EOP> on a finished sentence (False: cut at max_len, or free form after `，`)
    template: str | None = None  # the 格律 template it was written to (--meter), e.g. "仄起入韵"
    logprob: float | None = None  # mean log-probability per chosen token (see Sampling); None unless scored

    def _templates(self) -> list[int] | None:
        return [prosody.template_index(self.form, self.template)] if self.template else None

    def meter_report(self) -> prosody.Report:
        """The checker's verdict: under the poem's template with --meter, else the best-fitting one."""
        return prosody.check_poem(self.text, self._templates())

    def show_tones(self) -> str:
        """Each line with its tones and the template's rule under it, then the verdict."""
        return prosody.show_poem(self.text, self._templates())

    def to_json(self) -> dict:
        r = self.meter_report()
        return {"text": self.text, "lines": self.lines, "form": self.form, "seed": self.seed,
                "index": self.index, "complete": self.complete, "template": self.template,
                "logprob": self.logprob, "tones": r.tones,
                "meter": {"template": r.template, "passes_meter": r.passes_meter, "rhymes": r.rhymes,
                          "rhyme_group": r.rhyme_group,
                          "violations": [dataclasses.asdict(v) for v in r.violations]}}


# What ends a line in --prefix / --style text (str.splitlines' breaks, less the rarer controls).
_LINE_BREAK = re.compile("\r\n|[\n\r\x85\u2028\u2029]")
# Unicode categories no vocabulary holds and OpenCC cannot always take: controls, format, surrogates,
# private use, unassigned.
_UNTYPABLE = ("Cc", "Cf", "Cs", "Co", "Cn")


def _join_lines(parts: list[str]) -> str:
    """Text lines -> one text, each line closed by the mark its position needs unless it has one."""
    out, closed = [], 0  # pieces so far, and how many lines they close
    for k, part in enumerate(parts):
        if k and out and out[-1][-1] not in forms.LINE_ENDERS:
            out.append(forms.COMMA if closed % 2 == 0 else forms.PERIOD)
            closed += 1
        part = "".join(part.split()).translate(forms.ASCII_PUNCT)
        if part:
            out.append(part)
            closed += sum(part.count(m) for m in forms.LINE_ENDERS)
    return "".join(out)


def _char_list(chars: list[str], limit: int = 20) -> str:
    """Characters for a one-line message: invisible or combining ones as U+XXXX, at most `limit`."""
    def show(c):
        visible = c.isprintable() and unicodedata.category(c)[0] not in "MZC"
        return c if visible else f"U+{ord(c):04X}"
    more = f" (and {len(chars) - limit} more)" if len(chars) > limit else ""
    return " ".join(show(c) for c in chars[:limit]) + more


class Generator:
    """A model and its vocabulary, ready to write poems; compiles once per (batch size, max_len)."""

    def __init__(self, model, vocab, max_len: int = DEFAULT_MAX_LEN, precision: str = "float32"):
        check_max_len(max_len)
        model.eval()
        self.precision = precision
        self.graphdef, self.params = nnx.split(model)
        self._out_layer = output_layer(model, precision)
        self._model = model  # its float32 output layer, for greedy in a half precision (`_exact`)
        self.vocab = vocab
        self.max_len = max_len
        self.tables = forms.token_tables(vocab)
        t = self.tables
        allowed = forms.kind_table(t)
        klass = np.full(len(t.content), decoding.GO_ON, np.int32)
        klass[t.ender] = decoding.CLOSE
        klass[t.eop_id] = decoding.END
        self._klass = klass
        self._tables_dev = {
            **_kind_facts(allowed, klass), **_greedy_tables(klass),
            "ender": jnp.asarray(t.ender), "rhyme": jnp.asarray(t.rhyme), "content": jnp.asarray(t.content),
        }
        self._meter_dev = None  # the same plus the 格律 tables, built on first use (the dictionary loads in ~1 s)
        self._usable: dict[int, int] = {}
        self._t2s = None
        self.threads: int | None = None  # parts a batch is decoded in; None: `decode_parts` decides
        self._warm: set = set()  # batch shapes whose loop has run (compiled) once

    @functools.cached_property
    def _input_table(self) -> jax.Array:
        """The first recurrent layer's input projection of every token (`decoding.input_table`),
        made on first use: 34 MB for the shipped LSTM, in place of a matmul each step."""
        return decoding.input_table(self._model)

    @functools.cached_property
    def _exact(self):
        """Greedy in a half precision re-scores its best candidates with the float32 output layer
        (`_exact_best`): (V, H) kernel rows and the bias, made on first greedy use. None in float32."""
        if self.precision == "float32":
            return None
        return output_layer(self._model, "float32")

    def recurrent_dtype(self, sampling: Sampling) -> str | None:
        """The recurrent layers' matmul dtype while decoding: the half precision when sampling in
        one, else None (float32). Greedy keeps them float32: their rounding feeds back through the
        state and changed 5 of 100 greedy poems, while a sample is a draw either way (its quality
        is measured in bench/precision_quality.py)."""
        if self.precision == "float32" or sampling.is_greedy:
            return None
        return self.precision

    @property
    def prosody_tables(self) -> prosody.ProsodyTables:
        return prosody.prosody_tables(self.vocab)

    def _meter_tables(self) -> dict:
        """The loop's tables with 格律: the kind rows, then the character row and-ed with each of
        `prosody.ProsodyTables.rows` (kind `forms.N_KINDS + row`); codes; level and groups per token."""
        if self._meter_dev is None:
            p = self.prosody_tables
            allowed = forms.kind_table(self.tables)
            allowed = np.concatenate([allowed, allowed[forms.K_CHAR][None, :] & p.rows])
            codes = np.zeros((decoding.TEMPLATE_NONE + 1, 8, 7), np.int8)
            codes[: len(prosody.TEMPLATES)] = prosody.stacked_codes()
            codes[decoding.TEMPLATE_RHYME5, 1::2, 4] = codes[decoding.TEMPLATE_RHYME7, 1::2, 6] = prosody.RHYME
            self._meter_dev = {
                **self._tables_dev,
                **_kind_facts(allowed, self._klass),
                "codes": jnp.asarray(codes.astype(np.int32)),
                "level": jnp.asarray(p.level), "groups": jnp.asarray(p.groups),
            }
        return self._meter_dev

    # ---- input -------------------------------------------------------------------------------

    def normalize(self, text: str, what: str, lines: bool = True) -> str:
        """User text -> characters of the vocabulary: no spaces, full-width punctuation (ASCII `,.!?;:`),
        simplified script (unless the raw characters are already known, e.g. a traditional-script model).

        With `lines` (prefix, style) a line break ends a line: it becomes the mark the line needs, `，`
        after the 1st, 3rd... line and `。` after the 2nd, 4th... (as the forms punctuate), or nothing
        when the line already ends with one of `，。！？；` (or is empty). Without (acrostic) it is dropped.
        Control characters and unpaired surrogates are named in the error, as U+XXXX.
        """
        if lines:
            text = _join_lines(_LINE_BREAK.split(text))
        text = "".join(text.split()).translate(forms.ASCII_PUNCT)
        stoi = self.vocab.stoi
        if any(c not in stoi for c in text):
            odd = [c for c in dict.fromkeys(text) if c not in stoi and unicodedata.category(c) in _UNTYPABLE]
            if odd:  # OpenCC cannot take surrogates; control characters are never in a vocabulary
                raise UserError(f"{what} has characters not in the model's vocabulary: {_char_list(odd)}")
            if self._t2s is None:
                import opencc
                self._t2s = opencc.OpenCC("t2s")
            text = self._t2s.convert(text)
        unknown = list(dict.fromkeys(c for c in text if c not in stoi))
        if unknown:
            raise UserError(f"{what} has characters not in the model's vocabulary: {_char_list(unknown)}")
        return text

    def request(self, prefix: str = "", acrostic: str = "", style: str = "", form: str = "auto",
                rhyme: bool | str | None = None, meter: bool = False, allow_repeats: bool = False) -> Request:
        """Validate and encode one poem's constraints; UserError says what cannot work and why.

        `rhyme`: None / False (none), "modern" (十三辙; True means this, the old spelling) or
        "pingshui" (平水韵 level groups). `meter`: 格律 after a template of `prosody.TEMPLATES`;
        it rhymes in 平水韵 by itself, so it takes no `rhyme` but "pingshui". `allow_repeats`: no
        repetition masks (by default no line repeats an earlier one, and a 绝句 uses no character
        more than twice; see `rnnjax.poetry.decoding`).
        """
        rhyme = check_rhyme_flags(form, rhyme, meter)
        prefix = self.normalize(prefix, "the prefix")
        acrostic = self.normalize(acrostic, "the acrostic", lines=False)
        style = self.normalize(style, "the style")
        if prefix and acrostic:
            raise UserError("give either a prefix or an acrostic, not both")
        check_punctuation(prefix)
        if len(prefix) > self.max_len:
            raise UserError(f"the prefix has {len(prefix)} characters, more than --max-len {self.max_len}")
        if len(style) > self.max_len:
            raise UserError(f"the style has {len(style)} characters, more than --max-len {self.max_len}")
        bad = [c for c in acrostic if not forms.is_hanzi(c)]
        if bad:
            raise UserError(f"the acrostic must be Chinese characters only, got {_char_list(bad)}")
        chosen = forms.parse_form(form)
        f = chosen or forms.auto_form(prefix, acrostic)
        if meter and f.free and chosen is None and not acrostic:
            # auto found no line length in the prefix: 格律 takes the first form the prefix can begin.
            f = next((forms.FORMS[n] for n in ("5x4", "7x4", "5x8", "7x8")
                      if forms.check_prefix(prefix, forms.FORMS[n]) is None), f)
        if meter and f.name not in prosody.FORM_NAMES:
            raise UserError(f"--meter needs one of the forms {', '.join(prosody.FORM_NAMES)}; "
                            f"this poem would be {f.name}")
        if not f.free:
            if self.tables.comma_id < 0 or self.tables.period_id < 0:
                raise UserError(f"the model's vocabulary lacks '，' or '。', so it cannot write {f.name}")
            if f.n_tokens + 1 > self.max_len:
                raise UserError(f"{f.name} needs {f.n_tokens + 1} tokens, more than --max-len {self.max_len}")
            why = forms.check_prefix(prefix, f)
            if why:
                raise UserError(why)
            if acrostic and len(acrostic) != f.n_lines:
                raise UserError(f"the acrostic has {len(acrostic)} characters but {f.name} has "
                                f"{f.n_lines} lines (one per character)")
        elif acrostic and 2 * len(acrostic) + 1 > self.max_len:
            raise UserError(f"an acrostic of {len(acrostic)} lines needs --max-len of at least "
                            f"{2 * len(acrostic) + 1}")
        if rhyme and (f.free or f.n_lines < 2):
            raise UserError("--rhyme needs a fixed form (5x4, 5x8, 7x4, 7x8); free form has no rhyme positions")
        if rhyme == "pingshui" and f.name not in prosody.FORM_NAMES:
            raise UserError(f"--rhyme pingshui needs one of the forms {', '.join(prosody.FORM_NAMES)}")
        templates = ()
        if meter:
            templates = self._fit(f, prefix, acrostic)
        elif rhyme == "pingshui":
            self._check_pingshui(f, prefix)
        enc = lambda s: tuple(self.vocab.stoi[c] for c in s)  # noqa: E731
        return Request(form=f, prefix=enc(prefix), heads=enc(acrostic), style=enc(style), rhyme=rhyme,
                       prefix_text=prefix, acrostic_text=acrostic, meter=meter, templates=templates,
                       allow_repeats=bool(allow_repeats))

    def _vocab_can_rhyme(self, n_rhymes: int, what: str) -> int:
        """`prosody.usable_groups` for `n_rhymes`; UserError when the vocabulary has no such group."""
        usable = self._usable_groups(n_rhymes)
        if not usable:
            raise UserError(f"the model's vocabulary has no 平水韵 level group of {n_rhymes} characters, "
                            f"so it cannot write {what}")
        return usable

    def _fit(self, f: Form, prefix: str, acrostic: str) -> tuple[int, ...]:
        """The templates of `f` that the prefix and heads fit and the vocabulary can finish.

        A prefix or acrostic that breaks every template is an error naming the character (design:
        prefix characters are never changed, and a poem that could not keep 格律 is not written).
        """
        p = self.prosody_tables
        content = self.tables.content
        for row, tone in ((p.level, "平"), (p.oblique, "仄")):
            if not (content & row).any():
                raise UserError(f"the model's vocabulary has no {tone} character in 平水韵, so it cannot "
                                "write with --meter")
        fit = prosody.fit_templates(f.name, prefix, acrostic)
        if not fit:
            raise UserError(prosody.misfit_message(f.name, prefix, acrostic))
        # A template stays when a 平水韵 group holds its given rhyme characters (if any) and enough
        # tokens for all its rhymes: then sampling can never run out of rhymes.
        usable = {i: self._usable_groups(prosody.TEMPLATES[i].n_rhymes) for i in fit}
        ok = tuple(i for i in fit if usable[i] & prosody.given_rhyme_groups(i, f.name, prefix, acrostic))
        if not ok:
            if not any(usable.values()):
                self._vocab_can_rhyme(min(prosody.TEMPLATES[i].n_rhymes for i in fit), f"{f.name} with --meter")
            raise UserError("the prefix's rhyme characters share no 平水韵 group with enough characters in "
                            "the model's vocabulary to finish the poem")
        return ok

    def _check_pingshui(self, f: Form, prefix: str) -> None:
        why = prosody.rhyme_misfit(f.name, prefix)
        if why:
            raise UserError(why)
        t = prosody.rhyme_only(f.name)
        usable = self._vocab_can_rhyme(t.n_rhymes, f"{f.name} with --rhyme pingshui")
        if not usable & prosody.given_rhyme_groups(t, f.name, prefix):
            raise UserError("the prefix's rhyme characters share no 平水韵 group with enough characters in "
                            "the model's vocabulary to finish the poem")

    def choose_templates(self, requests: list[Request], seed: int = 0, poem_ids=None) -> np.ndarray:
        """(B,) int32: the template each poem keeps (index into `prosody.TEMPLATES`, -1 without
        --meter), drawn among the request's fitting templates from (seed, poem index) alone."""
        poem_ids = np.arange(len(requests)) if poem_ids is None else np.asarray(poem_ids)
        out = np.full(len(requests), -1, np.int32)
        for k, (r, pid) in enumerate(zip(requests, poem_ids.tolist())):
            if r.templates:
                rng = np.random.default_rng([*_seed_entropy(seed), int(pid) & (2**64 - 1), 0x683C5F8B])
                out[k] = r.templates[int(rng.integers(len(r.templates)))]
        return out

    # ---- decoding ----------------------------------------------------------------------------

    def free_line_cap(self, n_heads: int) -> int:
        """Longest free-form line; with an acrostic, short enough that every head gets its line."""
        return min(FREE_LINE_MAX, (self.max_len - 1) // n_heads - 1) if n_heads else FREE_LINE_MAX

    def batch_arrays(self, requests: list[Request], templates=None) -> dict:
        """Requests -> fixed-shape arrays (padded to max_len), so any mix of requests reuses one compile.

        `templates`: `choose_templates`'s answer (default: seed 0). With 格律 or 平水韵 rhyme in the
        batch the arrays also hold each poem's code-table row `tmpl` and its first `rhyme_groups`."""
        b, n = len(requests), self.max_len
        forced = np.full((b, n), -1, np.int32)
        heads = np.full((b, n), -1, np.int32)
        style_len = max(len(r.style) for r in requests)
        # The style is primed in buckets of 32 steps: a few compiles at most, no work without a style.
        p = -(-style_len // 32) * 32
        prime = np.full((b, p), self.vocab.pad_id, np.int32)
        prime_len = np.zeros(b, np.int32)
        first = np.full(b, self.vocab.start_id, np.int32)
        for i, r in enumerate(requests):
            forced[i, : len(r.prefix)] = r.prefix
            heads[i, : len(r.heads)] = r.heads
            if r.style:
                seq = (self.vocab.start_id, *r.style)
                prime[i, : len(seq) - 1] = seq[:-1]
                prime_len[i] = len(seq) - 1
                first[i] = seq[-1]
        return {
            "forced": forced, "heads": heads, "n_heads": np.array([len(r.heads) for r in requests], np.int32),
            "line_len": np.array([r.form.line_len for r in requests], np.int32),
            "n_lines": np.array([r.form.n_lines for r in requests], np.int32),
            "line_cap": np.array([self.free_line_cap(len(r.heads)) for r in requests], np.int32),
            "rhyme": np.array([r.rhyme == "modern" for r in requests], bool),
            "prime": prime, "prime_len": prime_len, "first": first,
            **(self._meter_arrays(requests, templates) if _uses_prosody(requests) else {}),
            **(_repeat_arrays(requests, len(self.vocab.itos)) if _uses_repeat_masks(requests) else {}),
        }

    def _meter_arrays(self, requests: list[Request], templates) -> dict:
        templates = self.choose_templates(requests) if templates is None else np.asarray(templates)
        tmpl = np.full(len(requests), decoding.TEMPLATE_NONE, np.int32)
        groups = np.zeros(len(requests), np.int32)
        for k, r in enumerate(requests):
            if r.meter:
                tmpl[k] = templates[k]
                n_rhymes = prosody.TEMPLATES[tmpl[k]].n_rhymes
            elif r.rhyme == "pingshui":
                tmpl[k] = decoding.TEMPLATE_RHYME5 if r.form.line_len == 5 else decoding.TEMPLATE_RHYME7
                n_rhymes = r.form.n_lines // 2
            else:
                continue
            # Groups with a token for every rhyme: the sampler can never run out (prosody.usable_groups).
            groups[k] = self._usable_groups(n_rhymes)
        return {"tmpl": tmpl, "rhyme_groups": groups}

    def _usable_groups(self, n_rhymes: int) -> int:
        if n_rhymes not in self._usable:  # ~0.3 ms at a vocabulary of 8k: once, not per poem
            self._usable[n_rhymes] = prosody.usable_groups(self.prosody_tables, n_rhymes)
        return self._usable[n_rhymes]

    def generate_ids(self, requests: list[Request], sampling: Sampling = Sampling(), seed: int = 0,
                     poem_ids=None, templates=None, *, score: bool = False, full: bool = False):
        """(B, max_len) token ids per poem, padded with </s> after <EOP>; with `full`, the whole
        `Decoded`: scores (with `score`, and always with --best-of) and --best-of's candidates. The
        one call into the compiled loop (`decode` and `generate` go through it).

        `templates` (B,): the 格律 template of each --meter poem; default `choose_templates`."""
        if not requests:
            raise UserError("nothing to generate")
        poem_ids = np.arange(len(requests), dtype=np.int32) if poem_ids is None else np.asarray(poem_ids, np.int32)
        meter = _uses_prosody(requests)
        if meter and templates is None:
            templates = self.choose_templates(requests, seed, poem_ids)
        arrays = self.batch_arrays(requests, templates)
        specials = np.array([self.vocab.pad_id, self.vocab.eop_id], np.int32)
        tables = self._meter_tables() if meter else self._tables_dev
        statics = dict(max_len=self.max_len, mode=sampling.mode, meter=meter, repeats=_uses_repeat_masks(requests),
                       best_of=sampling.best_of, score=bool(score or sampling.best_of > 1),
                       recurrent_dtype=self.recurrent_dtype(sampling))

        exact = self._exact if sampling.mode == "greedy" else None

        def run(rows: slice) -> dict:
            return decoding.decode(
                self.graphdef, self.params, self._out_layer, exact, self._input_table, tables,
                {k: v[rows] for k, v in arrays.items()}, specials,
                seed_key(seed), poem_ids[rows],
                np.float32(max(sampling.temperature, 1e-6)), np.int32(sampling.top_k), np.float32(sampling.top_p),
                **statics)

        parts = decode_parts(len(requests), sampling.best_of) if self.threads is None else self.threads
        shapes = tuple((k, v.shape[1:]) for k, v in arrays.items())
        signature = (len(requests), parts, shapes, tuple(sorted(statics.items())))
        res = _run_in_parts(run, len(requests), parts, compiled=signature in self._warm)
        self._warm.add(signature)
        if not full:
            return np.asarray(res["ids"])
        got = lambda k: np.asarray(res[k]) if k in res else None  # noqa: E731
        return Decoded(got("ids"), got("logprob"), got("candidates"), got("candidate_logprob"))

    def decode(self, requests: list[Request], sampling: Sampling = Sampling(), seed: int = 0,
               poem_ids=None, templates=None, score: bool = False) -> Decoded:
        """Token ids, scores (with `score`, and always with --best-of) and --best-of's candidates of
        a batch: `generate_ids(..., full=True)`."""
        return self.generate_ids(requests, sampling, seed, poem_ids, templates, score=score, full=True)

    def decode_text(self, ids) -> tuple[str, bool]:
        """Token ids of one poem -> (text, ended with <EOP>)."""
        chars = []
        for i in ids.tolist():
            if i == self.vocab.eop_id:
                return "".join(chars), True
            if i == self.vocab.pad_id:
                break
            chars.append(self.vocab.itos[i])
        return "".join(chars), False

    def generate(self, requests: list[Request], sampling: Sampling = Sampling(), seed: int = 0,
                 start: int = 0, score: bool = False) -> list[Poem]:
        """One batched call: poem k is poem `start + k` of the seed (the same whatever the batch).

        A poem is `complete` when it ended with <EOP> on a finished sentence: a free-form poem that
        stops after `，` (or `；`) is not. `score`: fill `Poem.logprob` (always with --best-of)."""
        poem_ids = start + np.arange(len(requests), dtype=np.int64)
        if len(requests) and poem_ids[-1] > MAX_NUM:
            raise UserError(f"poem index {int(poem_ids[-1])} is past the last one, {MAX_NUM}")
        templates = self.choose_templates(requests, seed, poem_ids)
        out = self.generate_ids(requests, sampling, seed, poem_ids=poem_ids, templates=templates, score=score,
                                full=True)
        poems = []
        for i, (r, row) in enumerate(zip(requests, out.ids)):
            text, ended = self.decode_text(row)
            complete = ended and (not r.form.free or text[-1:] in forms.SENTENCE_ENDERS)
            name = prosody.TEMPLATES[templates[i]].name if templates[i] >= 0 else None
            poems.append(Poem(text, forms.print_lines(text), r.form.name, seed, start + i, complete, name,
                              None if out.logprob is None else float(out.logprob[i])))
        return poems

    def generate_many(self, request: Request, num: int, sampling: Sampling = Sampling(), seed: int = 0,
                      chunk: int | None = None, score: bool = False):
        """`num` poems of one request, yielded `chunk` (default CHUNK, divided by --best-of: the batch
        holds every candidate) at a time: memory stays that of one chunk whatever `num` is. Every chunk
        has the same batch shape (the last is padded and cut), so the loop compiles once; poem i is
        the same as in `generate([request] * num, ...)`."""
        chunk = max(1, chunk or CHUNK // sampling.best_of)
        if not 1 <= num <= MAX_NUM:
            raise UserError(f"--num must be between 1 and {MAX_NUM}, got {num}")
        size = min(num, chunk)
        for start in range(0, num, size):
            n = min(size, num - start)
            yield self.generate([request] * size, sampling, seed, start=start, score=score)[:n]


class Decoded(typing.NamedTuple):
    """What `Generator.decode` returns, as numpy arrays.

    ids (B, max_len): each poem's tokens (with --best-of, the kept candidate's); logprob (B,): its
    mean log-probability per chosen token (None unless scored); candidates (B, N, max_len) and
    candidate_logprob (B, N): every candidate of --best-of N (None for N = 1)."""

    ids: np.ndarray
    logprob: np.ndarray | None = None
    candidates: np.ndarray | None = None
    candidate_logprob: np.ndarray | None = None


def decode_parts(n_poems: int, best_of: int = 1) -> int:
    """How many equal parts, each in a thread of its own, a batch of `n_poems` is decoded in.

    Why: a sampled step spends most of its time in `lax.top_k`, which XLA:CPU runs as one
    single-threaded partial sort per row - the other cores wait. Two halves of a 256-poem batch in two
    threads run concurrently (the threads release the GIL inside the compiled loop). Each row's
    tokens depend on its own inputs and key only, so the poems are the same whatever the split.
    On an accelerator one program already fills the device: no split."""
    if jax.default_backend() != "cpu":
        return 1
    rows = n_poems * best_of
    parts = min(os.cpu_count() or 1, MAX_PARTS, rows // MIN_PART_ROWS)
    while parts > 1 and n_poems % parts:
        parts -= 1
    return max(parts, 1)


def _run_in_parts(run, n: int, parts: int, compiled: bool) -> dict:
    """`run(rows)` over rows 0..n in `parts` equal slices, concurrently, joined into one dict of
    numpy arrays (one slice, and run's own result, where `parts` does not divide n).

    The first call of a shape runs its first slice in this thread alone, since two threads would
    both compile. Each pool thread waits for its slice: a dispatch returns at once, and slices
    dispatched from one thread run one after the other."""
    if parts <= 1 or n % parts:
        return run(slice(0, n))
    size = n // parts
    slices = [slice(i * size, (i + 1) * size) for i in range(parts)]
    first = [] if compiled else [run(slices[0])]
    outs = first + list(_pool().map(lambda rows: jax.block_until_ready(run(rows)), slices[len(first):]))
    return {k: np.concatenate([np.asarray(o[k]) for o in outs]) for k in outs[0]}


@functools.cache
def _pool() -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(MAX_PARTS, thread_name_prefix="rnnjax-decode")


def _kind_facts(allowed: np.ndarray, klass: np.ndarray) -> dict:
    """The loop's per-kind tables from a (kinds, V) allowed table and the tokens' greedy classes."""
    classes = np.stack([(allowed & (klass == c)).any(axis=1) for c in (decoding.GO_ON, decoding.CLOSE, decoding.END)],
                       axis=1)
    n_allowed = allowed.sum(axis=1)
    single = n_allowed == 1
    return {
        "bias": jnp.asarray(np.where(allowed, 0.0, -np.inf).astype(np.float32)),
        # Kinds that allow exactly one token (punctuation, <EOP>): the model's logits don't matter there.
        "single": jnp.asarray(single),
        # ... and that token (0 for the other kinds).
        "only": jnp.asarray(np.where(single, allowed.argmax(axis=1), 0).astype(np.int32)),
        "n_allowed": jnp.asarray(n_allowed.astype(np.int32)),
        # Kinds whose tokens fall into more than one greedy class: only there does greedy weigh classes.
        "mixed": jnp.asarray(classes.sum(axis=1) > 1),
    }


def _greedy_tables(klass: np.ndarray) -> dict:
    """What greedy by class and free form's repeat rule need of the tokens' classes: `go_bias` (V,),
    0 on the tokens that go on and -inf on the rest; `special` (6,): the closing marks (padded to 5
    with V, an index past the vocabulary) and then <EOP>."""
    v = len(klass)
    marks = np.flatnonzero(klass == decoding.CLOSE)
    special = np.concatenate([marks, np.full(5 - len(marks), v), np.flatnonzero(klass == decoding.END)])
    special = special.astype(np.int32)
    return {"go_bias": jnp.asarray(np.where(klass == decoding.GO_ON, 0.0, -np.inf).astype(np.float32)),
            "special": jnp.asarray(special), "klass": jnp.asarray(klass)}


def _uses_repeat_masks(requests: list[Request]) -> bool:
    """Does the batch need the repetition masks? (If not, the loop is compiled without them.)"""
    return any(not r.allow_repeats for r in requests)


def _repeat_arrays(requests: list[Request], v: int) -> dict:
    """Per poem: no repeated line, the 绝句 character cap, and the characters capped from the start
    (an acrostic's heads count before they are written: a head that comes twice is capped at once)."""
    on = np.array([not r.allow_repeats for r in requests], bool)
    cap = on & np.array([r.form.name in decoding.CAP_FORMS for r in requests], bool)
    capped = np.full((len(requests), decoding.CAP_SLOTS), v, np.int32)
    for k, r in enumerate(requests):
        twice = [h for h in dict.fromkeys(r.heads) if r.heads.count(h) >= decoding.CHAR_CAP] if cap[k] else []
        capped[k, : len(twice)] = twice
    return {"no_repeat": on, "char_cap": cap, "capped": capped, "n_capped": (capped < v).sum(axis=1).astype(np.int32)}


def _seed_words(seed: int) -> tuple[int, int]:
    """Two 32-bit words from the decimal digits of any integer (sha256): no two seeds share them by wrapping."""
    digest = hashlib.sha256(f"rnnjax seed {int(seed)}".encode()).digest()
    return int.from_bytes(digest[:4], "little"), int.from_bytes(digest[4:8], "little")


def seed_key(seed: int):
    """The random key of --seed. 0 <= seed < 2**32 keeps `jax.random.key(seed)` (poems written before
    stay the same); any other integer, negative or of any size, is hashed from its decimal digits
    and folded into a key, instead of wrapping modulo 2**32 (which made 4294967296 write seed 0's poems)."""
    seed = int(seed)
    if 0 <= seed < 2**32:
        return jax.random.key(seed)
    hi, lo = _seed_words(seed)
    return jax.random.fold_in(jax.random.key(hi), lo)


def _seed_entropy(seed: int) -> tuple[int, ...]:
    """numpy SeedSequence entropy for a seed: itself when it fits 64 bits, else its hash words and a tag."""
    seed = int(seed)
    return (seed,) if 0 <= seed < 2**64 else (*_seed_words(seed), 0x5EED)


def check_punctuation(prefix: str) -> None:
    """UserError when the prefix starts with a punctuation mark or puts two together (`，春`, `。`, `，，`):
    training never shows either, and the decoder itself only writes a mark after a character."""
    for i, c in enumerate(prefix):
        if forms.is_hanzi(c):
            continue
        if i == 0:
            raise UserError(f"the prefix starts with {c!r}: a poem begins with a Chinese character")
        if not forms.is_hanzi(prefix[i - 1]):
            raise UserError(f"the prefix has {prefix[i - 1:i + 1]!r} at characters {i}-{i + 1}: a punctuation "
                            "mark follows a Chinese character, one at a time")


def output_layer(model, precision: str) -> tuple[jax.Array, jax.Array]:
    """The decoding loop's output layer: `model.linear1`'s kernel transposed to (V, H), in
    `precision` ("float32", "bfloat16" or "float16"), and its float32 bias (V,). The loop's matmul
    takes the kernel's dtype and returns float32 logits.

    Why (V, H): at batch 1 (one greedy poem) the output layer is a matrix-vector product over
    the whole vocabulary, most of a step, and XLA:CPU runs it about 12% faster with each token's
    weights contiguous (bench/generate_latency.py; the model keeps torch's (H, V) for training).

    Why a half precision rounds this layer's weights and no other: at a vocabulary of thousands it
    is most of a batch step's work and nearly all of its weight bytes, and its rounding moves only
    the logits, which greedy re-decides in float32 (`_exact_best`). Rounded recurrent matmuls
    changed 5 of 100 greedy poems of the shipped model (the error feeds back through the state), so
    greedy keeps them float32; sampling runs them in the half precision (`Generator.recurrent_dtype`)."""
    if precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    layer = model.linear1
    return jnp.asarray(layer.kernel[...].T, precision), jnp.asarray(layer.bias[...], jnp.float32)


def check_rhyme_flags(form: str, rhyme: bool | str | None, meter: bool) -> str | None:
    """The rhyme mode (None, "modern" or "pingshui") of `Generator.request`'s flags; UserError for
    combinations that cannot work whatever the model (the CLI calls this before loading one)."""
    rhyme = "modern" if rhyme is True else rhyme or None
    if rhyme not in (None, *RHYME_MODES):
        raise UserError(f"unknown rhyme {rhyme!r}; choose one of: {', '.join(RHYME_MODES)}")
    if meter and rhyme == "modern":
        raise UserError("--meter rhymes in 平水韵 by itself; it cannot be combined with --rhyme modern")
    chosen = forms.parse_form(form)
    if meter and chosen is not None and chosen.name not in prosody.FORM_NAMES:
        raise UserError(f"--meter needs a fixed form ({', '.join(prosody.FORM_NAMES)} or auto), not {form}")
    return rhyme


def _uses_prosody(requests: list[Request]) -> bool:
    """Does the batch need the 格律 tables and state? (If not, the loop is compiled without them.)"""
    return any(r.meter or r.rhyme == "pingshui" for r in requests)
