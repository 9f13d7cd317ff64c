"""PoetryModel against the tutorial's torch `Net`, and the checkpoint API (export_model / load_model)."""
import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn as nn
from flax import nnx

from rnnjax.poetry.model import PoetryModel
from rnnjax.poetry.checkpoint import export_model, load_config, load_model, save_config
from rnnjax.poetry.errors import UserError

V, E, H = 30, 8, 16


class Net(nn.Module):
    """The tutorial's model, verbatim apart from comments."""

    def __init__(self, vocab_size, embedding_dim, hidden_dim):
        super(Net, self).__init__()
        self.hidden_dim = hidden_dim
        self.embeddings = nn.Embedding(vocab_size, embedding_dim)
        self.lstm = nn.LSTM(embedding_dim, self.hidden_dim, num_layers=2, batch_first=False)
        self.linear1 = nn.Linear(self.hidden_dim, vocab_size)

    def forward(self, input, hidden=None):
        seq_len, batch_size = input.size()
        if hidden is None:
            h_0 = input.data.new(2, batch_size, self.hidden_dim).fill_(0).float()
            c_0 = input.data.new(2, batch_size, self.hidden_dim).fill_(0).float()
        else:
            h_0, c_0 = hidden
        embeds = self.embeddings(input)
        output, hidden = self.lstm(embeds, (h_0, c_0))
        output = self.linear1(output.view(seq_len * batch_size, -1))
        return output, hidden


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
    with pytest.raises(ValueError, match="lstm.bias_hh_l1"):
        model.load_torch_state_dict(missing)
    with pytest.raises(ValueError, match="extra"):
        model.load_torch_state_dict({**good, "extra": torch.zeros(1)})
    bad_shape = {**good, "linear1.weight": torch.zeros(V, H + 1)}
    with pytest.raises(ValueError, match=r"linear1.weight.*\(30, 17\).*\(30, 16\)"):
        model.load_torch_state_dict(bad_shape)
    bad_inner = {**good, "lstm.weight_hh_l1": torch.zeros(4 * H, H + 2)}  # caught before anything is set
    with pytest.raises(ValueError, match="weight_hh_l1"):
        model.load_torch_state_dict(bad_inner)
    after = model.torch_state_dict()
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])


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
    with pytest.raises(UserError, match="no saved checkpoint"):
        load_model(tmp_path)
    # A config that does not match the stored parameters is a UserError, not a traceback.
    export_model(tmp_path / "m", PoetryModel(V, E, H, rngs=nnx.Rngs(0)), _config())
    save_config(tmp_path / "m", {**load_config(tmp_path / "m"), "hidden_dim": H * 2})
    with pytest.raises(UserError, match=r"does not match its config.json: linear1.kernel: stored \(16, 30\)"):
        load_model(tmp_path / "m")
