"""chinese-poetry JSON -> cleaned Tang poems, one string per poem.

Source. The npm package ``chinese-poetry@2.0.1`` (fetched with ``npm pack`` into a cache folder,
``~/.cache/rnnjax/`` or ``$RNNJAX_CACHE``), its sha512 checked against :data:`NPM_INTEGRITY` before
a byte of it is parsed; the JSON is read straight out of the tarball. Only
``package/dist/quantangshi/poet.tang.<n>.json`` is used (not ``error/``, not ``strains/``). A local
folder can stand in for it, laid out like the package (``[package/]dist/quantangshi/``) or like the
chinese-poetry git repository (``全唐诗/``).

Cleaning rules, applied to each poem in this order (the body is ``''.join(paragraphs)``):

1. Whitespace is removed; ASCII and half-width punctuation becomes full-width
   (``, . ? ! ; : ( )`` -> ``，。？！；：（）``; ``［］〔〕｛｝`` -> ``[]{}``).
2. Editorial notes in round brackets are removed with their content, nested ones too:
   ``（一作「東風細雨」）``, ``毫（鶴）`` (a reading), ``（〖1〗按…）`` (a commentary). A ``（``
   left open is a note that runs to the end of the poem: the poem is cut there. A stray ``）``
   drops the poem (*unbalanced brackets*).
3. Square brackets are the editors' emendations and footnote marks (全唐詩補編 conventions):
   ``[一]``, ``[一二]`` (numerals only) are footnote marks and are removed; any other ``[字]`` is a
   supplied or corrected character and is kept without its brackets. A stray ``[`` or ``]`` drops
   the poem (*unbalanced brackets*).
4. Title and quotation marks are removed and their content kept: ``《》〈〉「」『』“”‘’``
   (``童子解吟《長恨曲》`` is poem text, not a note).
5. A poem that still holds a gap mark for a missing or unreadable character (``□ ■ ○ 〇 ● ◯ △ ＿ …``)
   is dropped (*missing characters*): the gap cannot be repaired from the text.
6. A poem holding a character that Unicode cannot spell (an ideographic description in braces like
   ``{𥫗/戢}``, an IDS operator like ``⿰``, or a private-use code point) is dropped
   (*unencodable character*).
7. Any other character that is neither a Han character nor kept punctuation ``，。、？！；：``
   (digits, Latin letters, ``·``, ``/``, ``-``, ``〖〗``…) drops the poem (*other symbols*).
8. Runs of punctuation collapse to one mark (the first of ``。？！`` in the run, else its first
   mark: ``，。`` -> ``。``, ``！。`` -> ``！``); punctuation at the start is removed.
9. A poem left with fewer than 4 Han characters is dropped (*empty*): the source holds bare
   ``。`` entries and ``空。`` placeholders for lost poems; the shortest real ones are 5-character
   half-couplets.

Then the kept poems are converted to simplified script with OpenCC ``t2s`` (unless
``traditional=True``), in a few large calls because a call per poem costs more in overhead.
Finally exact duplicates (after conversion, which merges variant spellings) are dropped, keeping
the first (*duplicate*): a poem printed twice would otherwise count twice in training and could
sit on both sides of the train/validation split. Poems keep the source's order (file number, then
position in the file).
"""
from __future__ import annotations

import base64
import collections
import dataclasses
import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Sequence

from tqdm import tqdm

from rnnjax.poetry.errors import UserError

NPM_PACKAGE = "chinese-poetry"
NPM_VERSION = "2.0.1"
NPM_INTEGRITY = (
    "sha512-KtYARvV7CWNtax0na9+Jn6PlhGgSoid7PWyDzXI4KsCEm2odZcqEQyval5koaLygZnM/EQ3lfJ//25K8p3uHNg=="
)
TARBALL_NAME = f"{NPM_PACKAGE}-{NPM_VERSION}.tgz"

