"""The data pipeline on a small corpus of our own, written here in each chinese-poetry layout.

No network: the npm path is exercised with a tarball built here and its own sha512 passed in,
and ``npm`` itself is replaced wherever it would run.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
import subprocess
import sys
import tarfile

import numpy as np
import pytest

import rnnjax.poetry.data.corpus as corpus
import rnnjax.poetry.data.dataset as dataset
from rnnjax.poetry.data import (
    EOP,
    MAX_LEN,
    PAD,
    START,
    BucketBatcher,
    Vocab,
    encode_poems,
    fingerprint,
    import_tutorial,
    load_npz,
    prepare_dataset,
    save_npz,
    train_val_split,
    unpad,
)
from rnnjax.poetry.errors import UserError

REPO = pathlib.Path(__file__).resolve().parents[2]
LONG = "白日依山盡，黃河入海流。" * 13  # 156 characters: cut at 125 tokens

# file name -> poems (traditional script, as the source has them)
CORPUS = {
    "poet.tang.0.json": [
        ["床前明月光，疑是地上霜。", "舉頭望明月，低頭思故鄉。"],
        ["闌風長雨（一作「東風細雨」）秋紛紛，四海八荒同一雲。", "童子解吟《長恨曲》，[爽]節在重九[一]。"],
        ["華山黑影霄崔嵬，金天□□門未開。"],
        ["。"],
        [],
        ["妖韶援綠{𥫗/戢}，鳧鴈將子遊。"],
    ],
    "poet.tang.1000.json": [
        [LONG],
        ["紅豆生南國,春來發幾枝?"],
        ["舉頭望明月，低頭思故鄉。", "悲夫！。"],
        ["Ｂ亂後碧井廢，時清瑤殿深。"],
        ["床前明月光，疑是地上霜。", "舉頭望明月，低頭思故鄉。"],  # duplicate of the first
    ],
}
KEPT_SIMPLIFIED = [
    "床前明月光，疑是地上霜。举头望明月，低头思故乡。",
    "阑风长雨秋纷纷，四海八荒同一云。童子解吟长恨曲，爽节在重九。",
    "白日依山尽，黄河入海流。" * 13,
    "红豆生南国，春来发几枝？",
    "举头望明月，低头思故乡。悲夫！",
]
DROPPED = {corpus.MISSING: 1, corpus.EMPTY: 2, corpus.UNENCODABLE: 1, corpus.OTHER: 1,
           corpus.DUPLICATE: 1}
READ = sum(len(v) for v in CORPUS.values())


def _poem_json(poems, title="題"):
    return json.dumps([{"author": "某", "title": title, "id": str(i), "paragraphs": p}
                       for i, p in enumerate(poems)], ensure_ascii=False).encode("utf-8")


def write_corpus(root: pathlib.Path, layout: str) -> pathlib.Path:
    """The corpus under ``root`` in a chinese-poetry layout, with decoys that must be ignored."""
    folder = root / layout
    folder.mkdir(parents=True)
    for name, poems in CORPUS.items():
        (folder / name).write_bytes(_poem_json(poems))
    # Decoys: rejected poems and Song poems sit beside the Tang files in the real package.
    (folder / "error").mkdir()
    (folder / "error" / "poet.tang.0.json").write_bytes(_poem_json([["錯誤誤錯誤，錯誤誤錯誤。"]]))
    (folder / "poet.song.0.json").write_bytes(_poem_json([["宋宋宋宋宋，宋宋宋宋宋。"]]))
    return root


def write_tarball(path: pathlib.Path) -> str:
    """An npm-style ``package/...`` tarball of the corpus; returns its npm integrity string."""
    with tarfile.open(path, "w:gz") as tar:
        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        add("package/package.json", b'{"name": "chinese-poetry"}')
        for name, poems in CORPUS.items():
            add(f"package/dist/quantangshi/{name}", _poem_json(poems))
        add("package/dist/quantangshi/error/poet.tang.0.json", _poem_json([["錯誤誤錯誤。"]]))
        add("package/dist/strains/json/poet.tang.0.json", _poem_json([["宋宋宋宋宋。"]]))
    return corpus.integrity_of(path)


# What the file decodes to: the long poem keeps its first 124 characters (125 tokens with <START>).
DECODED = sorted(p[: MAX_LEN - 1] for p in KEPT_SIMPLIFIED)


def decoded(path) -> list[str]:
    data, vocab = load_npz(path)
    return [vocab.decode(row) for row in data]


@pytest.fixture
def npm_folder(tmp_path):
    return write_corpus(tmp_path / "src", "package/dist/quantangshi")


@pytest.fixture
def no_npm(monkeypatch):
    """Fail loudly if anything tries to run npm (tests must never reach the network)."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"npm must not run here: {args}")
    monkeypatch.setattr(corpus.subprocess, "run", refuse)


