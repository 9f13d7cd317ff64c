"""Classical forms, rhyme classes and per-token tables for constrained decoding.

Everything here is plain Python / numpy, computed once per vocabulary: the jit-compiled decoding loop
in `rnnjax.poetry.generation` only indexes these tables, so no Python runs per character.
"""
from __future__ import annotations

import dataclasses
import functools
import re
import unicodedata

import numpy as np

from rnnjax.poetry.errors import UserError

COMMA, PERIOD = "，", "。"
# Punctuation that closes a line (一句). Fixed forms only ever use `，` and `。`; free form may use all.
LINE_ENDERS = "，。！？；"
# Where the printed poem breaks: after a sentence, so a form prints one couplet per line.
SENTENCE_ENDERS = "。！？"
# What users type on a Western keyboard, read as the full-width marks the corpus uses.
ASCII_PUNCT = str.maketrans({",": "，", ".": "。", "!": "！", "?": "？", ";": "；", ":": "："})


@dataclasses.dataclass(frozen=True)
class Form:
    """A poem shape. line_len == 0 is free form (lines of any length, any number of lines)."""

    line_len: int
    n_lines: int
    name: str

    @property
    def free(self) -> bool:
        return self.line_len == 0

    @property
    def n_tokens(self) -> int:
        """Tokens a complete poem of this form takes, characters and punctuation (without <EOP>)."""
        return self.n_lines * (self.line_len + 1)

    def punct_after(self, line: int) -> str:
        """`，` closes odd lines (1-based) and `。` even ones; an odd-length poem ends on `。` too."""
        return PERIOD if line % 2 == 1 or line == self.n_lines - 1 else COMMA


FREE = Form(0, 0, "free")
FORMS = {
    "free": FREE,
    "5x4": Form(5, 4, "5x4"),
    "5x8": Form(5, 8, "5x8"),
    "7x4": Form(7, 4, "7x4"),
    "7x8": Form(7, 8, "7x8"),
}
ALIASES = {"五言绝句": "5x4", "五言律诗": "5x8", "七言绝句": "7x4", "七言律诗": "7x8", "自由": "free"}
# The same names typed in traditional script are accepted too (not listed in --help).
_TRADITIONAL = {"五言絕句": "5x4", "五言律詩": "5x8", "七言絕句": "7x4", "七言律詩": "7x8"}
FORM_CHOICES = (*FORMS, *ALIASES, "auto")

# 十三辙, the thirteen rhyme classes of Beijing opera and modern poetry, as pypinyin strict finals.
# A modern approximation of Tang rhyme (平水韵 has 106 classes and needs Middle Chinese readings), but
# it is what a reader today hears as a rhyme.
RHYME_CLASSES = {
    "发花": ("a", "ia", "ua"),
    "梭波": ("o", "uo", "e"),
    "乜斜": ("ie", "ve"),
    "一七": ("i", "v", "er"),
    "姑苏": ("u",),
    "怀来": ("ai", "uai"),
    "灰堆": ("ei", "uei"),
    "遥条": ("ao", "iao"),
    "油求": ("ou", "iou"),
    "言前": ("an", "ian", "uan", "van"),
    "人辰": ("en", "in", "uen", "vn"),
    "江阳": ("ang", "iang", "uang"),
    "中东": ("eng", "ing", "ong", "iong", "ueng"),
}
RHYME_NAMES = tuple(RHYME_CLASSES)
_FINAL_TO_CLASS = {f: i for i, fs in enumerate(RHYME_CLASSES.values()) for f in fs}


def parse_form(name: str) -> Form | None:
    """A form name or alias -> Form; 'auto' -> None (decided from the prefix or acrostic).

    Case, surrounding spaces and full-width letters or digits don't matter (`5X4`, `５ｘ４`, ` Free `)."""
    key = unicodedata.normalize("NFKC", name).strip().lower()
    if key == "auto":
        return None
    key = ALIASES.get(key, _TRADITIONAL.get(key, key))
    if key not in FORMS:
        shown = name if len(name) <= 40 else name[:40] + "..."
        raise UserError(f"unknown form {shown!r}; choose one of: {', '.join(FORM_CHOICES)}")
    return FORMS[key]


