"""Flax NNX modules ``RNN``, ``LSTM`` and ``GRU`` with torch's constructor, names and initialisation.

Each module holds ``nnx.Param``s named exactly like torch's state dict keys (``weight_ih_l0``, ...)
and calls the pure core in :mod:`rnnjax.recurrent`; ``torch_state_dict()`` / ``load_torch_state_dict``
are therefore renames of nothing. The settings (``hidden_size``, ``num_layers``, ...) are plain
Python attributes, so NNX keeps them in the graph definition: ``nnx.split`` / ``nnx.state`` return
the parameters only.

Like torch, a new module is in training mode (``deterministic=False``): dropout between layers is
applied when ``dropout > 0`` and ``num_layers > 1``. ``module.eval()`` / ``module.train()`` flip it,
as for ``nnx.Dropout``.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rnnjax import recurrent, torch_compat

#: ``h_0`` for RNN / GRU, ``(h_0, c_0)`` for LSTM.
Hidden = Union[jax.Array, tuple[jax.Array, jax.Array]]


class TorchParams:
    """Parameters named, shaped and initialised as torch's, for the layers and the cells: each is an
    ``nnx.Param`` attribute under its torch name (``_param_names``), so the state dict's interop is a
    strict copy (:mod:`rnnjax.torch_compat`)."""

    def _param_names(self) -> Iterable[str]:
        raise NotImplementedError

    def _init_params(self, shapes: Mapping[str, tuple[int, ...]], hidden_size: int, param_dtype: Any,
                     rngs: nnx.Rngs) -> None:
        # torch: every weight and bias ~ U(-1/sqrt(hidden), 1/sqrt(hidden)).
        bound = 1.0 / math.sqrt(hidden_size)
        for name, shape in shapes.items():
            setattr(self, name, nnx.Param(jax.random.uniform(rngs.params(), shape, param_dtype, -bound, bound)))

    def _params(self) -> dict[str, nnx.Param]:
        return {name: getattr(self, name) for name in self._param_names()}

    def params_dict(self) -> dict[str, jax.Array]:
        """The parameters as a plain dict of arrays by torch's names, for the pure functions
        (:func:`rnnjax.recurrent.apply`, :mod:`rnnjax.cells`)."""
        return {name: var.get_value() for name, var in self._params().items()}

    def load_torch_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a torch ``state_dict`` (tensors or arrays); strict, and all-or-nothing."""
        torch_compat.load_state_dict(self._params(), state_dict, owner=type(self).__name__)

    def torch_state_dict(self) -> dict[str, np.ndarray]:
        """Parameters as NumPy arrays with torch's keys and shapes (``torch.nn.X.load_state_dict`` takes it
        after ``torch.from_numpy``)."""
        return torch_compat.state_dict(self._params())


class _RNNBase(TorchParams, nnx.Module):
    """What RNN, LSTM and GRU share: settings, torch's initialisation, the call, state-dict interop.

    Calling the module is ``recurrent.apply(module.config, module.params_dict(), x, hx, ...)``.
    """

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1, *,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0, unroll: int = 1,
                 param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.mode = mode
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        # A number becomes a float; anything else is kept so that check_config names it.
        is_number = isinstance(dropout, (int, float)) and not isinstance(dropout, bool)
        self.dropout = float(dropout) if is_number else dropout
        self.bidirectional = bool(bidirectional)
        self.proj_size = proj_size
        recurrent.check_config(self.config)
        self.unroll = unroll
        self.deterministic = False
        self._init_params(recurrent.param_shapes(self.config), hidden_size, param_dtype, rngs)
        needs_key = self.dropout > 0 and num_layers > 1
        self.rngs = rngs["dropout"].fork() if needs_key else nnx.data(None)

    @property
    def config(self) -> recurrent.Config:
        """The settings as a :class:`rnnjax.recurrent.Config` (hashable: a jit static argument)."""
        return recurrent.Config(self.mode, self.input_size, self.hidden_size, self.num_layers, self.bias,
                                self.batch_first, self.dropout, self.bidirectional, self.proj_size)

    def _param_names(self) -> Iterable[str]:
        return recurrent.param_shapes(self.config)

    def __call__(self, x: jax.Array, hx: Hidden | None = None, *, lengths: jax.Array | None = None,
                 deterministic: bool | None = None,
                 rngs: nnx.Rngs | nnx.RngStream | jax.Array | None = None) -> tuple[jax.Array, Hidden]:
        deterministic = self.deterministic if deterministic is None else deterministic
        key = None
        if not deterministic and self.dropout > 0 and self.num_layers > 1:
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



