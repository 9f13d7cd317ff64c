"""python -m rnnjax.poetry export --from-torch / --to-torch: the tutorial's torch Net in and out of a checkpoint."""
import json
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn as nn

from rnnjax.poetry import forms
from rnnjax.poetry.checkpoint import load_config, load_model
from rnnjax.poetry.data import EOP, MAX_LEN, PAD, START, fingerprint, import_tutorial
from rnnjax.poetry.evaluate import validation_perplexity
from rnnjax.poetry.export import main
from tutorial_net import Net

ROOT = pathlib.Path(__file__).resolve().parents[2]
POEMS = ["白日依山尽，黄河入海流。欲穷千里目，更上一层楼。",
         "红豆生南国，春来发几枝。愿君多采撷，此物最相思。",
         "床前明月光，疑是地上霜。举头望明月，低头思故乡。"]
E, H = 8, 16




def tutorial_npz(path, poems=POEMS):
    """The tutorial's layout: characters, then the specials; word2ix/ix2word pickled; rows front-padded."""
    words = [*dict.fromkeys("".join(poems)), EOP, START, PAD]
    word2ix = {w: i for i, w in enumerate(words)}
    ix2word = {i: w for w, i in word2ix.items()}
    data = np.full((len(poems), MAX_LEN), word2ix[PAD])
    for row, poem in zip(data, poems):
        seq = [word2ix[START], *(word2ix[c] for c in poem), word2ix[EOP]]
        row[-len(seq):] = seq
    np.savez_compressed(path, data=data, word2ix=np.array(word2ix, dtype=object),
                        ix2word=np.array(ix2word, dtype=object))
    return path, data, words


def _logits(net, x):
    with torch.no_grad():
        return net(torch.from_numpy(x))[0].numpy()


def _ours(model, x):
    return np.asarray(model(jnp.asarray(x))[0]).reshape(-1, model.vocab_size)


def _tokens(v, seed=0):
    return np.random.default_rng(seed).integers(0, v, (9, 3))


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory):
    """A tutorial Net trained a few Adam steps on a tiny corpus, saved as the tutorial saves it."""
    root = tmp_path_factory.mktemp("tutorial")
    npz, data, words = tutorial_npz(root / "tang.npz")
    torch.manual_seed(0)
    net = Net(len(words), E, H)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    rows = torch.from_numpy(np.tile(data[:, -30:], (4, 1))).long().T.contiguous()  # (T, B) like the tutorial
    for _ in range(20):
        opt.zero_grad()
        out, _ = net(rows[:-1])
        loss = nn.functional.cross_entropy(out, rows[1:].reshape(-1))
        loss.backward()
        opt.step()
    net.eval()
    pth = root / "tang_20.pth"
    torch.save(net.state_dict(), pth)
    ckpt = root / "imported"
    main(["--from-torch", str(pth), "--vocab", str(npz), "--trust-pickle", "--out", str(ckpt)])
    return root, net, pth, npz, words, ckpt


def test_import_matches_torch_logits_and_keeps_the_tutorial_ids(tutorial):
    root, net, pth, npz, words, ckpt = tutorial
    model, vocab, config = load_model(ckpt)
    assert vocab.itos == words  # the tutorial's ids, specials last: they line up with the weights
    assert (config["cell"], config["vocab_size"], config["embedding_dim"], config["hidden_dim"],
            config["num_layers"]) == ("lstm", len(words), E, H, 2)
    assert config["data_fingerprint"] == fingerprint(npz)
    assert config["flags"]["imported_from"] == str(pth)
    x = _tokens(len(words))
    np.testing.assert_allclose(_ours(model, x), _logits(net, x), atol=1e-5)
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".")) == []  # no work folder left