def is_hanzi(ch: str) -> bool:
    """A CJK ideograph: the only kind of token allowed inside a line of a fixed form."""
    return len(ch) == 1 and unicodedata.category(ch) == "Lo" and "CJK" in unicodedata.name(ch, "")


def _pypinyin():
    """pypinyin's (Style, lazy_pinyin), imported on first use. When nothing imported pypinyin before, it
    is imported without its phrase dictionary (PYPINYIN_NO_PHRASES, set only around the import): one
    character at a time needs only the character dictionary - the classes of all 8,711 tokens of the
    shipped vocabulary are the same either way - and loading the phrases was 0.3 s of generate's start."""
    import os
    import sys

    if "pypinyin" not in sys.modules and "PYPINYIN_NO_PHRASES" not in os.environ:
        os.environ["PYPINYIN_NO_PHRASES"] = "1"
        try:
            import pypinyin  # noqa: F401  (the import is the point)
        finally:
            del os.environ["PYPINYIN_NO_PHRASES"]
    from pypinyin import Style, lazy_pinyin

    return Style, lazy_pinyin


def rhyme_class(ch: str) -> int:
    """Index into RHYME_NAMES of a character's most common reading, or -1 (no pinyin reading)."""
    if not is_hanzi(ch):
        return -1
    Style, lazy_pinyin = _pypinyin()
    final = lazy_pinyin(ch, style=Style.FINALS, strict=True)[0]
    return _FINAL_TO_CLASS.get(final, -1)


def split_lines(text: str) -> list[str]:
    """Split a poem after each line-closing mark, keeping the mark: '床前明月光，疑是地上霜。' -> 2."""
    return [m for m in re.findall(f"[^{LINE_ENDERS}]*[{LINE_ENDERS}]|[^{LINE_ENDERS}]+$", text) if m]


def print_lines(text: str) -> list[str]:
    """Lines as a poem is printed: one sentence (for the forms, one couplet) per line."""
    return [m for m in re.findall(f"[^{SENTENCE_ENDERS}]*[{SENTENCE_ENDERS}]|[^{SENTENCE_ENDERS}]+$", text) if m]


def auto_form(prefix: str, acrostic: str) -> Form:
    """The form `--form auto` picks.

    An acrostic gets lines of 7 characters, one per acrostic character (4 -> 七言绝句, 8 -> 七言律诗).
    A prefix whose first line is 5 or 7 characters (closed by punctuation, or the whole prefix)
    selects that line length, as a quatrain - or a regulated verse when the prefix is longer than 4
    lines. Anything else is free form.
    """
    if acrostic:
        n = len(acrostic)
        return FORMS["7x4"] if n == 4 else FORMS["7x8"] if n == 8 else Form(7, n, f"7x{n}")
    if not prefix:
        return FREE
    first = split_lines(prefix)[0].rstrip(LINE_ENDERS)
    if len(first) not in (5, 7):
        return FREE
    for n_lines in (4, 8):
        form = FORMS[f"{len(first)}x{n_lines}"]
        if check_prefix(prefix, form) is None:
            return form
    return FREE


def check_prefix(prefix: str, form: Form) -> str | None:
    """Why `prefix` cannot begin a poem of `form`, or None when it can."""
    if form.free:
        return None
    if len(prefix) > form.n_tokens:
        return f"the prefix has {len(prefix)} characters, more than a whole {form.name} poem ({form.n_tokens})"
    for t, ch in enumerate(prefix):
        line, col = divmod(t, form.line_len + 1)
        if col == form.line_len:
            want = form.punct_after(line)
            if ch != want:
                return f"character {t + 1} of the prefix should be {want!r} in {form.name}, got {ch!r}"
        elif not is_hanzi(ch):
            return (f"character {t + 1} of the prefix is {ch!r}, but line {line + 1} of {form.name} "
                    f"needs {form.line_len} characters before its punctuation")
    return None


