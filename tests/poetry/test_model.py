"""PoetryModel against the tutorial's torch `Net`, and the checkpoint API (export_model / load_model)."""
import json
import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn as nn
from flax import nnx

from rnnjax.poetry.checkpoint import export_model, load_config, load_model, save_config
from rnnjax.poetry.config import ModelConfig
from rnnjax.poetry.errors import UserError
from rnnjax.poetry.model import PoetryModel
from tutorial_net import Net

REPO = Path(__file__).resolve().parents[2]

V, E, H = 30, 8, 16




def _tokens(t=7, b=3, seed=0):
    return np.random.default_rng(seed).integers(0, V, (t, b))


def test_logits_match_tutorial_net_and_hidden_state_carries():
    torch.manual_seed(0)
    net = Net(V, E, H)
    model = PoetryModel(V, E, H, rngs=nnx.Rngs(0))
    model.load_torch_state_dict(net.state_dict())
    x = _tokens()
    with torch.no_grad():
        ref, (h, c) = net(torch.from_numpy(x))
        ref2, _ = net(torch.from_numpy(x[:2]), (h, c))  # generate() feeds the hidden state back
    out, (mh, mc) = model(jnp.asarray(x))
    out2, _ = model(jnp.asarray(x[:2]), (mh, mc))
    assert out.shape == (7, 3, V)
    np.testing.assert_allclose(np.asarray(out).reshape(-1, V), ref.numpy(), atol=1e-5)
    np.testing.assert_allclose(np.asarray(mc), c.numpy(), atol=1e-5)
    np.testing.assert_allclose(np.asarray(out2).reshape(-1, V), ref2.numpy(), atol=1e-5)


def test_export_to_torch_reproduces_logits():
    model = PoetryModel(V, E, H, rngs=nnx.Rngs(3))
    net = Net(V, E, H)
    net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in model.torch_state_dict().items()})
    x = _tokens(seed=1)
    with torch.no_grad():
        ref, _ = net(torch.from_numpy(x))
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(x))[0]).reshape(-1, V), ref.numpy(), atol=1e-5)


@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_other_cells_match_torch(cell):
    torch.manual_seed(1)
    layer = {"gru": nn.GRU, "rnn": nn.RNN}[cell](E, H, num_layers=2)
    emb, lin = nn.Embedding(V, E), nn.Linear(H, V)
    sd = {**{f"embeddings.{k}": v for k, v in emb.state_dict().items()},
          **{f"{cell}.{k}": v for k, v in layer.state_dict().items()},
          **{f"linear1.{k}": v for k, v in lin.state_dict().items()}}
    model = PoetryModel(V, E, H, cell=cell, rngs=nnx.Rngs(0))
    model.load_torch_state_dict(sd)
    x = _tokens(seed=2)
    with torch.no_grad():
        ref = lin(layer(emb(torch.from_numpy(x)))[0])
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(x))[0]), ref.numpy(), atol=1e-5)


def test_unbatched_tokens():
    model = PoetryModel(V, E, H, rngs=nnx.Rngs(0))
    x = _tokens(5, 1)
    out, _ = model(jnp.asarray(x[:, 0]))
    assert out.shape == (5, V)
    np.testing.assert_allclose(np.asarray(out), np.asarray(model(jnp.asarray(x))[0][:, 0]), atol=1e-6)


def test_initialisation_is_torchs():
    model = PoetryModel(2000, 64, 256, rngs=nnx.Rngs(0))
    sd = model.torch_state_dict()
    assert abs(sd["embeddings.weight"].std() - 1.0) < 0.02  # N(0, 1)
    bound = 1 / np.sqrt(256)
    for k in ("linear1.weight", "linear1.bias", "lstm.weight_hh_l1"):
        assert np.abs(sd[k]).max() <= bound and np.abs(sd[k]).max() > 0.95 * bound, k


def test_strict_load_names_the_problem_and_changes_nothing():
    model = PoetryModel(V, E, H, rngs=nnx.Rngs(0))
    before = model.torch_state_dict()
    good = Net(V, E, H).state_dict()

    missing = dict(good)
    del missing["lstm.bias_hh_l1"]
    # The wording is rnnjax.torch_compat's (torch's own), the same as for the bare layers.
    with pytest.raises(ValueError, match=r"^Error\(s\) in loading state_dict for PoetryModel: "
                                         r"missing key\(s\) \['lstm.bias_hh_l1'\]$"):
        model.load_torch_state_dict(missing)
    with pytest.raises(ValueError, match=r"unexpected key\(s\) \['extra'\]"):
        model.load_torch_state_dict({**good, "extra": torch.zeros(1)})
    bad_shape = {**good, "linear1.weight": torch.zeros(V, H + 1)}
    with pytest.raises(ValueError, match=r"size mismatch for linear1.weight: copying a param with shape \(30, 17\) "
                                         r"from checkpoint, the shape in current model is \(30, 16\)"):
        model.load_torch_state_dict(bad_shape)
    bad_inner = {**good, "lstm.weight_hh_l1": torch.zeros(4 * H, H + 2)}  # caught before anything is set
    with pytest.raises(ValueError, match="size mismatch for lstm.weight_hh_l1"):
        model.load_torch_state_dict(bad_inner)
    with pytest.raises(ValueError, match="both 'rnn.weight_ih_l0' and 'lstm.weight_ih_l0'"):
        model.load_torch_state_dict({**good, "rnn.weight_ih_l0": good["lstm.weight_ih_l0"]})
    after = model.torch_state_dict()
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])