# Only these files: quantangshi/error/ holds rejected duplicates and strains/ holds tone patterns.
_TANG_FILE = re.compile(r"poet\.tang\.(\d+)\.json")
_TARBALL_MEMBER = re.compile(r"package/dist/quantangshi/(poet\.tang\.\d+\.json)")
_FOLDER_LAYOUTS = ("package/dist/quantangshi", "dist/quantangshi", "全唐诗", "全唐詩", ".")

KEPT_PUNCTUATION = "，。、？！；："
_FINAL_PUNCTUATION = "。？！"

# Drop reasons, in the order the report lists them.
MISSING = "missing characters"
UNENCODABLE = "unencodable character"
UNBALANCED = "unbalanced brackets"
OTHER = "other symbols"
EMPTY = "empty"
DUPLICATE = "duplicate"
DROP_REASONS = (MISSING, UNENCODABLE, UNBALANCED, OTHER, EMPTY, DUPLICATE)
MIN_HAN = 4

_HALF_TO_FULL = str.maketrans({
    ",": "，", ".": "。", "?": "？", "!": "！", ";": "；", ":": "：", "(": "（", ")": "）",
    "｡": "。", "､": "、", "［": "[", "］": "]", "〔": "[", "〕": "]", "｛": "{", "｝": "}",
})
_WHITESPACE = re.compile(r"\s+")
_INNER_NOTE = re.compile(r"（[^（）]*）")
_BRACKETED = re.compile(r"\[([^\[\]]*)\]")
_NUMERALS = re.compile(r"[一二三四五六七八九十〇○零百0-9]+")
_FOOTNOTE_MARK = re.compile(r"〖[一二三四五六七八九十〇○零百0-9]+〗")
_QUOTE_MARKS = str.maketrans("", "", "《》〈〉「」『』“”‘’")
_GAP_MARKS = re.compile(r"[□■○〇●◯△▲＿_…⋯]")
_UNENCODABLE = re.compile(r"[{}\u2ff0-\u2fff\ue000-\uf8ff\U000f0000-\U0010ffff]")
# Han: CJK unified ideographs with every extension, plus compatibility ideographs.
_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
_HAN_CHAR = re.compile(f"[{_HAN}]")
_NOT_KEPT = re.compile(f"[^{_HAN}{KEPT_PUNCTUATION}]")
_PUNCT_RUN = re.compile(f"[{KEPT_PUNCTUATION}]{{2,}}")
_LEADING_PUNCT = re.compile(f"^[{KEPT_PUNCTUATION}]+")


def _bar_off(progress: bool) -> bool | None:
    """tqdm's ``None`` draws bars only on a terminal: logs and pipes get the report alone."""
    return None if progress else True


def default_cache_dir() -> pathlib.Path:
    """``$RNNJAX_CACHE`` or ``~/.cache/rnnjax``: outside the repository, shared between checkouts."""
    env = os.environ.get("RNNJAX_CACHE")
    return pathlib.Path(env).expanduser() if env else pathlib.Path.home() / ".cache" / "rnnjax"


# --------------------------------------------------------------------------------------------
# Cleaning


def _collapse_punctuation(run: re.Match) -> str:
    marks = run.group(0)
    return next((m for m in marks if m in _FINAL_PUNCTUATION), marks[0])


def clean_poem(text: str) -> tuple[str | None, str | None]:
    """Apply the module's cleaning rules to one poem body: ``(cleaned, None)`` or ``(None, reason)``."""
    text = _WHITESPACE.sub("", text).translate(_HALF_TO_FULL)

    # Innermost first, so a note inside a note goes with it.
    while True:
        text, n = _INNER_NOTE.subn("", text)
        if not n:
            break
    if "（" in text:
        text = text[: text.index("（")]
    if "）" in text:
        return None, UNBALANCED

    text = _FOOTNOTE_MARK.sub("", text)
    text = _BRACKETED.sub(lambda m: "" if _NUMERALS.fullmatch(m.group(1)) else m.group(1), text)
    if "[" in text or "]" in text:
        return None, UNBALANCED

    text = text.translate(_QUOTE_MARKS)
    if _GAP_MARKS.search(text):
        return None, MISSING
    if _UNENCODABLE.search(text):
        return None, UNENCODABLE
    if _NOT_KEPT.search(text):
        return None, OTHER

    text = _LEADING_PUNCT.sub("", _PUNCT_RUN.sub(_collapse_punctuation, text))
    if len(_HAN_CHAR.findall(text)) < MIN_HAN:
        return None, EMPTY
    return text, None


