"""Flax NNX modules for one time step, ``RNNCell``, ``LSTMCell`` and ``GRUCell``: ``torch.nn``'s cells.

A cell is what a hand-written loop calls once per step (a decoder with attention, a custom scan):
``torch.nn.LSTMCell(I, H)(x, (h, c)) -> (h', c')``. Each module holds ``nnx.Param``s named as torch's
cell names them (``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``: no layer suffix), so a torch
cell's ``state_dict`` loads 1:1, and calls the pure step in :mod:`rnnjax.cells` (``lstm_cell``, ...),
the same equations as the layers. The input checks are torch's, in its words (as ``ValueError``).

A time loop over a cell is ``jax.lax.scan`` (or ``nnx.scan``); for a whole sequence the layers in
:mod:`rnnjax.nn` are faster, since they take the input projection out of the loop.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from rnnjax import cells, recurrent
from rnnjax.nn import TorchParams

__all__ = ["RNNCell", "LSTMCell", "GRUCell"]


class _RNNCellBase(TorchParams, nnx.Module):
    """What the three cells share, as torch's ``RNNCellBase``: settings, torch's initialisation, the
    input checks and the state-dict interop. Calling the module is one step of :mod:`rnnjax.cells`."""

    def __init__(self, mode: str, input_size: int, hidden_size: int, *, bias: bool, param_dtype: Any,
                 rngs: nnx.Rngs):
        recurrent.check_size("input_size", input_size)
        recurrent.check_size("hidden_size", hidden_size)
        self.mode = mode
        self.input_size = int(input_size)
        self.hidden_size = int(hidden_size)
        self.bias = bool(bias)
        rows = cells.GATES[mode] * self.hidden_size
        shapes = {"weight_ih": (rows, self.input_size), "weight_hh": (rows, self.hidden_size),
                  "bias_ih": (rows,), "bias_hh": (rows,)}
        self._init_params({name: shapes[name] for name in self._param_names()}, self.hidden_size, param_dtype, rngs)

    def _param_names(self) -> Iterable[str]:
        return ("weight_ih", "weight_hh", "bias_ih", "bias_hh") if self.bias else ("weight_ih", "weight_hh")

    def __call__(self, input: jax.Array, hx: jax.Array | None = None) -> jax.Array:
        """RNNCell's and GRUCell's call (LSTMCell's state is a pair): ``h'``, shaped as ``hx``."""
        if isinstance(hx, (tuple, list)):
            raise ValueError(f"{type(self).__name__} expects hx as a single array h_0, not a tuple")
        return self._step(input, None if hx is None else (hx,), ("hidden",))[0]

    def _step(self, x: Any, states: tuple[Any, ...] | None, labels: tuple[str, ...]) -> tuple[jax.Array, ...]:
        """torch's checks (its cell's ``forward``, then ATen's ``check_rnn_cell_forward_*``), the step,
        and the states back in the input's batching. ``states``: the given ``h`` (and ``c``) or None."""
        name = type(self).__name__
        x = jnp.asarray(x)
        recurrent.check_floating(name, "input", x)
        if x.ndim not in (1, 2):
            raise ValueError(f"{name}: Expected input to be 1D or 2D, got {x.ndim}D instead")
        if states is not None:
            states = tuple(jnp.asarray(h) for h in states)
            for label, h in zip(labels, states):
                recurrent.check_floating(name, "hx" if label == "hidden" else label, h)
                if h.ndim not in (1, 2):
                    raise ValueError(f"{name}: Expected {label} to be 1D or 2D, got {h.ndim}D instead")
                # torch unsqueezes the state only when the input is unbatched and then reports sizes
                # that match neither; the plain statement is this one.
                if h.ndim != x.ndim:
                    raise ValueError(f"{name}: Expected {label} to be {x.ndim}D like the input "
                                     f"({'batched' if x.ndim == 2 else 'unbatched'}), got {h.ndim}D instead")
        batched = x.ndim == 2
        if not batched:
            x = x[None]
            states = None if states is None else tuple(h[None] for h in states)
        if x.shape[1] != self.input_size:
            raise ValueError(f"input has inconsistent input_size: got {x.shape[1]} expected {self.input_size}")
        if states is None:
            h = jnp.zeros((x.shape[0], self.hidden_size), x.dtype)
            # As in the layers: below float32 (mixed precision) the cell state stays float32.
            c = jnp.zeros((x.shape[0], self.hidden_size), jnp.promote_types(x.dtype, jnp.float32))
            states = (h, c) if self.mode == "LSTM" else (h,)
        else:
            for k, h in enumerate(states):
                if h.shape[0] != x.shape[0]:
                    raise ValueError(f"Input batch size {x.shape[0]} doesn't match hidden{k} batch size {h.shape[0]}")
                if h.shape[1] != self.hidden_size:
                    raise ValueError(f"hidden{k} has inconsistent hidden_size: got {h.shape[1]}, "
                                     f"expected {self.hidden_size}")
        carry = states if self.mode == "LSTM" else states[0]
        params = self.params_dict()
        carry, _ = cells.STEPS[self.mode](params, carry, cells.input_projection(params, x))
        out = carry if self.mode == "LSTM" else (carry,)
        return out if batched else tuple(h[0] for h in out)


class RNNCell(_RNNCellBase):
    r"""An Elman RNN cell with :math:`\tanh` or :math:`\mathrm{ReLU}`, ``torch.nn.RNNCell``.

    .. math::
        h' = \tanh(W_{ih} x + b_{ih} + W_{hh} h + b_{hh})

    With ``nonlinearity='relu'``, :math:`\mathrm{ReLU}` replaces :math:`\tanh`
    (:data:`rnnjax.cells.ELMAN_ACTIVATIONS`).

    Args:
        input_size: The number of expected features in the input ``x``.
        hidden_size: The number of features in the hidden state ``h``.
        bias: If ``False``, the cell has no ``b_ih`` and ``b_hh``. Default: ``True``.
        nonlinearity: ``'tanh'`` or ``'relu'``. Default: ``'tanh'``. (torch accepts any string here and
            fails at the first call; rnnjax refuses it at once.)
        param_dtype: (rnnjax) The parameters' dtype, e.g. ``jnp.float64`` under ``jax_enable_x64``.
            Default: ``jnp.float32``.
        rngs: (rnnjax) ``nnx.Rngs`` for the initialisation. Keyword-only, required.

    Inputs: ``input, hidden=None``
        * **input**: ``(N, H_in)`` or ``(H_in)``.
        * **hidden**: ``(N, H_out)`` or ``(H_out)``, batched like ``input``: the initial hidden state.
          Default: zeros.

        where

        .. code-block:: text

            N = batch size
            H_in = input_size
            H_out = hidden_size

    Outputs: ``h'``
        * **h'**: ``(N, H_out)`` or ``(H_out)``: the next hidden state.

    Attributes:
        input_size, hidden_size, bias, nonlinearity: The constructor's settings, as in torch; ``mode``
            is ``'RNN_TANH'`` or ``'RNN_RELU'``.
        weight_ih: ``nnx.Param``, ``(hidden_size, input_size)``.
        weight_hh: ``(hidden_size, hidden_size)``.
        bias_ih, bias_hh: ``(hidden_size,)`` (with ``bias``).

    .. note::
        Every weight and bias is initialised from :math:`\mathcal{U}(-\sqrt{k}, \sqrt{k})` with
        :math:`k = 1 / \text{hidden\_size}`, as in torch.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from flax import nnx
        >>> import rnnjax
        >>> cell = rnnjax.RNNCell(10, 20, rngs=nnx.Rngs(0))
        >>> x = jnp.ones((6, 3, 10))                       # (time, N, H_in)
        >>> hx = jnp.zeros((3, 20))                        # (N, H_out)
        >>> h = cell(x[0], hx)
        >>> h.shape
        (3, 20)
        >>> h_n, outputs = jax.lax.scan(lambda h, x_t: (cell(x_t, h),) * 2, hx, x)
        >>> outputs.shape
        (6, 3, 20)
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh", *,
                 param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
        super().__init__("RNN_" + nonlinearity.upper(), input_size, hidden_size, bias=bias,
                         param_dtype=param_dtype, rngs=rngs)
        self.nonlinearity = nonlinearity


class LSTMCell(_RNNCellBase):
    r"""A long short-term memory cell, ``torch.nn.LSTMCell``.

    Gates in torch's order ``i, f, g, o``; :func:`rnnjax.cells.lstm_pointwise` is the code:

    .. math::
        \begin{array}{ll}
        i = \sigma(W_{ii} x + b_{ii} + W_{hi} h + b_{hi}) \\
        f = \sigma(W_{if} x + b_{if} + W_{hf} h + b_{hf}) \\
        g = \tanh(W_{ig} x + b_{ig} + W_{hg} h + b_{hg}) \\
        o = \sigma(W_{io} x + b_{io} + W_{ho} h + b_{ho}) \\
        c' = f \odot c + i \odot g \\
        h' = o \odot \tanh(c')
        \end{array}

    where :math:`\sigma` is the sigmoid and :math:`\odot` the element-wise product.

    Args:
        input_size: The number of expected features in the input ``x``.
        hidden_size: The number of features in the hidden state ``h``.
        bias: If ``False``, the cell has no ``b_ih`` and ``b_hh``. Default: ``True``.
        param_dtype: (rnnjax) The parameters' dtype, e.g. ``jnp.float64`` under ``jax_enable_x64``.
            Default: ``jnp.float32``.
        rngs: (rnnjax) ``nnx.Rngs`` for the initialisation. Keyword-only, required.

    Inputs: ``input, (h_0, c_0)=None``
        * **input**: ``(N, H_in)`` or ``(H_in)``.
        * **h_0**: ``(N, H_out)`` or ``(H_out)``, batched like ``input``: the initial hidden state.
        * **c_0**: ``(N, H_out)`` or ``(H_out)``: the initial cell state.

          Both default to zeros when ``(h_0, c_0)`` is not given (``c_0`` in float32 for a bfloat16
          input, as in the layers).

        where

        .. code-block:: text

            N = batch size
            H_in = input_size
            H_out = hidden_size

    Outputs: ``(h_1, c_1)``
        * **h_1**: ``(N, H_out)`` or ``(H_out)``: the next hidden state.
        * **c_1**: ``(N, H_out)`` or ``(H_out)``: the next cell state.

    Attributes:
        input_size, hidden_size, bias: The constructor's settings, as in torch; ``mode`` is ``'LSTM'``.
        weight_ih: ``nnx.Param``, ``(W_ii|W_if|W_ig|W_io)``, ``(4 * hidden_size, input_size)``.
        weight_hh: ``(W_hi|W_hf|W_hg|W_ho)``, ``(4 * hidden_size, hidden_size)``.
        bias_ih, bias_hh: ``(4 * hidden_size,)`` (with ``bias``).

    .. note::
        Every weight and bias is initialised from :math:`\mathcal{U}(-\sqrt{k}, \sqrt{k})` with
        :math:`k = 1 / \text{hidden\_size}`, as in torch.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from flax import nnx
        >>> import rnnjax
        >>> cell = rnnjax.LSTMCell(10, 20, rngs=nnx.Rngs(0))
        >>> x = jnp.ones((6, 3, 10))                       # (time, N, H_in)
        >>> hx, cx = jnp.zeros((3, 20)), jnp.zeros((3, 20))
        >>> hx, cx = cell(x[0], (hx, cx))
        >>> hx.shape, cx.shape
        ((3, 20), (3, 20))
        >>> def step(carry, x_t):
        ...     h, c = cell(x_t, carry)
        ...     return (h, c), h
        >>> (h_n, c_n), outputs = jax.lax.scan(step, (hx, cx), x)
        >>> outputs.shape
        (6, 3, 20)
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *,
                 param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
        super().__init__("LSTM", input_size, hidden_size, bias=bias, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, input: jax.Array, hx: tuple[jax.Array, jax.Array] | None = None
                 ) -> tuple[jax.Array, jax.Array]:
        if hx is not None and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
            raise ValueError("LSTMCell expects hx as a tuple (h_0, c_0)")
        return self._step(input, None if hx is None else tuple(hx), ("hx[0]", "hx[1]"))


