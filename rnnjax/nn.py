"""Flax NNX modules ``RNN``, ``LSTM`` and ``GRU`` with torch's constructor, names and initialisation.

Each module holds ``nnx.Param``s named exactly like torch's state dict keys (``weight_ih_l0``, ...)
and calls the pure core in :mod:`rnnjax.recurrent`; ``torch_state_dict()`` / ``load_torch_state_dict``
are therefore renames of nothing.

Like torch, a new module is in training mode (``deterministic=False``): dropout between layers is
applied when ``dropout > 0`` and ``num_layers > 1``. ``module.eval()`` / ``module.train()`` flip it,
as for ``nnx.Dropout``.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from rnnjax import recurrent, torch_compat


class _RNNBase(nnx.Module):
    def __init__(self, mode, input_size, hidden_size, num_layers=1, *, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, unroll=1, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        cfg = recurrent.Config(mode, input_size, hidden_size, num_layers, bool(bias), bool(batch_first),
                               float(dropout) if isinstance(dropout, (int, float)) and not isinstance(dropout, bool)
                               else dropout, bool(bidirectional), proj_size)
        recurrent.check_config(cfg)
        self.config = cfg
        self.unroll = unroll
        self.deterministic = False
        # torch: every weight and bias ~ U(-1/sqrt(hidden), 1/sqrt(hidden)).
        bound = 1.0 / math.sqrt(hidden_size)
        for name, shape in recurrent.param_shapes(cfg).items():
            value = jax.random.uniform(rngs.params(), shape, param_dtype, -bound, bound)
            setattr(self, name, nnx.Param(value))
        self.rngs = rngs["dropout"].fork() if cfg.dropout > 0 and cfg.num_layers > 1 else nnx.data(None)

    # torch-style attribute access (lstm.hidden_size, ...)
    def __getattr__(self, name):
        cfg = self.__dict__.get("config")
        if cfg is not None and name in recurrent.Config._fields:
            return getattr(cfg, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _params(self):
        return {name: getattr(self, name) for name in recurrent.param_shapes(self.config)}

    def params_dict(self):
        """The parameters as a plain dict of arrays, for :func:`rnnjax.recurrent.apply`."""
        return {name: var.get_value() for name, var in self._params().items()}

    def __call__(self, x, hx=None, *, lengths=None, deterministic=None, rngs=None):
        deterministic = self.deterministic if deterministic is None else deterministic
        key = None
        if not deterministic and self.config.dropout > 0 and self.config.num_layers > 1:
            if rngs is None:
                if self.rngs is None:
                    raise ValueError("dropout needs a random key: pass rngs= or build the module with rngs")
                key = self.rngs()
            elif isinstance(rngs, nnx.Rngs):
                key = rngs.dropout()
            elif isinstance(rngs, nnx.RngStream):
                key = rngs()
            else:
                key = rngs
        return recurrent.apply(self.config, self.params_dict(), x, hx, lengths=lengths,
                               dropout_key=key, unroll=self.unroll)

    def load_torch_state_dict(self, state_dict) -> None:
        """Load a torch ``state_dict`` (tensors or arrays); strict, and all-or-nothing."""
        torch_compat.load_state_dict(self._params(), state_dict, owner=type(self).__name__)

    def torch_state_dict(self) -> dict:
        """Parameters as NumPy arrays with torch's keys and shapes (``torch.nn.X.load_state_dict`` takes it
        after ``torch.from_numpy``)."""
        return torch_compat.state_dict(self._params())


class RNN(_RNNBase):
    """Elman RNN, ``torch.nn.RNN``: ``output, h_n = rnn(x, h_0=None)``."""

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", *, rngs: nnx.Rngs, **kw):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
        super().__init__("RNN_" + nonlinearity.upper(), input_size, hidden_size, num_layers, rngs=rngs, **kw)
        self.nonlinearity = nonlinearity


class LSTM(_RNNBase):
    """``torch.nn.LSTM``: ``output, (h_n, c_n) = lstm(x, (h_0, c_0)=None)``; ``proj_size`` projects ``h``."""

    def __init__(self, input_size, hidden_size, num_layers=1, *, rngs: nnx.Rngs, **kw):
        super().__init__("LSTM", input_size, hidden_size, num_layers, rngs=rngs, **kw)


class GRU(_RNNBase):
    """``torch.nn.GRU``: ``output, h_n = gru(x, h_0=None)``."""

    def __init__(self, input_size, hidden_size, num_layers=1, *, rngs: nnx.Rngs, **kw):
        if kw.get("proj_size"):
            raise ValueError("proj_size argument is only supported for LSTM, not GRU")
        super().__init__("GRU", input_size, hidden_size, num_layers, rngs=rngs, **kw)