def to_simplified(poems: Sequence[str], progress: bool = False) -> list[str]:
    """OpenCC t2s over the whole corpus in a few large calls (per-poem calls cost more in overhead)."""
    import opencc  # the C++ converter loads its dictionaries on construction: only when needed

    converter = opencc.OpenCC("t2s")
    out: list[str] = []
    chunk = 5000
    for start in tqdm(range(0, len(poems), chunk), desc="t2s", unit="chunk", disable=_bar_off(progress)):
        part = poems[start : start + chunk]
        converted = converter.convert("\n".join(part)).split("\n")
        if len(converted) != len(part):  # cleaned poems hold no whitespace; guard anyway
            converted = [converter.convert(p) for p in part]
        out.extend(converted)
    return out


# --------------------------------------------------------------------------------------------
# Reading the source


def _parse_file(name: str, raw: bytes) -> list[str]:
    """One ``poet.tang.*.json``: a list of ``{"paragraphs": [str, ...], ...}`` -> poem bodies."""
    try:
        items = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{name}: not valid UTF-8 JSON ({e})") from None
    if not isinstance(items, list):
        raise UserError(f"{name}: expected a JSON list of poems, got {type(items).__name__}")
    bodies = []
    for i, item in enumerate(items):
        paragraphs = item.get("paragraphs") if isinstance(item, dict) else None
        if not isinstance(paragraphs, list) or not all(isinstance(p, str) for p in paragraphs):
            raise UserError(f"{name}: poem {i} has no list of strings under 'paragraphs'")
        bodies.append("".join(paragraphs))
    return bodies


def _file_order(name: str) -> int:
    return int(_TANG_FILE.search(name).group(1))


def integrity_of(path: pathlib.Path) -> str:
    """npm's ``integrity`` string (``sha512-<base64>``) of a file."""
    digest = hashlib.sha512()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return "sha512-" + base64.b64encode(digest.digest()).decode("ascii")


def _check_integrity(path: pathlib.Path, integrity: str) -> bool:
    return integrity_of(path) == integrity


def fetch_tarball(cache_dir: str | os.PathLike | None = None, integrity: str = NPM_INTEGRITY,
                  npm: str = "npm", log: Callable[[str], None] = print) -> pathlib.Path:
    """The verified ``chinese-poetry`` tarball in the cache, running ``npm pack`` only when needed.

    A cached tarball that fails the check is deleted and fetched again; a freshly fetched one that
    fails is deleted and is an error, so nothing unverified is ever read.
    """
    cache = pathlib.Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    target = cache / TARBALL_NAME
    if target.is_file():
        if _check_integrity(target, integrity):
            return target
        log(f"cached {target} fails its integrity check; deleting it and fetching it again")
        target.unlink()

    npm_path = shutil.which(npm)
    if npm_path is None:
        raise UserError(
            f"cannot fetch {NPM_PACKAGE}@{NPM_VERSION}: `{npm}` not found; install Node.js/npm, "
            f"or pass --source DIR with a local copy of the chinese-poetry data")
    cache.mkdir(parents=True, exist_ok=True)
    log(f"fetching {NPM_PACKAGE}@{NPM_VERSION} with npm pack into {cache} (about 85 MB)")
    with tempfile.TemporaryDirectory(dir=cache, prefix=".npm-pack-") as tmp:
        proc = subprocess.run(
            [npm_path, "pack", f"{NPM_PACKAGE}@{NPM_VERSION}", "--pack-destination", tmp],
            capture_output=True, text=True)
        packed = pathlib.Path(tmp) / TARBALL_NAME
        if proc.returncode != 0 or not packed.is_file():
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise UserError(f"npm pack {NPM_PACKAGE}@{NPM_VERSION} failed: {last}; "
                            f"pass --source DIR to use a local copy instead")
        got = integrity_of(packed)
        if got != integrity:
            raise UserError(  # the temporary folder, and the tarball in it, is deleted on the way out
                f"{NPM_PACKAGE}@{NPM_VERSION} tarball integrity mismatch: expected {integrity}, "
                f"got {got}; deleted it, nothing was written")
        os.replace(packed, target)
    return target


