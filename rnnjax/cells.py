"""One time step of each recurrent cell, as pure functions with torch's gate order and biases.

Every cell is split in two so that a layer can hoist the input projection out of the time loop:

    gx = input_projection(params, x)          # x @ W_ih^T + b_ih, for all steps in one matmul
    carry, y = <cell>_step(params, carry, gx) # only the recurrent matmul stays inside the scan

and the plain ``(params, carry, x) -> (carry, y)`` form is the composition of the two.

``params`` is a dict with torch's names without the layer suffix: ``weight_ih``, ``weight_hh`` and,
when the layer has biases, ``bias_ih``, ``bias_hh``; an LSTM with ``proj_size > 0`` also has
``weight_hr``. Layouts are torch's: ``weight_ih`` is ``(G*hidden, input)``, ``weight_hh`` is
``(G*hidden, hidden or proj)`` with G = 1 (RNN), 4 (LSTM), 3 (GRU).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _linear(x, weight, bias=None):
    y = x @ weight.T
    return y if bias is None else y + bias


def input_projection(params, x):
    """``x @ W_ih^T + b_ih``; works on any leading shape, so one call covers every time step."""
    return _linear(x, params["weight_ih"], params.get("bias_ih"))


def _hidden_projection(params, h):
    return _linear(h, params["weight_hh"], params.get("bias_hh"))


def rnn_tanh_step(params, h, gx):
    r"""Elman RNN with tanh, torch's ``nn.RNN(nonlinearity='tanh')``.

    .. math:: h' = \tanh(W_{ih} x + b_{ih} + W_{hh} h + b_{hh})
    """
    h = jnp.tanh(gx + _hidden_projection(params, h))
    return h, h


def rnn_relu_step(params, h, gx):
    r"""Elman RNN with ReLU, torch's ``nn.RNN(nonlinearity='relu')``.

    .. math:: h' = \max(0, W_{ih} x + b_{ih} + W_{hh} h + b_{hh})
    """
    h = jax.nn.relu(gx + _hidden_projection(params, h))
    return h, h


def lstm_step(params, carry, gx):
    r"""LSTM, torch's ``nn.LSTM``; gates in torch's order ``i, f, g, o``.

    .. math::
        i, f, g, o &= \mathrm{split}_4(W_{ih} x + b_{ih} + W_{hh} h + b_{hh}) \\
        c' &= \sigma(f) \odot c + \sigma(i) \odot \tanh(g) \\
        h' &= \sigma(o) \odot \tanh(c') \quad (\text{then } h' = W_{hr} h' \text{ if projected})

    ``carry`` is ``(h, c)``; with a projection ``h`` has ``proj_size`` features, ``c`` keeps ``hidden``.
    """
    h, c = carry
    gates = gx + _hidden_projection(params, h)
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    if "weight_hr" in params:
        h = h @ params["weight_hr"].T
    return (h, c), h


def gru_step(params, h, gx):
    r"""GRU, torch's ``nn.GRU``; gates in torch's order ``r, z, n``.

    .. math::
        r &= \sigma(W_{ir} x + b_{ir} + W_{hr} h + b_{hr}) \\
        z &= \sigma(W_{iz} x + b_{iz} + W_{hz} h + b_{hz}) \\
        n &= \tanh(W_{in} x + b_{in} + r \odot (W_{hn} h + b_{hn})) \\
        h' &= (1 - z) \odot n + z \odot h

    ``b_hn`` sits inside the reset gate's product, which is why GRU cannot fold ``b_hh`` into ``gx``.
    """
    gh = _hidden_projection(params, h)
    xr, xz, xn = jnp.split(gx, 3, axis=-1)
    hr, hz, hn = jnp.split(gh, 3, axis=-1)
    r = jax.nn.sigmoid(xr + hr)
    z = jax.nn.sigmoid(xz + hz)
    n = jnp.tanh(xn + r * hn)
    h = (1.0 - z) * n + z * h
    return h, h


STEPS = {
    "RNN_TANH": rnn_tanh_step,
    "RNN_RELU": rnn_relu_step,
    "LSTM": lstm_step,
    "GRU": gru_step,
}
GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}


def _full(step):
    def cell(params, carry, x):
        return step(params, carry, input_projection(params, x))

    cell.__name__ = step.__name__.replace("_step", "_cell")
    cell.__doc__ = f"``(params, carry, x) -> (carry, y)`` form of :func:`{step.__name__}`."
    return cell


rnn_tanh_cell = _full(rnn_tanh_step)
rnn_relu_cell = _full(rnn_relu_step)
lstm_cell = _full(lstm_step)
gru_cell = _full(gru_step)
