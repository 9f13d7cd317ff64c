"""PoetryModel: the tutorial's `Net` (Embedding -> 2-layer LSTM -> Linear), in Flax NNX.

Attribute names follow the tutorial (`embeddings`, `linear1`) so that its state dict maps 1:1;
the recurrent stack is `rnn` whatever the cell, and its torch keys are prefixed with the cell name
(`lstm.weight_ih_l0`, `gru.…`, `rnn.…`) - for an LSTM that is exactly the tutorial's `lstm.*`.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import rnnjax.nn as rnn_layers
from rnnjax.losses import linear_cross_entropy
from rnnjax.torch_compat import to_numpy

CELLS = ("lstm", "gru", "rnn")


def _torch_linear_bias_init(fan_in: int):
    """torch.nn.Linear's bias init, uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)); flax has no such initializer."""
    bound = 1.0 / np.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class PoetryModel(nnx.Module):
    """Character language model: tokens (T,B) int -> logits (T,B,V), time-major like the tutorial.

    `dropout` is torch's between-layer dropout of the recurrent stack (active in `model.train()` mode).
    """

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int = 128,
        hidden_dim: int = 256,
        num_layers: int = 2,
        cell: str = "lstm",
        dropout: float = 0.0,
        *,
        rngs: nnx.Rngs,
    ):
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {CELLS}, got {cell!r}")
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.cell = cell
        # torch.nn.Embedding initialises N(0, 1).
        self.embeddings = nnx.Embed(
            vocab_size, embedding_dim, embedding_init=nnx.initializers.normal(stddev=1.0), rngs=rngs
        )
        layer_cls = {"lstm": rnn_layers.LSTM, "gru": rnn_layers.GRU, "rnn": rnn_layers.RNN}[cell]
        self.rnn = layer_cls(embedding_dim, hidden_dim, num_layers, dropout=dropout, rngs=rngs)
        # torch.nn.Linear: kernel and bias uniform(+-1/sqrt(in)); variance_scaling(1/3, fan_in, uniform)
        # has exactly that bound, sqrt(3 * (1/3) / fan_in).
        self.linear1 = nnx.Linear(
            hidden_dim,
            vocab_size,
            kernel_init=nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
            bias_init=_torch_linear_bias_init(hidden_dim),
            rngs=rngs,
        )

    def __call__(self, tokens, hx=None, *, deterministic: bool | None = None, rngs=None):
        """tokens (T,B) or unbatched (T,) int -> (logits (T,B,V) or (T,V), hx as the cell returns it)."""
        output, hx = self.features(tokens, hx, deterministic=deterministic, rngs=rngs)
        return self.linear1(output), hx

    def features(self, tokens, hx=None, *, deterministic: bool | None = None, rngs=None):
        """The recurrent stack's output (T,B,H) and hx: everything before the output layer."""
        return self.rnn(self.embeddings(tokens), hx, deterministic=deterministic, rngs=rngs)

    def nll_sum(self, tokens, targets, mask, *, deterministic: bool | None = None, rngs=None):
        """Summed negative log-likelihood of `targets` where `mask` is 1, in at least float32.

        Equal to cross-entropy on `self(tokens)[0]`, but the output layer and the loss run chunk by
        chunk (`rnnjax.losses`), so the (T,B,V) logits never exist: that is most of a step's memory
        traffic on a CPU.
        """
        output, _ = self.features(tokens, deterministic=deterministic, rngs=rngs)
        dtype = jnp.promote_types(output.dtype, jnp.float32)  # float16 exports are scored in float32
        return linear_cross_entropy(
            output.reshape(-1, output.shape[-1]).astype(dtype),
            self.linear1.kernel[...].astype(dtype),
            self.linear1.bias[...].astype(dtype),
            targets.reshape(-1),
            mask.reshape(-1).astype(dtype),
        )

    # ---- torch interop -------------------------------------------------------------------------

    def torch_state_dict(self) -> dict[str, np.ndarray]:
        """The state dict a torch `Net` with this shape would have (keys, layouts and shapes as torch's)."""
        sd = {"embeddings.weight": np.asarray(self.embeddings.embedding[...])}
        for k, v in self.rnn.torch_state_dict().items():
            sd[f"{self.cell}.{k}"] = np.asarray(v)
        sd["linear1.weight"] = np.asarray(self.linear1.kernel[...]).T  # torch stores (out, in)
        sd["linear1.bias"] = np.asarray(self.linear1.bias[...])
        return sd

    def load_torch_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a torch state dict (e.g. the tutorial's `Net`) strictly: every key, every shape, or nothing.

        The recurrent keys may be prefixed with the cell name (`lstm.`) or with `rnn.`.
        """
        expected = self.torch_state_dict()
        given = {k: to_numpy(v) for k, v in state_dict.items()}
        # Accept the generic `rnn.` prefix as an alias of the cell's own prefix.
        if self.cell != "rnn":
            aliased = {}
            for k, v in given.items():
                if k.startswith("rnn."):
                    new = f"{self.cell}.{k[4:]}"
                    if new in given:
                        raise ValueError(f"state dict has both {k!r} and {new!r}")
                    aliased[new] = v
                else:
                    aliased[k] = v
            given = aliased
        missing = sorted(set(expected) - set(given))
        unexpected = sorted(set(given) - set(expected))
        if missing or unexpected:
            raise ValueError(f"state dict mismatch: missing keys {missing}, unexpected keys {unexpected}")
        for k, want in expected.items():
            if given[k].shape != want.shape:
                raise ValueError(
                    f"state dict key {k!r} has shape {tuple(given[k].shape)}, expected {tuple(want.shape)}"
                )
        # Validated in full above, so the assignments below cannot leave the model half-loaded.
        self.embeddings.embedding[...] = jnp.asarray(given["embeddings.weight"], jnp.float32)
        prefix = f"{self.cell}."
        self.rnn.load_torch_state_dict(
            {k[len(prefix):]: v for k, v in given.items() if k.startswith(prefix)}
        )
        self.linear1.kernel[...] = jnp.asarray(given["linear1.weight"].T, jnp.float32)
        self.linear1.bias[...] = jnp.asarray(given["linear1.bias"], jnp.float32)