def check_poem(text: str, form: Form) -> bool:
    """Is a finished poem (text without <EOP>) well formed?

    Fixed form: exactly n_lines lines of line_len hanzi, each closed by the form's mark.
    Free form: non-empty, every line non-empty and closed by a line-closing mark.
    """
    lines = split_lines(text)
    if not lines or any(len(line) < 2 or line[-1] not in LINE_ENDERS for line in lines):
        return False
    if form.free:
        return True
    if len(lines) != form.n_lines:
        return False
    return all(
        len(line) == form.line_len + 1
        and all(is_hanzi(c) for c in line[:-1])
        and line[-1] == form.punct_after(k)
        for k, line in enumerate(lines)
    )


@dataclasses.dataclass(frozen=True)
class TokenTables:
    """Per-token facts the decoding loop masks with; arrays of shape (V,)."""

    content: np.ndarray      # bool: a hanzi, allowed inside a line
    other: np.ndarray        # bool: any other non-special token (free form only, not at a line start)
    ender: np.ndarray        # bool: closes a line
    rhyme: np.ndarray        # int32: rhyme class, -1 for none
    comma_id: int            # -1 when the vocabulary lacks it (fixed forms then unavailable)
    period_id: int
    eop_id: int


def _token_tables(itos: tuple[str, ...], special: tuple[int, ...], eop_id: int) -> TokenTables:
    content = np.array([is_hanzi(t) for t in itos], bool)
    ender = np.array([len(t) == 1 and t in LINE_ENDERS for t in itos], bool)
    content[list(special)] = False
    ender[list(special)] = False
    other = ~(content | ender)
    other[list(special)] = False
    rhyme = np.array([rhyme_class(t) if content[i] else -1 for i, t in enumerate(itos)], np.int32)
    stoi = {t: i for i, t in enumerate(itos)}
    return TokenTables(content, other, ender, rhyme, stoi.get(COMMA, -1), stoi.get(PERIOD, -1), eop_id)


# What a poem may emit next is one of a few "kinds"; the decoding loop computes a kind per poem and
# adds one precomputed row of 0 / -inf, instead of building a (batch, vocab) mask each step.
K_EOP, K_COMMA, K_PERIOD, K_CHAR, K_RHYME_ANY = 0, 1, 2, 3, 4   # fixed forms (K_RHYME_ANY: has a rhyme)
K_RHYME = 5                                                     # + class: characters of one rhyme class
K_FREE_START = K_RHYME + len(RHYME_NAMES)                       # free form, line start: a character
K_FREE_START_OR_END = K_FREE_START + 1                          # ... or <EOP> (after a closed line)
K_FREE_BODY = K_FREE_START + 2                                  # inside a line: anything but specials
K_FREE_CLOSE = K_FREE_START + 3                                 # line at its longest: punctuation only
N_KINDS = K_FREE_START + 4


def kind_table(t: TokenTables) -> np.ndarray:
    """(N_KINDS, V) bool: which tokens each kind allows."""
    v = len(t.content)
    table = np.zeros((N_KINDS, v), bool)
    table[K_EOP, t.eop_id] = True
    if t.comma_id >= 0:
        table[K_COMMA, t.comma_id] = True
    if t.period_id >= 0:
        table[K_PERIOD, t.period_id] = True
    table[K_CHAR] = t.content
    table[K_RHYME_ANY] = t.content & (t.rhyme >= 0)
    for r in range(len(RHYME_NAMES)):
        table[K_RHYME + r] = t.content & (t.rhyme == r)
    table[K_FREE_START] = t.content
    table[K_FREE_START_OR_END] = t.content
    table[K_FREE_START_OR_END, t.eop_id] = True
    table[K_FREE_BODY] = t.content | t.other | t.ender
    table[K_FREE_CLOSE] = t.ender
    return table


def token_tables(vocab) -> TokenTables:
    """Tables for a Vocab, cached per vocabulary content (pypinyin over ~8k characters takes ~1 s)."""
    special = (vocab.pad_id, vocab.start_id, vocab.eop_id)
    return _cached_tables(tuple(vocab.itos), special, vocab.eop_id)


_cached_tables = functools.lru_cache(maxsize=8)(_token_tables)