class GRUCell(_RNNCellBase):
    r"""A gated recurrent unit cell, ``torch.nn.GRUCell``.

    Gates in torch's order ``r, z, n``; :func:`rnnjax.cells.gru_pointwise` is the code:

    .. math::
        \begin{array}{ll}
        r = \sigma(W_{ir} x + b_{ir} + W_{hr} h + b_{hr}) \\
        z = \sigma(W_{iz} x + b_{iz} + W_{hz} h + b_{hz}) \\
        n = \tanh(W_{in} x + b_{in} + r \odot (W_{hn} h + b_{hn})) \\
        h' = (1 - z) \odot n + z \odot h
        \end{array}

    where :math:`\sigma` is the sigmoid and :math:`\odot` the element-wise product.

    Args:
        input_size: The number of expected features in the input ``x``.
        hidden_size: The number of features in the hidden state ``h``.
        bias: If ``False``, the cell has no ``b_ih`` and ``b_hh``. Default: ``True``.
        param_dtype: (rnnjax) The parameters' dtype, e.g. ``jnp.float64`` under ``jax_enable_x64``.
            Default: ``jnp.float32``.
        rngs: (rnnjax) ``nnx.Rngs`` for the initialisation. Keyword-only, required.

    Inputs: ``input, hidden=None``
        * **input**: ``(N, H_in)`` or ``(H_in)``.
        * **hidden**: ``(N, H_out)`` or ``(H_out)``, batched like ``input``: the initial hidden state.
          Default: zeros.

        where

        .. code-block:: text

            N = batch size
            H_in = input_size
            H_out = hidden_size

    Outputs: ``h'``
        * **h'**: ``(N, H_out)`` or ``(H_out)``: the next hidden state.

    Attributes:
        input_size, hidden_size, bias: The constructor's settings, as in torch; ``mode`` is ``'GRU'``.
        weight_ih: ``nnx.Param``, ``(W_ir|W_iz|W_in)``, ``(3 * hidden_size, input_size)``.
        weight_hh: ``(W_hr|W_hz|W_hn)``, ``(3 * hidden_size, hidden_size)``.
        bias_ih, bias_hh: ``(3 * hidden_size,)`` (with ``bias``).

    .. note::
        Every weight and bias is initialised from :math:`\mathcal{U}(-\sqrt{k}, \sqrt{k})` with
        :math:`k = 1 / \text{hidden\_size}`, as in torch.

    Examples:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> import rnnjax
        >>> cell = rnnjax.GRUCell(10, 20, rngs=nnx.Rngs(0))
        >>> h = cell(jnp.ones((3, 10)))                    # hidden defaults to zeros
        >>> h.shape
        (3, 20)
        >>> cell(jnp.ones(10), h[0]).shape                 # unbatched
        (20,)
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *,
                 param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
        super().__init__("GRU", input_size, hidden_size, bias=bias, param_dtype=param_dtype, rngs=rngs)