class RNN(_RNNBase):
    r"""A multi-layer Elman RNN with :math:`\tanh` or :math:`\mathrm{ReLU}`, ``torch.nn.RNN``.

    For each element of the input sequence, each layer computes

    .. math::
        h_t = \tanh(x_t W_{ih}^T + b_{ih} + h_{t-1} W_{hh}^T + b_{hh})

    where :math:`h_t` is the hidden state at time ``t``, :math:`x_t` the input at time ``t`` and
    :math:`h_{t-1}` the hidden state of the layer at time ``t-1`` (or the initial state at time 0).
    With ``nonlinearity='relu'``, :math:`\mathrm{ReLU}` replaces :math:`\tanh`. In a multi-layer RNN
    the input of layer ``l >= 1`` is the output of layer ``l - 1``, through dropout in training mode.

    Args:
        input_size: The number of expected features in the input ``x``.
        hidden_size: The number of features in the hidden state ``h``.
        num_layers: Number of recurrent layers; ``num_layers=2`` stacks two RNNs, the second taking
            the outputs of the first. Default: 1.
        nonlinearity: ``'tanh'`` or ``'relu'``. Default: ``'tanh'``.
        bias: If ``False``, the layer has no ``b_ih`` and ``b_hh``. Default: ``True``.
        batch_first: If ``True``, input and output are ``(N, L, H)`` instead of ``(L, N, H)``; the
            hidden state is not affected. Default: ``False``.
        dropout: If non-zero, dropout with this probability on the outputs of every layer but the
            last, in training mode. Default: 0.
        bidirectional: If ``True``, a bidirectional RNN. Default: ``False``.
        unroll: (rnnjax) ``lax.scan``'s ``unroll`` for the time loop. Default: 1.
        param_dtype: (rnnjax) The parameters' dtype, e.g. ``jnp.float64`` under ``jax_enable_x64``.
            Default: ``jnp.float32``.
        rngs: (rnnjax) ``nnx.Rngs`` for the initialisation and, when ``dropout > 0``, the dropout
            stream. Keyword-only, required.

    Inputs: ``input, h_0=None, *, lengths=None, deterministic=None, rngs=None``
        * **input**: ``(L, H_in)`` unbatched, ``(L, N, H_in)`` or, with ``batch_first``,
          ``(N, L, H_in)``.
        * **h_0**: ``(D * num_layers, H_out)`` unbatched or ``(D * num_layers, N, H_out)``: the
          initial hidden state. Default: zeros.
        * **lengths**: (rnnjax) ``(N,)`` integers in ``1..L``: each sequence's length. The result is
          torch's on ``pack_padded_sequence(input, lengths, enforce_sorted=False)`` unpacked with
          ``pad_packed_sequence(total_length=L)``: zeros past each sequence's end, ``h_n`` at its last
          valid step, and the reverse direction starting at its own end.
        * **deterministic**: (rnnjax) ``True`` turns dropout off for this call. Default: the module's
          mode (``module.eval()`` / ``module.train()``).
        * **rngs**: (rnnjax) the dropout key for this call: ``nnx.Rngs``, ``nnx.RngStream`` or a key.
          Default: the stream forked from the constructor's ``rngs``.

        where

        .. code-block:: text

            N = batch size
            L = sequence length
            D = 2 if bidirectional else 1
            H_in = input_size
            H_out = hidden_size

    Outputs: ``output, h_n``
        * **output**: ``(L, D * H_out)`` unbatched, ``(L, N, D * H_out)`` or, with ``batch_first``,
          ``(N, L, D * H_out)``: the last layer's :math:`h_t` for every ``t``; with ``D = 2`` the
          forward and reverse outputs are concatenated on the last axis.
        * **h_n**: ``(D * num_layers, H_out)`` unbatched or ``(D * num_layers, N, H_out)``: the final
          hidden state of every layer and direction (forward, then reverse, for each layer).

    Attributes:
        input_size, hidden_size, num_layers, nonlinearity, bias, batch_first, dropout, bidirectional:
            The constructor's settings, as in torch; ``mode`` is ``'RNN_TANH'`` or ``'RNN_RELU'``,
            ``config`` all of them as a :class:`rnnjax.recurrent.Config`.
        weight_ih_l[k]: ``nnx.Param``, the input-hidden weights of layer ``k``: ``(hidden_size,
            input_size)`` for ``k = 0``, else ``(hidden_size, D * hidden_size)``.
        weight_hh_l[k]: ``(hidden_size, hidden_size)``, the hidden-hidden weights of layer ``k``.
        bias_ih_l[k], bias_hh_l[k]: ``(hidden_size,)``, the biases of layer ``k`` (with ``bias``).
        \*_reverse: the same for the reverse direction (with ``bidirectional``).

    .. note::
        Every weight and bias is initialised from :math:`\mathcal{U}(-\sqrt{k}, \sqrt{k})` with
        :math:`k = 1 / \text{hidden\_size}`, as in torch.

    Examples:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> import rnnjax
        >>> rnn = rnnjax.RNN(10, 20, 2, rngs=nnx.Rngs(0))
        >>> x = jnp.ones((5, 3, 10))                       # (L, N, H_in)
        >>> h0 = jnp.zeros((2, 3, 20))                     # (D * num_layers, N, H_out)
        >>> output, h_n = rnn(x, h0)
        >>> output.shape, h_n.shape
        ((5, 3, 20), (2, 3, 20))
        >>> rnn = rnnjax.RNN(10, 20, nonlinearity="relu", bidirectional=True, rngs=nnx.Rngs(0))
        >>> output, h_n = rnn(x, lengths=jnp.array([5, 2, 4]))
        >>> output.shape, h_n.shape
        ((5, 3, 40), (2, 3, 20))
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 *, bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0, unroll: int = 1,
                 param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
        super().__init__("RNN_" + nonlinearity.upper(), input_size, hidden_size, num_layers, bias=bias,
                         batch_first=batch_first, dropout=dropout, bidirectional=bidirectional,
                         proj_size=proj_size, unroll=unroll, param_dtype=param_dtype, rngs=rngs)
        self.nonlinearity = nonlinearity


class LSTM(_RNNBase):
    r"""A multi-layer long short-term memory RNN, ``torch.nn.LSTM``.

    For each element of the input sequence, each layer computes (gates in torch's order
    ``i, f, g, o``; :func:`rnnjax.cells.lstm_pointwise` is the code)

    .. math::
        \begin{array}{ll}
        i_t = \sigma(W_{ii} x_t + b_{ii} + W_{hi} h_{t-1} + b_{hi}) \\
        f_t = \sigma(W_{if} x_t + b_{if} + W_{hf} h_{t-1} + b_{hf}) \\
        g_t = \tanh(W_{ig} x_t + b_{ig} + W_{hg} h_{t-1} + b_{hg}) \\
        o_t = \sigma(W_{io} x_t + b_{io} + W_{ho} h_{t-1} + b_{ho}) \\
        c_t = f_t \odot c_{t-1} + i_t \odot g_t \\
        h_t = o_t \odot \tanh(c_t)
        \end{array}

    where :math:`h_t`, :math:`c_t` are the hidden and cell states at time ``t``, :math:`x_t` the
    input, :math:`\sigma` the sigmoid and :math:`\odot` the element-wise product. In a multi-layer
    LSTM the input of layer ``l >= 1`` is the output :math:`h_t` of layer ``l - 1``, through dropout
    in training mode. With ``proj_size > 0`` each layer's :math:`h_t` is projected,
    :math:`h_t = W_{hr} h_t`, so ``h`` (and the output) has ``proj_size`` features; ``c`` keeps
    ``hidden_size``.

    Args:
        input_size: The number of expected features in the input ``x``.
        hidden_size: The number of features in the hidden state ``h``.
        num_layers: Number of recurrent layers; ``num_layers=2`` stacks two LSTMs, the second taking
            the outputs of the first. Default: 1.
        bias: If ``False``, the layer has no ``b_ih`` and ``b_hh``. Default: ``True``.
        batch_first: If ``True``, input and output are ``(N, L, H)`` instead of ``(L, N, H)``; the
            hidden and cell states are not affected. Default: ``False``.
        dropout: If non-zero, dropout with this probability on the outputs of every layer but the
            last, in training mode. Default: 0.
        bidirectional: If ``True``, a bidirectional LSTM. Default: ``False``.
        proj_size: If ``> 0``, an LSTM with projections of this size (``< hidden_size``). Default: 0.
        unroll: (rnnjax) ``lax.scan``'s ``unroll`` for the time loop. Default: 1.
        param_dtype: (rnnjax) The parameters' dtype, e.g. ``jnp.float64`` under ``jax_enable_x64``.
            Default: ``jnp.float32``.
        rngs: (rnnjax) ``nnx.Rngs`` for the initialisation and, when ``dropout > 0``, the dropout
            stream. Keyword-only, required.

    Inputs: ``input, (h_0, c_0)=None, *, lengths=None, deterministic=None, rngs=None``
        * **input**: ``(L, H_in)`` unbatched, ``(L, N, H_in)`` or, with ``batch_first``,
          ``(N, L, H_in)``.
        * **h_0**: ``(D * num_layers, H_out)`` unbatched or ``(D * num_layers, N, H_out)``: the
          initial hidden state. Default (no tuple given): zeros.
        * **c_0**: ``(D * num_layers, H_cell)`` unbatched or ``(D * num_layers, N, H_cell)``: the
          initial cell state. Default: zeros.
        * **lengths**: (rnnjax) ``(N,)`` integers in ``1..L``: each sequence's length. The result is
          torch's on ``pack_padded_sequence(input, lengths, enforce_sorted=False)`` unpacked with
          ``pad_packed_sequence(total_length=L)``: zeros past each sequence's end, ``h_n`` and ``c_n``
          at its last valid step, and the reverse direction starting at its own end.
        * **deterministic**: (rnnjax) ``True`` turns dropout off for this call. Default: the module's
          mode (``module.eval()`` / ``module.train()``).
        * **rngs**: (rnnjax) the dropout key for this call: ``nnx.Rngs``, ``nnx.RngStream`` or a key.
          Default: the stream forked from the constructor's ``rngs``.

        where

        .. code-block:: text

            N = batch size
            L = sequence length
            D = 2 if bidirectional else 1
            H_in = input_size
            H_cell = hidden_size
            H_out = proj_size if proj_size > 0 else hidden_size

    Outputs: ``output, (h_n, c_n)``
        * **output**: ``(L, D * H_out)`` unbatched, ``(L, N, D * H_out)`` or, with ``batch_first``,
          ``(N, L, D * H_out)``: the last layer's :math:`h_t` for every ``t``; with ``D = 2`` the
          forward and reverse outputs are concatenated on the last axis.
        * **h_n**: ``(D * num_layers, H_out)`` unbatched or ``(D * num_layers, N, H_out)``: the final
          hidden state of every layer and direction (forward, then reverse, for each layer).
        * **c_n**: ``(D * num_layers, H_cell)`` unbatched or ``(D * num_layers, N, H_cell)``: the
          final cell state, in the same order.

    Attributes:
        input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, proj_size:
            The constructor's settings, as in torch; ``mode`` is ``'LSTM'``, ``config`` all of them
            as a :class:`rnnjax.recurrent.Config`.
        weight_ih_l[k]: ``nnx.Param``, the input-hidden weights of layer ``k``,
            ``(W_ii|W_if|W_ig|W_io)``: ``(4 * hidden_size, input_size)`` for ``k = 0``, else
            ``(4 * hidden_size, D * H_out)``.
        weight_hh_l[k]: ``(W_hi|W_hf|W_hg|W_ho)``, ``(4 * hidden_size, H_out)``.
        bias_ih_l[k], bias_hh_l[k]: ``(4 * hidden_size,)``, the biases of layer ``k`` (with ``bias``).
        weight_hr_l[k]: ``(proj_size, hidden_size)``, the projection of layer ``k`` (with
            ``proj_size > 0``).
        \*_reverse: the same for the reverse direction (with ``bidirectional``).

    .. note::
        Every weight and bias is initialised from :math:`\mathcal{U}(-\sqrt{k}, \sqrt{k})` with
        :math:`k = 1 / \text{hidden\_size}`, as in torch.

    Examples:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> import rnnjax
        >>> lstm = rnnjax.LSTM(10, 20, 2, rngs=nnx.Rngs(0))
        >>> x = jnp.ones((5, 3, 10))                       # (L, N, H_in)
        >>> h0 = c0 = jnp.zeros((2, 3, 20))                # (D * num_layers, N, H_out)
        >>> output, (h_n, c_n) = lstm(x, (h0, c0))
        >>> output.shape, h_n.shape, c_n.shape
        ((5, 3, 20), (2, 3, 20), (2, 3, 20))
        >>> lstm = rnnjax.LSTM(10, 20, proj_size=5, bidirectional=True, batch_first=True,
        ...                    rngs=nnx.Rngs(0))
        >>> output, (h_n, c_n) = lstm(jnp.ones((3, 7, 10)), lengths=jnp.array([7, 4, 2]))
        >>> output.shape, h_n.shape, c_n.shape           # (N, L, D * H_out), (D, N, H_out), (D, N, H_cell)
        ((3, 7, 10), (2, 3, 5), (2, 3, 20))
        >>> sorted(lstm.torch_state_dict())[:3]
        ['bias_hh_l0', 'bias_hh_l0_reverse', 'bias_ih_l0']
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, *, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, unroll: int = 1, param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias=bias, batch_first=batch_first,
                         dropout=dropout, bidirectional=bidirectional, proj_size=proj_size, unroll=unroll,
                         param_dtype=param_dtype, rngs=rngs)