def read_tarball(path: pathlib.Path, progress: bool = False) -> tuple[list[str], int]:
    """Poem bodies of the Tang files inside an npm tarball, and how many files held them."""
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = tqdm(tar, desc="reading tarball", unit=" files", disable=_bar_off(progress))
            for member in members:
                match = _TARBALL_MEMBER.fullmatch(member.name)
                if match and member.isfile():
                    found[member.name] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise UserError(f"{path}: not a readable .tgz ({e})") from None
    if not found:
        raise UserError(f"{path}: no package/dist/quantangshi/poet.tang.*.json files in it")
    bodies: list[str] = []
    for name in sorted(found, key=_file_order):
        bodies.extend(_parse_file(f"{path}:{name}", found[name]))
    return bodies, len(found)


def _tang_files(folder: pathlib.Path) -> list[pathlib.Path]:
    for layout in _FOLDER_LAYOUTS:
        candidate = folder / layout
        if candidate.is_dir():
            files = [p for p in candidate.iterdir() if _TANG_FILE.fullmatch(p.name) and p.is_file()]
            if files:
                return sorted(files, key=lambda p: _file_order(p.name))
    return []


def read_folder(folder: str | os.PathLike, progress: bool = False) -> tuple[list[str], int]:
    """Poem bodies from a local folder laid out like the npm package or the git repository."""
    folder = pathlib.Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"--source {folder}: no such folder")
    files = _tang_files(folder)
    if not files:
        raise UserError(
            f"--source {folder}: no poet.tang.*.json files in it (looked in "
            + ", ".join(f"{layout}/" for layout in _FOLDER_LAYOUTS) + ")")
    bodies: list[str] = []
    for file in tqdm(files, desc="reading", unit=" files", disable=_bar_off(progress)):
        bodies.extend(_parse_file(str(file), file.read_bytes()))
    return bodies, len(files)


# --------------------------------------------------------------------------------------------
# The whole step


@dataclasses.dataclass
class Corpus:
    """Cleaned poems and what it took to get them: the numbers the CLI reports."""

    poems: list[str]
    read: int
    dropped: collections.Counter
    origin: str
    files: int
    simplified: bool

    @property
    def chars(self) -> int:
        return sum(len(p) for p in self.poems)


def clean_poems(bodies: Iterable[str], progress: bool = False
                ) -> tuple[list[str], collections.Counter]:
    kept: list[str] = []
    dropped: collections.Counter = collections.Counter()
    for body in tqdm(bodies, desc="cleaning", unit=" poems", disable=_bar_off(progress)):
        text, reason = clean_poem(body)
        if reason is None:
            kept.append(text)
        else:
            dropped[reason] += 1
    return kept, dropped


def load_corpus(source: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                traditional: bool = False, integrity: str = NPM_INTEGRITY, npm: str = "npm",
                progress: bool = False, log: Callable[[str], None] = print) -> Corpus:
    """Read (from ``source`` or the verified npm tarball), clean and convert the Tang poems."""
    if source is not None:
        bodies, files = read_folder(source, progress)
        origin = str(source)
    else:
        tarball = fetch_tarball(cache_dir, integrity, npm, log)
        bodies, files = read_tarball(tarball, progress)
        origin = f"{NPM_PACKAGE}@{NPM_VERSION} ({tarball})"
    kept, dropped = clean_poems(bodies, progress)
    if not traditional:
        kept = to_simplified(kept, progress)
    unique = list(dict.fromkeys(kept))
    if len(unique) < len(kept):
        dropped[DUPLICATE] += len(kept) - len(unique)
    kept = unique
    return Corpus(kept, len(bodies), dropped, origin, files, not traditional)