# --------------------------------------------------------------------------------------------
# Cleaning


@pytest.mark.parametrize("raw, expected", [
    ("床前明月光，疑是地上霜。", "床前明月光，疑是地上霜。"),
    (" 紅豆生南國,\u3000春來發幾枝?", "紅豆生南國，春來發幾枝？"),
    ("闌風長雨（一作「東風細雨」）秋紛紛。", "闌風長雨秋紛紛。"),
    ("毫（鶴）立蛇形勢未休。", "毫立蛇形勢未休。"),
    ("甲乙丙丁，戊己庚辛。（按（內注）外注）", "甲乙丙丁，戊己庚辛。"),
    ("甲乙丙丁，戊己庚辛。（《某書》卷三（未完的注", "甲乙丙丁，戊己庚辛。"),
    ("[爽]節在重九[一]，清秋黃葉下[一二]。", "爽節在重九，清秋黃葉下。"),
    ("穿耳胡僧笑點頭。〖1〗", "穿耳胡僧笑點頭。"),
    ("童子解吟《長恨曲》，城邊問：「早晚發西京？」", "童子解吟長恨曲，城邊問：早晚發西京？"),
    ("悲來乎，悲來乎！。主人有酒且莫斟。", "悲來乎，悲來乎！主人有酒且莫斟。"),
    ("，。春花秋月，，。何時了。", "春花秋月。何時了。"),
    ("金天□□門未開。", corpus.MISSING),
    ("●●啼深竹，鵁鶄老溼沙。", corpus.MISSING),
    ("見此[眥]□血流。", corpus.MISSING),
    ("他鄉生白髮○舊國有青山。", corpus.MISSING),
    ("妖韶援綠{𥫗/戢}。", corpus.UNENCODABLE),
    ("⿰木養深黃狖小。", corpus.UNENCODABLE),
    ("素練風霜起\ue829。", corpus.UNENCODABLE),
    ("一二三四）五六七。", corpus.UNBALANCED),
    ("一二三四[五六七。", corpus.UNBALANCED),
    ("Ｂ亂後碧井廢。", corpus.OTHER),
    ("拭淚聽猿嗁/。", corpus.OTHER),
    ("第2首春風。", corpus.OTHER),
    ("。", corpus.EMPTY),
    ("空。", corpus.EMPTY),
    ("（只有注）", corpus.EMPTY),
])
def test_clean_poem_rules(raw, expected):
    text, reason = corpus.clean_poem(raw)
    if expected in corpus.DROP_REASONS:
        assert (text, reason) == (None, expected)
    else:
        assert (text, reason) == (expected, None)


def test_simplified_conversion_in_chunks_matches_per_poem():
    poems = ["舉頭望明月，低頭思故鄉。", "雲日隱層闕，風煙出綺疎。", "歸鴻背落霞。"] * 3000
    assert corpus.to_simplified(poems) == [corpus.to_simplified([p])[0] for p in poems[:3]] * 3000
    assert corpus.to_simplified(["舉頭望明月"]) == ["举头望明月"]


# --------------------------------------------------------------------------------------------
# Preparing the file from each layout


def test_prepare_from_npm_folder_cleans_converts_and_reports(npm_folder, tmp_path, capsys):
    out = tmp_path / "out" / "tang.npz"
    assert prepare_dataset(out, source=npm_folder) == out
    assert sorted(decoded(out)) == DECODED
    report = capsys.readouterr().out
    assert f"read {READ} poems from 2 files" in report
    assert "dropped 6: missing characters 1, unencodable character 1, other symbols 1, " \
           "empty 2, duplicate 1" in report
    data, vocab = load_npz(out)
    chars = sum(len(p) for p in KEPT_SIMPLIFIED)
    assert f"kept 5 poems (simplified script), {chars} characters in all; " \
           f"vocabulary {len(vocab)} tokens" in report
    assert len(vocab) == len(set("".join(KEPT_SIMPLIFIED))) + 3
    assert "错" not in vocab.stoi and "宋" not in vocab.stoi  # error/ and song files ignored