def test_rnn_prefix_is_an_alias_of_the_cells():
    good = Net(V, E, H).state_dict()
    model = PoetryModel(V, E, H, rngs=nnx.Rngs(0))
    model.load_torch_state_dict({k.replace("lstm.", "rnn.", 1): v for k, v in good.items()})
    np.testing.assert_array_equal(model.torch_state_dict()["lstm.weight_hh_l1"], good["lstm.weight_hh_l1"].numpy())


def test_model_config_builds_and_describes_the_model():
    config = ModelConfig(V, E, H, num_layers=3, cell="gru", dropout=0.25)
    model = PoetryModel.from_config(config, rngs=nnx.Rngs(0))
    assert model.config == config and model.cell == "gru" and model.rnn.config.num_layers == 3
    assert PoetryModel(V, rngs=nnx.Rngs(0)).config == ModelConfig(V)  # one set of defaults
    assert ModelConfig.from_dict({**config.to_dict(), "vocab": []}) == config
    with pytest.raises(ValueError, match="missing keys \\['cell'\\]"):
        ModelConfig.from_dict({k: v for k, v in config.to_dict().items() if k != "cell"})
    with pytest.raises(ValueError, match="cell must be one of lstm, gru, rnn, got 'lstn'"):
        PoetryModel(V, cell="lstn", rngs=nnx.Rngs(0))


# config.json as written before ModelConfig existed (a tiny vocabulary; the layout of pretrained/tang-lstm's).
OLD_CONFIG = """{
 "cell": "lstm", "vocab_size": 5, "embedding_dim": 4, "hidden_dim": 6, "num_layers": 2, "dropout": 0.0,
 "vocab": ["</s>", "<START>", "<EOP>", "月", "光"],
 "data_fingerprint": "e78f297645b9c795fbe0f96ada9ec771db277d0b1a3a9c3375ab8c0ab50ad959", "data_path": "data/tang.npz",
 "flags": {"cell": "lstm", "epochs": 20, "batch_size": 128, "lr": 0.003, "clip": 1.0, "embedding_dim": 4,
           "hidden_dim": 6, "num_layers": 2, "dropout": 0.0, "seed": 0, "data": "data/tang.npz",
           "checkpoint_dir": "checkpoints/lstm", "max_steps": null, "time_budget": 62.0, "eval_every": 215,
           "save_every": 500, "sample_every": 430, "sample_prefix": "床前明月光", "log_every": 10,
           "val_fraction": 0.02, "distributed": false},
 "param_dtype": "float16", "exported": true
}
"""


def test_config_json_written_before_the_change_still_loads(tmp_path):
    model = PoetryModel(5, 4, 6, rngs=nnx.Rngs(0))
    export_model(tmp_path / "m", model, {"vocab": [], "data_fingerprint": "", "flags": {}}, dtype="float16")
    (tmp_path / "m" / "config.json").write_text(OLD_CONFIG, encoding="utf-8")
    loaded, vocab, config = load_model(tmp_path / "m")
    assert loaded.config == ModelConfig(5, 4, 6, 2, "lstm", 0.0) and vocab.itos[3:] == ["月", "光"]
    assert config["flags"]["lr"] == 0.003


def test_shipped_model_loads():
    model, vocab, config = load_model(REPO / "pretrained" / "tang-lstm")
    assert model.config == ModelConfig(8711, 128, 256, 2, "lstm", 0.2) and len(vocab) == 8711


def _config(vocab_size=V):
    vocab = ["</s>", "<START>", "<EOP>"] + [chr(0x4E00 + i) for i in range(vocab_size - 3)]
    return {"vocab": vocab, "data_fingerprint": "abc", "flags": {"seed": 0}}


@pytest.mark.parametrize("dtype,atol", [(None, 0.0), ("float16", 2e-3), ("bfloat16", 2e-2)])
def test_export_and_load_model_round_trip(tmp_path, dtype, atol):
    model = PoetryModel(V, E, H, cell="gru", rngs=nnx.Rngs(5))
    export_model(tmp_path / "m", model, _config(), dtype=dtype)
    loaded, vocab, config = load_model(tmp_path / "m")
    assert config["cell"] == "gru" and config["hidden_dim"] == H and len(vocab) == V
    assert vocab.itos == _config()["vocab"]
    a, b = model.torch_state_dict(), loaded.torch_state_dict()
    for k in a:
        assert b[k].dtype == np.float32
        np.testing.assert_allclose(b[k], a[k], atol=atol, rtol=0)


def test_load_model_errors(tmp_path):
    with pytest.raises(UserError, match="config.json"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="corrupt"):
        load_config(tmp_path)
    config = {**_config(), "cell": "lstm", "vocab_size": V, "embedding_dim": E, "hidden_dim": H,
              "num_layers": 2, "dropout": 0.0}
    save_config(tmp_path, config)
    assert json.loads((tmp_path / "config.json").read_text())["hidden_dim"] == H
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "config.json").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600
    with pytest.raises(UserError, match="no saved checkpoint"):
        load_model(tmp_path)
    # A config that does not match the stored parameters is a UserError, not a traceback.
    export_model(tmp_path / "m", PoetryModel(V, E, H, rngs=nnx.Rngs(0)), _config())
    save_config(tmp_path / "m", {**load_config(tmp_path / "m"), "hidden_dim": H * 2})
    with pytest.raises(UserError, match=r"does not match its config.json: linear1.kernel: stored \(16, 30\)"):
        load_model(tmp_path / "m")
