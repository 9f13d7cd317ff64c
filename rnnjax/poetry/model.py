"""PoetryModel: the tutorial's `Net` (Embedding -> 2-layer LSTM -> Linear), in Flax NNX.

Attribute names follow the tutorial (`embeddings`, `linear1`) so that its state dict maps 1:1;
the recurrent stack is `rnn` whatever the cell, and its torch keys are prefixed with the cell name
(`lstm.weight_ih_l0`, `gru.…`, `rnn.…`) - for an LSTM that is exactly the tutorial's `lstm.*`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import rnnjax.nn as rnn_layers
from rnnjax import recurrent, torch_compat
from rnnjax.losses import linear_cross_entropy
from rnnjax.poetry.config import ModelConfig


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
        embedding_dim: int = ModelConfig.embedding_dim,
        hidden_dim: int = ModelConfig.hidden_dim,
        num_layers: int = ModelConfig.num_layers,
        cell: str = ModelConfig.cell,
        dropout: float = ModelConfig.dropout,
        *,
        rngs: nnx.Rngs,
    ):
        ModelConfig(vocab_size, embedding_dim, hidden_dim, num_layers, cell, dropout)  # checks the cell
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.cell = cell
        self.dropout = float(dropout)
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

    @classmethod
    def from_config(cls, config: ModelConfig, *, rngs: nnx.Rngs) -> PoetryModel:
        return cls(**dataclasses.asdict(config), rngs=rngs)

    @property
    def config(self) -> ModelConfig:
        """What rebuilds this model (``PoetryModel.from_config(model.config, rngs=...)``)."""
        return ModelConfig(self.vocab_size, self.embedding_dim, self.hidden_dim, self.num_layers, self.cell,
                           self.dropout)

    def __call__(self, tokens, hx=None, *, deterministic: bool | None = None, rngs=None):
        """tokens (T,B) or unbatched (T,) int -> (logits (T,B,V) or (T,V), hx as the cell returns it)."""
        output, hx = self.features(tokens, hx, deterministic=deterministic, rngs=rngs)
        return self.linear1(output), hx

    def features(self, tokens, hx=None, *, deterministic: bool | None = None, rngs=None, dtype=None):
        """The recurrent stack's output (T,B,H) and hx: everything before the output layer.

        `dtype` (e.g. `jnp.bfloat16`): the embeddings are cast to it, so the stack computes in it
        (mixed precision, see `rnnjax.recurrent.apply`); the parameters stay as they are."""
        x = self.embeddings(tokens)
        return self.rnn(x if dtype is None else x.astype(dtype), hx, deterministic=deterministic, rngs=rngs)

    def nll_sum(self, tokens, targets, mask, *, deterministic: bool | None = None, rngs=None, dtype=None):
        """Summed negative log-likelihood of `targets` where `mask` is 1, in at least float32.

        Equal to cross-entropy on `self(tokens)[0]`, but the output layer and the loss run chunk by
        chunk (`rnnjax.losses`), so the (T,B,V) logits never exist: that is most of a step's memory
        traffic on a CPU. `dtype` as in `features`: with `jnp.bfloat16` the output layer's matmuls
        take bfloat16 operands too, while the logits, log-sum-exp and the sum stay float32.
        """
        output, _ = self.features(tokens, deterministic=deterministic, rngs=rngs, dtype=dtype)
        acc = jnp.promote_types(output.dtype, jnp.float32)
        if output.dtype != jnp.bfloat16:
            output = output.astype(acc)  # float16 exports are scored in float32 (no fast float16 matmul on CPUs)
        return linear_cross_entropy(
            output.reshape(-1, output.shape[-1]),
            self.linear1.kernel[...],  # cast to the output's dtype inside, gradients in the kernel's own
            self.linear1.bias[...],
            targets.reshape(-1),
            mask.reshape(-1).astype(acc),
        )

    # ---- torch interop -------------------------------------------------------------------------

    def _torch_variables(self) -> dict[str, Any]:
        """torch key -> this model's variable, in the order of the tutorial's state dict."""
        rnn = {f"{self.cell}.{k}": getattr(self.rnn, k) for k in recurrent.param_shapes(self.rnn.config)}
        return {"embeddings.weight": self.embeddings.embedding, **rnn,
                "linear1.weight": _Transposed(self.linear1.kernel), "linear1.bias": self.linear1.bias}

    def torch_state_dict(self) -> dict[str, np.ndarray]:
        """The state dict a torch `Net` with this shape would have (keys, layouts and shapes as torch's)."""
        return torch_compat.state_dict(self._torch_variables())

    def load_torch_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a torch state dict (e.g. the tutorial's `Net`) strictly: every key, every shape, or nothing.

        The recurrent keys may be prefixed with the cell name (`lstm.`) or with `rnn.`. Errors are
        `rnnjax.torch_compat.load_state_dict`'s, worded as torch's.
        """
        if self.cell != "rnn":  # the generic `rnn.` prefix is an alias of the cell's own
            renamed = {k: f"{self.cell}.{k[4:]}" for k in state_dict if k.startswith("rnn.")}
            both = [k for k, new in renamed.items() if new in state_dict]
            if both:
                raise ValueError(f"Error(s) in loading state_dict for {type(self).__name__}: both {both[0]!r} "
                                 f"and {renamed[both[0]]!r} given")
            state_dict = {renamed.get(k, k): v for k, v in state_dict.items()}
        torch_compat.load_state_dict(self._torch_variables(), state_dict, owner=type(self).__name__)


class _Transposed:
    """`linear1.kernel` seen as torch's `linear1.weight`: torch stores (out, in), nnx.Linear (in, out)."""

    def __init__(self, variable: nnx.Variable):
        self.variable = variable

    def get_value(self):
        return self.variable.get_value().T

    def set_value(self, value) -> None:
        self.variable.set_value(value.T)