def test_imported_checkpoint_serves_generate_and_evaluate(tutorial):
    root, net, pth, npz, words, ckpt = tutorial
    run = subprocess.run([sys.executable, "generate.py", "--checkpoint", str(ckpt), "--form", "五言绝句",
                          "--prefix", "春", "--seed", "1"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    poem = "".join(run.stdout.split())
    assert poem.startswith("春") and forms.check_poem(poem, forms.FORMS["5x4"]), run.stdout
    # evaluate's perplexity reads the converted corpus, whose ids are the tutorial's
    converted = import_tutorial(npz, root / "converted.npz", trust_pickle=True, quiet=True)
    model, vocab, config = load_model(ckpt)
    ppl, _ = validation_perplexity(model, vocab, config, converted)
    assert ppl is not None and 1 < ppl < len(words)


def test_export_back_loads_strictly_into_a_fresh_net(tutorial, capsys):
    root, net, pth, npz, words, ckpt = tutorial
    back = root / "back" / "tang.pth"
    main(["--checkpoint", str(ckpt), "--to-torch", str(back)])
    assert "wrote" in capsys.readouterr().out
    sd = torch.load(back, map_location="cpu", weights_only=True)
    assert all(v.dtype == torch.float32 for v in sd.values())
    fresh = Net(len(words), E, H)
    fresh.load_state_dict(sd, strict=True)
    x = _tokens(len(words), seed=2)
    np.testing.assert_allclose(_logits(fresh, x), _logits(net, x), atol=1e-5)
    doc = json.loads((root / "back" / "tang.vocab.json").read_text(encoding="utf-8"))
    assert doc["ix2word"] == words and doc["word2ix"] == {w: i for i, w in enumerate(words)}
    assert sorted(p.name for p in back.parent.iterdir()) == ["tang.pth", "tang.vocab.json"]  # no temp files
    main(["--checkpoint", str(ckpt), "--to-torch", str(back)])  # replaces the files in place
    assert sorted(p.name for p in back.parent.iterdir()) == ["tang.pth", "tang.vocab.json"]


def test_gru_state_dict_round_trips_with_its_own_prefix(tutorial, tmp_path):
    _, _, _, npz, words, _ = tutorial
    torch.manual_seed(3)
    emb, gru, lin = nn.Embedding(len(words), E), nn.GRU(E, H, num_layers=3), nn.Linear(H, len(words))
    sd = {**{f"embeddings.{k}": v for k, v in emb.state_dict().items()},
          **{f"gru.{k}": v for k, v in gru.state_dict().items()},
          **{f"linear1.{k}": v for k, v in lin.state_dict().items()}}
    torch.save({f"module.{k}": v for k, v in sd.items()}, tmp_path / "gru.pth")  # as nn.DataParallel saves
    main(["--from-torch", str(tmp_path / "gru.pth"), "--vocab", str(npz), "--trust-pickle",
          "--out", str(tmp_path / "ckpt")])
    config = load_config(tmp_path / "ckpt")
    assert (config["cell"], config["num_layers"]) == ("gru", 3)
    main(["--checkpoint", str(tmp_path / "ckpt"), "--to-torch", str(tmp_path / "back.pth")])
    back = torch.load(tmp_path / "back.pth", weights_only=True)
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    x = torch.from_numpy(_tokens(len(words), seed=4))
    with torch.no_grad():
        ref = lin(gru(emb(x))[0]).numpy().reshape(-1, len(words))
    model, _, _ = load_model(tmp_path / "ckpt")
    np.testing.assert_allclose(_ours(model, x.numpy()), ref, atol=1e-5)


# ---- errors: one line, exit 2, nothing written ------------------------------------------------------


def _fails(capsys, argv, tmp_path=None) -> str:
    before = sorted(p.name for p in tmp_path.iterdir()) if tmp_path else None
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    if tmp_path:
        assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, no temp folder left
    return err


def _net_sd(v, **lstm_kw):
    torch.manual_seed(0)
    emb, lstm, lin = nn.Embedding(v, E), nn.LSTM(E, H, num_layers=2, **lstm_kw), nn.Linear(H, v)
    return {**{f"embeddings.{k}": t for k, t in emb.state_dict().items()},
            **{f"lstm.{k}": t for k, t in lstm.state_dict().items()},
            **{f"linear1.{k}": t for k, t in lin.state_dict().items()}}


def test_vocabulary_size_mismatch_names_the_key(tutorial, tmp_path, capsys):
    _, _, _, npz, words, _ = tutorial
    torch.save(Net(len(words) + 3, E, H).state_dict(), tmp_path / "big.pth")
    err = _fails(capsys, ["--from-torch", tmp_path / "big.pth", "--vocab", npz, "--trust-pickle",
                          "--out", tmp_path / "out"], tmp_path)
    assert f"embeddings.weight has {len(words) + 3} rows but the vocabulary has {len(words)} tokens" in err


@pytest.mark.parametrize("change, message", [
    (lambda sd: {"encoder.weight": sd["embeddings.weight"]}, "missing key embeddings.weight"),
    (lambda sd: {k: v for k, v in sd.items() if k != "linear1.bias"}, "missing key linear1.bias"),
    (lambda sd: {**sd, "linear2.weight": sd["linear1.weight"]}, "unexpected key linear2.weight"),
    (lambda sd: {k: v for k, v in sd.items() if not k.startswith("lstm.")}, "missing key lstm.weight_ih_l0"),
    (lambda sd: {k: (v[:-2] if k == "linear1.weight" else v) for k, v in sd.items()},
     "key linear1.weight has shape"),
    (lambda sd: {k.replace("lstm.", "gru."): v for k, v in sd.items()}, "gru.weight_hh_l0 has shape"),
    (lambda sd: {**sd, "lstm.weight_ih_l0": sd["lstm.weight_ih_l0"][:, :3]}, "key lstm.weight_ih_l0 has shape"),
], ids=["no-embeddings", "missing-bias", "extra-layer", "no-rnn", "linear-rows", "wrong-gates", "emb-dim"])
def test_not_a_net_names_the_key(tutorial, tmp_path, capsys, change, message):
    _, _, _, npz, words, _ = tutorial
    torch.save(change(_net_sd(len(words))), tmp_path / "bad.pth")
    err = _fails(capsys, ["--from-torch", tmp_path / "bad.pth", "--vocab", npz, "--trust-pickle",
                          "--out", tmp_path / "out"], tmp_path)
    assert message in err


@pytest.mark.parametrize("kw, message", [({"bidirectional": True}, "bidirectional"),
                                         ({"proj_size": 4}, "proj_size")])
def test_bidirectional_or_projected_lstm_is_refused(tutorial, tmp_path, capsys, kw, message):
    _, _, _, npz, words, _ = tutorial
    torch.save(_net_sd(len(words), **kw), tmp_path / "bad.pth")
    err = _fails(capsys, ["--from-torch", tmp_path / "bad.pth", "--vocab", npz, "--trust-pickle",
                          "--out", tmp_path / "out"], tmp_path)
    assert message in err and "not the tutorial's Net" in err


def test_files_that_are_not_state_dicts(tutorial, tmp_path, capsys):
    _, net, pth, npz, _, _ = tutorial
    args = ["--vocab", npz, "--trust-pickle", "--out", tmp_path / "out"]
    torch.save([1, 2, 3], tmp_path / "list.pth")
    assert "not a state dict" in _fails(capsys, ["--from-torch", tmp_path / "list.pth", *args], tmp_path)
    torch.save({"model": net.state_dict(), "epoch": 3}, tmp_path / "train.pth")
    assert "entry 'model'" in _fails(capsys, ["--from-torch", tmp_path / "train.pth", *args], tmp_path)
    torch.save(net, tmp_path / "whole.pth")  # a pickled module: weights_only refuses to run it
    assert "save net.state_dict() instead" in _fails(capsys, ["--from-torch", tmp_path / "whole.pth", *args],
                                                     tmp_path)
    (tmp_path / "text.pth").write_text("hello")
    assert "not a file written by torch.save" in _fails(capsys, ["--from-torch", tmp_path / "text.pth", *args],
                                                        tmp_path)
    assert "no such file" in _fails(capsys, ["--from-torch", tmp_path / "none.pth", *args], tmp_path)
    # a pickled vocabulary needs --trust-pickle; an existing --out is refused
    assert "--trust-pickle" in _fails(capsys, ["--from-torch", pth, "--vocab", npz, "--out", tmp_path / "out"],
                                      tmp_path)
    assert "already exists" in _fails(capsys, ["--from-torch", pth, *args[:3], "--out", tmp_path], tmp_path)


def test_torch_missing_says_how_to_install_it(tutorial, tmp_path, capsys, monkeypatch):
    _, _, pth, npz, _, ckpt = tutorial
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    cpu = "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
    assert cpu in _fails(capsys, ["--from-torch", pth, "--vocab", npz, "--trust-pickle",
                                  "--out", tmp_path / "out"], tmp_path)
    assert cpu in _fails(capsys, ["--checkpoint", ckpt, "--to-torch", tmp_path / "t.pth"], tmp_path)


@pytest.mark.parametrize("argv", [
    [],
    ["--checkpoint", "c"],
    ["--out", "o"],
    ["--from-torch", "m.pth", "--out", "o"],
    ["--from-torch", "m.pth", "--vocab", "v.npz"],
    ["--from-torch", "m.pth", "--vocab", "v.npz", "--out", "o", "--checkpoint", "c"],
    ["--checkpoint", "c", "--to-torch", "m.pth", "--out", "o"],
    ["--to-torch", "m.pth"],
    ["--checkpoint", "c", "--to-torch", "m.pth", "--tolerance", "0"],
    ["--checkpoint", "c", "--out", "o", "--vocab", "v.npz"],
    ["--checkpoint", "c", "--out", "o", "--trust-pickle"],
])
def test_wrong_flag_combinations_are_one_line_errors(tmp_path, capsys, monkeypatch, argv):
    monkeypatch.chdir(tmp_path)
    _fails(capsys, argv, tmp_path)
