"""One time step of each recurrent cell, as pure functions with torch's gate order and biases.

Each cell's equations are written once, in a *pointwise* function of the gates' pre-activations
(:func:`lstm_pointwise`, :func:`gru_pointwise`, :data:`ELMAN_ACTIVATIONS`). The steps below and the
hand-written kernels in :mod:`rnnjax.kernels` both call them; they differ only in how they form the
pre-activations (the kernels lay them out for speed, see :mod:`rnnjax.kernels.lstm`).

Every step is split in two so that a layer can hoist the input projection out of the time loop:

    gx = input_projection(params, x)          # x @ W_ih^T + b_ih, for all steps in one matmul
    carry, y = <cell>_step(params, carry, gx) # only the recurrent matmul stays inside the scan

and the plain ``(params, carry, x) -> (carry, y)`` form (:func:`lstm_cell`, ...) is the composition
of the two.

``params`` is a dict with torch's names without the layer suffix: ``weight_ih``, ``weight_hh`` and,
when the layer has biases, ``bias_ih``, ``bias_hh``; an LSTM with ``proj_size > 0`` also has
``weight_hr``. Layouts are torch's: ``weight_ih`` is ``(G*hidden, input)``, ``weight_hh`` is
``(G*hidden, hidden or proj)`` with G = 1 (RNN), 4 (LSTM), 3 (GRU).

Precision, as in the kernels (:mod:`rnnjax.kernels.common`): a matmul runs in the dtype of the
activation it multiplies (``x`` or ``h``; the weight is cast to it) and returns float32 or wider,
the gate math runs in that float32, and each returned state has the dtype of the state passed in.
For float32 or float64 input nothing is cast.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

Params = Mapping[str, jax.Array]
Step = Callable[[Params, Any, jax.Array], tuple[Any, jax.Array]]


def sigmoid(z: jax.Array) -> jax.Array:
    r""":math:`\sigma(z) = 1 / (1 + e^{-z})`, computed as ``0.5 * tanh(0.5 z) + 0.5``."""
    # The same function as jax.nn.sigmoid; XLA:CPU vectorises tanh better than its logistic.
    return 0.5 * jnp.tanh(0.5 * z) + 0.5


def lstm_pointwise(zi: jax.Array, zf: jax.Array, zg: jax.Array, zo: jax.Array, c: jax.Array
                   ) -> tuple[jax.Array, jax.Array, tuple[jax.Array, jax.Array, jax.Array, jax.Array]]:
    r"""The LSTM cell after its matmuls: torch's ``nn.LSTM``, gates in torch's order ``i, f, g, o``.

    ``z*`` are the gates' pre-activations :math:`z_k = W_{ik} x + b_{ik} + W_{hk} h + b_{hk}`:

    .. math::
        i = \sigma(z_i), \quad f = \sigma(z_f), \quad g = \tanh(z_g), \quad o = \sigma(z_o) \\
        c' = f \odot c + i \odot g, \qquad h' = o \odot \tanh(c')

    Returns ``(h', c', (i, f, g, o))``; the gates are what a backward pass needs.
    """
    i, f, g, o = sigmoid(zi), sigmoid(zf), jnp.tanh(zg), sigmoid(zo)
    c = f * c + i * g
    return o * jnp.tanh(c), c, (i, f, g, o)


def gru_pointwise(zr: jax.Array, zz: jax.Array, xn: jax.Array, hn: jax.Array, h: jax.Array
                  ) -> tuple[jax.Array, tuple[jax.Array, jax.Array, jax.Array]]:
    r"""The GRU cell after its matmuls: torch's ``nn.GRU``, gates in torch's order ``r, z, n``.

    ``zr``, ``zz`` are the full pre-activations of ``r`` and ``z``; the ``n`` gate's two halves stay
    apart, because ``b_hn`` sits inside the reset gate's product (so GRU cannot fold ``b_hh`` into
    the input projection): ``xn`` :math:`= W_{in} x + b_{in}`, ``hn`` :math:`= W_{hn} h + b_{hn}`.

    .. math::
        r = \sigma(z_r), \quad z = \sigma(z_z), \quad n = \tanh(x_n + r \odot h_n) \\
        h' = (1 - z) \odot n + z \odot h

    Returns ``(h', (r, z, n))``.
    """
    r, z = sigmoid(zr), sigmoid(zz)
    n = jnp.tanh(xn + r * hn)
    return (1 - z) * n + z * h, (r, z, n)


#: The Elman cell after its matmuls, :math:`h' = \phi(W_{ih} x + b_{ih} + W_{hh} h + b_{hh})`,
#: with :math:`\phi` torch's ``nonlinearity``: ``tanh`` or ``relu``.
ELMAN_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "RNN_TANH": jnp.tanh,
    "RNN_RELU": jax.nn.relu,
}


def _linear(x: jax.Array, weight: jax.Array, bias: jax.Array | None = None) -> jax.Array:
    """``x @ weight^T + bias`` with the weight cast to ``x``'s dtype, in float32 or wider.

    One ``dot_general`` on a 2-D ``x`` that contracts the last axes: with a transpose op before
    it, XLA:CPU computes a bfloat16 matmul inside a loop (the decoding loop) in float32."""
    flat = x.reshape(-1, x.shape[-1])
    y = jax.lax.dot_general(flat, weight.astype(x.dtype), (((1,), (1,)), ((), ())),
                            preferred_element_type=jnp.promote_types(x.dtype, jnp.float32))
    y = y.reshape(*x.shape[:-1], weight.shape[0])
    return y if bias is None else y + bias


def input_projection(params: Params, x: jax.Array) -> jax.Array:
    """``x @ W_ih^T + b_ih``; works on any leading shape, so one call covers every time step."""
    return _linear(x, params["weight_ih"], params.get("bias_ih"))


def _hidden_projection(params: Params, h: jax.Array) -> jax.Array:
    return _linear(h, params["weight_hh"], params.get("bias_hh"))


def rnn_tanh_step(params: Params, h: jax.Array, gx: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Elman RNN with tanh, torch's ``nn.RNN(nonlinearity='tanh')`` (see :data:`ELMAN_ACTIVATIONS`)."""
    h = ELMAN_ACTIVATIONS["RNN_TANH"](gx + _hidden_projection(params, h)).astype(h.dtype)
    return h, h


def rnn_relu_step(params: Params, h: jax.Array, gx: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Elman RNN with ReLU, torch's ``nn.RNN(nonlinearity='relu')`` (see :data:`ELMAN_ACTIVATIONS`)."""
    h = ELMAN_ACTIVATIONS["RNN_RELU"](gx + _hidden_projection(params, h)).astype(h.dtype)
    return h, h


def lstm_step(params: Params, carry: tuple[jax.Array, jax.Array], gx: jax.Array
              ) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
    r"""LSTM, torch's ``nn.LSTM``: :func:`lstm_pointwise` of ``gx + W_hh h + b_hh``, split in 4.

    ``carry`` is ``(h, c)``. With ``weight_hr`` (``proj_size > 0``) the output is projected,
    :math:`h' = W_{hr} h'`, so ``h`` has ``proj_size`` features while ``c`` keeps ``hidden``.
    """
    h0, c0 = carry
    gates = gx + _hidden_projection(params, h0)
    h, c, _ = lstm_pointwise(*jnp.split(gates, 4, axis=-1), c0)
    h = h.astype(h0.dtype)
    if "weight_hr" in params:
        h = _linear(h, params["weight_hr"]).astype(h0.dtype)
    return (h, c.astype(c0.dtype)), h


def gru_step(params: Params, h: jax.Array, gx: jax.Array) -> tuple[jax.Array, jax.Array]:
    """GRU, torch's ``nn.GRU``: :func:`gru_pointwise` of ``gx`` and ``W_hh h + b_hh``, each split in 3."""
    xr, xz, xn = jnp.split(gx, 3, axis=-1)
    hr, hz, hn = jnp.split(_hidden_projection(params, h), 3, axis=-1)
    h_new, _ = gru_pointwise(xr + hr, xz + hz, xn, hn, h)
    h_new = h_new.astype(h.dtype)
    return h_new, h_new


STEPS: dict[str, Step] = {
    "RNN_TANH": rnn_tanh_step,
    "RNN_RELU": rnn_relu_step,
    "LSTM": lstm_step,
    "GRU": gru_step,
}
GATES: dict[str, int] = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}


def _full(step: Step) -> Step:
    def cell(params: Params, carry: Any, x: jax.Array) -> tuple[Any, jax.Array]:
        return step(params, carry, input_projection(params, x))

    cell.__name__ = cell.__qualname__ = step.__name__.replace("_step", "_cell")
    cell.__doc__ = f"``(params, carry, x) -> (carry, y)`` form of :func:`{step.__name__}`."
    return cell


rnn_tanh_cell = _full(rnn_tanh_step)
rnn_relu_cell = _full(rnn_relu_step)
gru_cell = _full(gru_step)
lstm_cell = _full(lstm_step)
lstm_cell.__doc__ = """``(params, carry, x) -> (carry, y)`` form of :func:`lstm_step`: one LSTM step.

Arguments:
    params: ``weight_ih`` ``(4H, I)``, ``weight_hh`` ``(4H, H_out)`` and optionally ``bias_ih``,
        ``bias_hh`` ``(4H,)`` and ``weight_hr`` ``(H_out, H)``: torch's names without ``_l0``.
    carry: ``(h, c)``, shapes ``(..., H_out)`` and ``(..., H)``.
    x: ``(..., I)``.

Returns:
    ``((h', c'), y)`` with ``y = h'``.

One step, then the whole sequence with ``jax.lax.scan`` (time on the leading axis):

>>> import jax, jax.numpy as jnp
>>> from rnnjax import cells
>>> k = jax.random.split(jax.random.key(0), 2)
>>> params = {"weight_ih": jax.random.normal(k[0], (4 * 3, 2)),
...           "weight_hh": jax.random.normal(k[1], (4 * 3, 3))}
>>> carry = (jnp.zeros((5, 3)), jnp.zeros((5, 3)))      # (h, c) for a batch of 5
>>> (h, c), y = cells.lstm_cell(params, carry, jnp.ones((5, 2)))
>>> y.shape
(5, 3)
>>> xs = jnp.ones((7, 5, 2))                               # (L, N, H_in)
>>> (h_n, c_n), ys = jax.lax.scan(lambda carry, x: cells.lstm_cell(params, carry, x), carry, xs)
>>> ys.shape, h_n.shape
((7, 5, 3), (5, 3))
"""