class GRU(_RNNBase):
    r"""A multi-layer gated recurrent unit RNN, ``torch.nn.GRU``.

    For each element of the input sequence, each layer computes (gates in torch's order
    ``r, z, n``; :func:`rnnjax.cells.gru_pointwise` is the code)

    .. math::
        \begin{array}{ll}
        r_t = \sigma(W_{ir} x_t + b_{ir} + W_{hr} h_{t-1} + b_{hr}) \\
        z_t = \sigma(W_{iz} x_t + b_{iz} + W_{hz} h_{t-1} + b_{hz}) \\
        n_t = \tanh(W_{in} x_t + b_{in} + r_t \odot (W_{hn} h_{t-1} + b_{hn})) \\
        h_t = (1 - z_t) \odot n_t + z_t \odot h_{t-1}
        \end{array}

    where :math:`h_t` is the hidden state at time ``t``, :math:`x_t` the input, :math:`r_t`,
    :math:`z_t`, :math:`n_t` the reset, update and new gates, :math:`\sigma` the sigmoid and
    :math:`\odot` the element-wise product. In a multi-layer GRU the input of layer ``l >= 1`` is the
    output of layer ``l - 1``, through dropout in training mode.

    Args:
        input_size: The number of expected features in the input ``x``.
        hidden_size: The number of features in the hidden state ``h``.
        num_layers: Number of recurrent layers; ``num_layers=2`` stacks two GRUs, the second taking
            the outputs of the first. Default: 1.
        bias: If ``False``, the layer has no ``b_ih`` and ``b_hh``. Default: ``True``.
        batch_first: If ``True``, input and output are ``(N, L, H)`` instead of ``(L, N, H)``; the
            hidden state is not affected. Default: ``False``.
        dropout: If non-zero, dropout with this probability on the outputs of every layer but the
            last, in training mode. Default: 0.
        bidirectional: If ``True``, a bidirectional GRU. Default: ``False``.
        proj_size: Accepted only as 0, for torch's error message: projections are LSTM-only.
        unroll: (rnnjax) ``lax.scan``'s ``unroll`` for the time loop. Default: 1.
        param_dtype: (rnnjax) The parameters' dtype, e.g. ``jnp.float64`` under ``jax_enable_x64``.
            Default: ``jnp.float32``.
        rngs: (rnnjax) ``nnx.Rngs`` for the initialisation and, when ``dropout > 0``, the dropout
            stream. Keyword-only, required.

    Inputs: ``input, h_0=None, *, lengths=None, deterministic=None, rngs=None``
        * **input**: ``(L, H_in)`` unbatched, ``(L, N, H_in)`` or, with ``batch_first``,
          ``(N, L, H_in)``.
        * **h_0**: ``(D * num_layers, H_out)`` unbatched or ``(D * num_layers, N, H_out)``: the
          initial hidden state. Default: zeros.
        * **lengths**: (rnnjax) ``(N,)`` integers in ``1..L``: each sequence's length. The result is
          torch's on ``pack_padded_sequence(input, lengths, enforce_sorted=False)`` unpacked with
          ``pad_packed_sequence(total_length=L)``: zeros past each sequence's end, ``h_n`` at its last
          valid step, and the reverse direction starting at its own end.
        * **deterministic**: (rnnjax) ``True`` turns dropout off for this call. Default: the module's
          mode (``module.eval()`` / ``module.train()``).
        * **rngs**: (rnnjax) the dropout key for this call: ``nnx.Rngs``, ``nnx.RngStream`` or a key.
          Default: the stream forked from the constructor's ``rngs``.

        where

        .. code-block:: text

            N = batch size
            L = sequence length
            D = 2 if bidirectional else 1
            H_in = input_size
            H_out = hidden_size

    Outputs: ``output, h_n``
        * **output**: ``(L, D * H_out)`` unbatched, ``(L, N, D * H_out)`` or, with ``batch_first``,
          ``(N, L, D * H_out)``: the last layer's :math:`h_t` for every ``t``; with ``D = 2`` the
          forward and reverse outputs are concatenated on the last axis.
        * **h_n**: ``(D * num_layers, H_out)`` unbatched or ``(D * num_layers, N, H_out)``: the final
          hidden state of every layer and direction (forward, then reverse, for each layer).

    Attributes:
        input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional:
            The constructor's settings, as in torch; ``mode`` is ``'GRU'``, ``config`` all of them
            as a :class:`rnnjax.recurrent.Config`.
        weight_ih_l[k]: ``nnx.Param``, the input-hidden weights of layer ``k``, ``(W_ir|W_iz|W_in)``:
            ``(3 * hidden_size, input_size)`` for ``k = 0``, else ``(3 * hidden_size, D * hidden_size)``.
        weight_hh_l[k]: ``(W_hr|W_hz|W_hn)``, ``(3 * hidden_size, hidden_size)``.
        bias_ih_l[k], bias_hh_l[k]: ``(3 * hidden_size,)``, ``(b_ir|b_iz|b_in)`` and
            ``(b_hr|b_hz|b_hn)`` (with ``bias``).
        \*_reverse: the same for the reverse direction (with ``bidirectional``).

    .. note::
        Every weight and bias is initialised from :math:`\mathcal{U}(-\sqrt{k}, \sqrt{k})` with
        :math:`k = 1 / \text{hidden\_size}`, as in torch.

    Examples:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> import rnnjax
        >>> gru = rnnjax.GRU(10, 20, 2, batch_first=True, rngs=nnx.Rngs(0))
        >>> x = jnp.ones((3, 5, 10))                       # (N, L, H_in)
        >>> output, h_n = gru(x)
        >>> output.shape, h_n.shape                        # h_n is (D * num_layers, N, H_out) anyway
        ((3, 5, 20), (2, 3, 20))
        >>> output, h_n = gru(x[0])                        # unbatched: (L, H_in)
        >>> output.shape, h_n.shape
        ((5, 20), (2, 20))
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, *, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, unroll: int = 1, param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
        if proj_size:
            raise ValueError("proj_size argument is only supported for LSTM, not GRU")
        super().__init__("GRU", input_size, hidden_size, num_layers, bias=bias, batch_first=batch_first,
                         dropout=dropout, bidirectional=bidirectional, unroll=unroll,
                         param_dtype=param_dtype, rngs=rngs)