@pytest.mark.parametrize("layout", ["dist/quantangshi", "全唐诗"])
def test_other_layouts_give_the_same_file(layout, npm_folder, tmp_path):
    reference = prepare_dataset(tmp_path / "a.npz", source=npm_folder, quiet=True)
    src = write_corpus(tmp_path / "other", layout)
    other = prepare_dataset(tmp_path / "b.npz", source=src, quiet=True)
    assert fingerprint(other) == fingerprint(reference)


def test_traditional_keeps_the_script(npm_folder, tmp_path):
    out = prepare_dataset(tmp_path / "t.npz", source=npm_folder, traditional=True, quiet=True)
    poems = decoded(out)
    assert "床前明月光，疑是地上霜。舉頭望明月，低頭思故鄉。" in poems
    assert not any("举" in p for p in poems)


def test_padded_layout_is_the_tutorials(npm_folder, tmp_path):
    data, vocab = load_npz(prepare_dataset(tmp_path / "t.npz", source=npm_folder, quiet=True))
    assert data.dtype == np.int32 and data.shape == (5, MAX_LEN)
    rows = {vocab.decode(r): r for r in data}
    short = "红豆生南国，春来发几枝？"
    expected = np.concatenate([np.full(MAX_LEN - len(short) - 2, vocab.pad_id),
                               [vocab.start_id], vocab.encode(short), [vocab.eop_id]])
    np.testing.assert_array_equal(rows[short], expected)
    long = next(r for text, r in rows.items() if text.startswith("白日"))
    assert long[0] == vocab.start_id and vocab.eop_id not in long and vocab.pad_id not in long
    assert vocab.decode(long) == KEPT_SIMPLIFIED[2][: MAX_LEN - 1]


def test_second_run_does_nothing_and_force_rebuilds(npm_folder, tmp_path, capsys, monkeypatch):
    out = prepare_dataset(tmp_path / "t.npz", source=npm_folder, quiet=True)
    before = out.stat().st_mtime_ns

    def must_not_read(*a, **k):
        raise AssertionError("the corpus was read again")
    monkeypatch.setattr("rnnjax.poetry.data.load_corpus", must_not_read)
    prepare_dataset(out, source=npm_folder)
    assert f"{out} already exists (5 poems); use --force to rebuild" in capsys.readouterr().out
    assert out.stat().st_mtime_ns == before
    monkeypatch.undo()
    out.write_bytes(b"")  # not an npz any more: --force must replace it
    prepare_dataset(out, source=npm_folder, force=True, quiet=True)
    assert len(load_npz(out)[0]) == 5


# --------------------------------------------------------------------------------------------
# The npm tarball and its integrity


def test_tarball_with_matching_integrity_is_read_without_npm(tmp_path, no_npm):
    cache = tmp_path / "cache"
    cache.mkdir()
    integrity = write_tarball(cache / corpus.TARBALL_NAME)
    out = prepare_dataset(tmp_path / "t.npz", cache_dir=cache, integrity=integrity, quiet=True)
    assert sorted(decoded(out)) == DECODED


def test_cached_tarball_with_wrong_integrity_is_deleted(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    write_tarball(cache / corpus.TARBALL_NAME)
    monkeypatch.setattr(corpus.shutil, "which", lambda name: None)  # and no npm to fetch again
    with pytest.raises(UserError, match="install Node.js/npm, or pass --source"):
        prepare_dataset(tmp_path / "t.npz", cache_dir=cache, integrity="sha512-bad", quiet=True)
    assert list(cache.iterdir()) == [] and not (tmp_path / "t.npz").exists()


def test_fetched_tarball_with_wrong_integrity_is_an_error(tmp_path, monkeypatch):
    good = tmp_path / "good.tgz"
    integrity = write_tarball(good)
    calls = []

    def fake_npm_pack(cmd, **kwargs):  # what `npm pack --pack-destination DIR` does
        calls.append(cmd)
        dest = pathlib.Path(cmd[cmd.index("--pack-destination") + 1])
        (dest / corpus.TARBALL_NAME).write_bytes(good.read_bytes() + b"tampered")
        return subprocess.CompletedProcess(cmd, 0, "", "")
    monkeypatch.setattr(corpus.shutil, "which", lambda name: "/usr/bin/npm")
    monkeypatch.setattr(corpus.subprocess, "run", fake_npm_pack)
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match="integrity mismatch"):
        prepare_dataset(tmp_path / "t.npz", cache_dir=cache, integrity=integrity, quiet=True)
    assert calls and calls[0][1:3] == ["pack", "chinese-poetry@2.0.1"]
    assert list(cache.iterdir()) == [] and not (tmp_path / "t.npz").exists()

    # The same fetch with the right bytes lands in the cache under its package name.
    monkeypatch.setattr(corpus.subprocess, "run", lambda cmd, **kw: (
        pathlib.Path(cmd[cmd.index("--pack-destination") + 1], corpus.TARBALL_NAME)
        .write_bytes(good.read_bytes()), subprocess.CompletedProcess(cmd, 0, "", ""))[1])
    assert corpus.fetch_tarball(cache, integrity, log=lambda s: None) == cache / corpus.TARBALL_NAME
    assert [p.name for p in cache.iterdir()] == [corpus.TARBALL_NAME]


# --------------------------------------------------------------------------------------------
# Vocabulary, encoding, the file


def test_vocab_order_encode_decode():
    vocab = Vocab.build(["春眠不觉晓，", "春风不度。", "春"])
    # specials, then by count (春 3, 不 2), then the count-1 characters by code point
    assert vocab.itos[:5] == [PAD, START, EOP, "春", "不"]
    assert vocab.itos[5:] == sorted("眠觉晓，风度。")
    assert (vocab.pad_id, vocab.start_id, vocab.eop_id) == (0, 1, 2) and len(vocab) == 12
    ids = vocab.encode("春风不度")
    assert ids.dtype == np.int32 and vocab.decode(ids) == "春风不度"
    assert vocab.decode([vocab.pad_id, vocab.start_id, *ids, vocab.eop_id]) == "春风不度"
    with pytest.raises(UserError, match="2 character.*: 秋 月"):
        vocab.encode("春秋月秋")
    assert vocab.to_array().dtype.kind == "U" and vocab.to_array().tolist() == vocab.itos
    with pytest.raises(UserError, match="special"):
        Vocab(["a", "b"])


def test_encode_poems_front_pads_and_cuts():
    vocab = Vocab.build(["ab", "c"])
    a, b, c = (vocab.stoi[x] for x in "abc")
    data = encode_poems(["ab", "ccccccc"], vocab, max_len=6)
    np.testing.assert_array_equal(data, [[0, 0, 1, a, b, 2], [1, c, c, c, c, c]])
    assert data.dtype == np.int32
    assert [r.tolist() for r in unpad(data, vocab)] == [[1, a, b, 2], [1, c, c, c, c, c]]
    with pytest.raises(UserError, match="not in the vocabulary: d"):
        encode_poems(["abd"], vocab)


def test_save_load_round_trip_needs_no_pickle(tmp_path):
    vocab = Vocab.build(["床前明月光", "疑是地上霜"])
    data = encode_poems(["床前明月光", "疑是地上霜", "明月"], vocab)
    path = tmp_path / "sub" / "t.npz"
    save_npz(path, data, vocab)
    with np.load(path, allow_pickle=False) as f:
        assert sorted(f.files) == ["data", "vocab"] and f["vocab"].dtype.kind == "U"
    got, got_vocab = load_npz(path)
    np.testing.assert_array_equal(got, data)
    assert got_vocab == vocab and got.dtype == np.int32
    assert fingerprint(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600


def test_interrupted_write_leaves_no_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    vocab = Vocab.build(["明月"])
    data = encode_poems(["明月"], vocab)

    def dies_midway(f, **arrays):
        f.write(b"PK\x03\x04 half an archive")
        raise KeyboardInterrupt
    monkeypatch.setattr(dataset.np, "savez_compressed", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        save_npz(tmp_path / "t.npz", data, vocab)
    assert list(tmp_path.iterdir()) == []

    monkeypatch.undo()
    save_npz(tmp_path / "t.npz", data, vocab)
    old = fingerprint(tmp_path / "t.npz")
    monkeypatch.setattr(dataset.np, "savez_compressed", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        save_npz(tmp_path / "t.npz", encode_poems(["月"], vocab), vocab)
    assert [p.name for p in tmp_path.iterdir()] == ["t.npz"]
    assert fingerprint(tmp_path / "t.npz") == old


def _tutorial_npz(path: pathlib.Path, ix2word=None):
    """The tutorial's layout: specials last, dicts pickled into 0-d object arrays."""
    words = ["床", "前", "明", "月", "光", "，", "。", EOP, START, PAD]
    word2ix = {w: i for i, w in enumerate(words)}
    ix2word = {i: w for w, i in word2ix.items()} if ix2word is None else ix2word
    data = np.full((2, MAX_LEN), word2ix[PAD])
    data[0, -7:] = [word2ix[START], *(word2ix[w] for w in "床前明月光"), word2ix[EOP]]
    data[1, -4:] = [word2ix[START], word2ix["明"], word2ix["月"], word2ix[EOP]]
    np.savez_compressed(path, data=data, word2ix=np.array(word2ix, dtype=object),
                        ix2word=np.array(ix2word, dtype=object))
    return path


class _Payload:
    """Unpickling this creates a folder: proof of code running on load."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_tutorial_pickle_is_refused_without_trust(tmp_path):
    marker = tmp_path / "pwned"
    path = _tutorial_npz(tmp_path / "tang.npz", ix2word=_Payload(marker))
    with pytest.raises(UserError) as err:
        load_npz(path)
    message = str(err.value)
    assert "\n" not in message and "can run arbitrary code" in message
    assert "--trust-pickle" in message and "trust_pickle=True" in message
    assert not marker.exists()


def test_tutorial_file_loads_with_trust_and_imports(tmp_path):
    path = _tutorial_npz(tmp_path / "tutorial.npz")
    data, vocab = load_npz(path, trust_pickle=True)
    assert (vocab.eop_id, vocab.start_id, vocab.pad_id) == (7, 8, 9)  # the tutorial's own ids
    assert [vocab.decode(r) for r in data] == ["床前明月光", "明月"]
    out = import_tutorial(path, tmp_path / "ours.npz", trust_pickle=True, quiet=True)
    got, got_vocab = load_npz(out)  # our layout now: no trust needed
    np.testing.assert_array_equal(got, data)
    assert got_vocab == vocab


# --------------------------------------------------------------------------------------------
# Split and batches


def test_train_val_split_is_fixed_by_seed():
    items = list(range(1000))
    train, val = train_val_split(items, 0.03, seed=5)
    assert len(val) == 30 and sorted(train + val) == items and not set(train) & set(val)
    assert train_val_split(items, 0.03, seed=5) == (train, val)
    assert train_val_split(items, 0.03, seed=6)[1] != val
    assert train == sorted(train)  # input order kept


def _poems_like_tang(n, seed=0):
    """Token sequences with the corpus's shape: mostly 4 or 8 lines of 5 or 7 characters."""
    rng = np.random.default_rng(seed)
    common = np.array([26, 34, 50, 66, 98, 125])
    lengths = np.where(rng.random(n) < 0.8, rng.choice(common, n), rng.integers(4, 126, n))  # up to 125 tokens
    return [np.concatenate([[1], rng.integers(3, 50, k - 2), [2]]).astype(np.int32)
            for k in lengths]


def test_bucketed_epoch_covers_each_poem_once_with_little_padding():
    poems = _poems_like_tang(3000)
    batcher = BucketBatcher(poems, batch_size=64, seed=3)
    assert 1 < len(batcher.bucket_lengths) <= 8 and batcher.bucket_lengths[-1] == 124
    batches = batcher.epoch(0)
    assert len(batches) == batcher.num_batches()
    seen = []
    real = padded = 0
    for b in batches:
        t = b.inputs.shape[0]
        assert t in batcher.bucket_lengths
        assert b.inputs.shape == b.targets.shape == b.mask.shape == (t, 64)
        assert b.inputs.dtype == b.targets.dtype == np.int32 and b.mask.dtype == np.float32
        np.testing.assert_array_equal(b.inputs[1:], b.targets[:-1])  # shifted by one
        for col in range(64):
            steps = int(b.mask[:, col].sum())
            np.testing.assert_array_equal(b.mask[:steps, col], 1)  # padding only at the end
            if steps:
                seq = np.append(b.inputs[:steps, col], b.targets[steps - 1, col])
                assert seq[0] == 1 and seq[-1] == 2
                seen.append(seq.tobytes())
        real += int(b.mask.sum())
        padded += b.mask.size
    assert sorted(seen) == sorted(p.tobytes() for p in poems)
    fixed = 1 - sum(len(p) - 1 for p in poems) / (len(poems) * (MAX_LEN - 1))
    assert batcher.padding_fraction() == pytest.approx(1 - real / padded)
    assert batcher.padding_fraction() < 0.10 < 0.4 < fixed


def test_epochs_are_reproducible_and_differ():
    poems = _poems_like_tang(500)
    a, b = BucketBatcher(poems, 32, seed=1), BucketBatcher(poems, 32, seed=1)
    first, again = a.epoch(4), b.epoch(4)
    assert all(np.array_equal(x.inputs, y.inputs) for x, y in zip(first, again))
    assert not all(np.array_equal(x.inputs, y.inputs) for x, y in zip(first, a.epoch(5))
                   if x.inputs.shape == y.inputs.shape)
    assert a.num_batches() == len(a.epoch(5))


def test_given_bucket_lengths_are_used_and_checked():
    poems = _poems_like_tang(200)
    batcher = BucketBatcher(poems, 16, bucket_lengths=[124, 40])
    assert batcher.bucket_lengths == (40, 124)
    assert {b.inputs.shape[0] for b in batcher.epoch(0)} == {40, 124}
    with pytest.raises(ValueError, match="longer than the longest bucket"):
        BucketBatcher(poems, 16, bucket_lengths=[40])


# --------------------------------------------------------------------------------------------
# The command line


def _cli(*args, env=None):
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "rnnjax.poetry.data", *map(str, args)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)


def _bad_inputs(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = write_corpus(tmp_path / "broken", "全唐诗")
    (broken / "全唐诗" / "poet.tang.1000.json").write_text('[{"paragraphs": ["床前', "utf-8")
    odd = write_corpus(tmp_path / "odd", "全唐诗")
    (odd / "全唐诗" / "poet.tang.0.json").write_text('{"paragraphs": []}', "utf-8")
    tutorial = _tutorial_npz(tmp_path / "tutorial.npz")
    out = tmp_path / "out.npz"
    return [
        (["--source", empty, "--out", out], f"--source {empty}: no poet.tang.*.json files"),
        (["--source", tmp_path / "nowhere", "--out", out], "nowhere: no such folder"),
        (["--source", broken, "--out", out], "poet.tang.1000.json: not valid UTF-8 JSON"),
        (["--source", odd, "--out", out], "poet.tang.0.json: expected a JSON list of poems"),
        (["--out", out], "install Node.js/npm"),
        (["--import-tutorial", tutorial, "--out", out], "pass --trust-pickle"),
    ]


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    from rnnjax.poetry.data.__main__ import main

    monkeypatch.setenv("RNNJAX_CACHE", str(tmp_path / "empty"))  # no cached tarball there
    monkeypatch.setattr(corpus.shutil, "which", lambda name: None)  # and no npm
    for args, expected in _bad_inputs(tmp_path):
        with pytest.raises(SystemExit) as exit_:
            main(list(map(str, args)))
        err = capsys.readouterr().err
        assert exit_.value.code == 2, (args, err)
        assert err.startswith("error: ") and err.count("\n") == 1 and expected in err, err
        assert not (tmp_path / "out.npz").exists()


def test_cli_process_exit_status_and_message(tmp_path):
    # The same path for real: a process, its exit status, its stderr without a traceback.
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _cli("--source", empty, "--out", tmp_path / "out.npz")
    assert proc.returncode == 2
    assert proc.stderr == f"error: --source {empty}: no poet.tang.*.json files in it (looked in " \
                          "package/dist/quantangshi/, dist/quantangshi/, 全唐诗/, 全唐詩/, ./)\n"


def test_cli_builds_then_says_it_is_there(npm_folder, tmp_path, capsys):
    from rnnjax.poetry.data.__main__ import main

    out = tmp_path / "tang.npz"
    first = _cli("--source", npm_folder, "--out", out)
    assert first.returncode == 0, first.stderr
    assert "kept 5 poems" in first.stdout and out.exists()
    main(["--source", str(npm_folder), "--out", str(out)])
    assert "already exists (5 poems)" in capsys.readouterr().out
