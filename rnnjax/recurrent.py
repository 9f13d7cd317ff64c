"""Recurrent layers over time: one direction of one layer with ``lax.scan``, then directions and stacking.

Pure functions over the flat dict of torch-named arrays (``weight_ih_l0``, ``bias_hh_l1_reverse``...).
:func:`apply` is the whole of ``torch.nn.{RNN,LSTM,GRU}.forward``: input layouts, default states,
``lengths`` (packed-sequence semantics), dropout between layers and torch's ``h_n`` ordering.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax import cells
from rnnjax.kernels import elman_direction, gru_direction, lstm_direction

MODES = tuple(cells.STEPS)


class Config(NamedTuple):
    """Static shape of a recurrent stack; hashable, so it can be a jit static argument."""

    mode: str
    input_size: int
    hidden_size: int
    num_layers: int = 1
    bias: bool = True
    batch_first: bool = False
    dropout: float = 0.0
    bidirectional: bool = False
    proj_size: int = 0

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def out_hidden(self) -> int:
        """Size of ``h`` (and of each direction's output): ``proj_size`` when projecting."""
        return self.proj_size or self.hidden_size

    @property
    def name(self) -> str:
        return "RNN" if self.mode.startswith("RNN") else self.mode


def suffix(layer: int, direction: int) -> str:
    return f"_l{layer}" + ("_reverse" if direction else "")


def param_shapes(cfg: Config) -> dict[str, tuple[int, ...]]:
    """Names and shapes exactly as ``torch.nn.<cfg.name>(...).state_dict()``, in its order."""
    gates = cells.GATES[cfg.mode] * cfg.hidden_size
    shapes = {}
    for layer in range(cfg.num_layers):
        in_size = cfg.input_size if layer == 0 else cfg.out_hidden * cfg.num_directions
        for d in range(cfg.num_directions):
            s = suffix(layer, d)
            shapes["weight_ih" + s] = (gates, in_size)
            shapes["weight_hh" + s] = (gates, cfg.out_hidden)
            if cfg.bias:
                shapes["bias_ih" + s] = (gates,)
                shapes["bias_hh" + s] = (gates,)
            if cfg.proj_size:
                shapes["weight_hr" + s] = (cfg.proj_size, cfg.hidden_size)
    return shapes


def check_size(name: str, value: Any) -> None:
    """A size argument (``input_size``, ``hidden_size``, ``num_layers``) is a positive integer."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_config(cfg: Config) -> None:
    """torch's constructor checks, with its wording."""
    if cfg.mode not in MODES:
        raise ValueError(f"Unknown mode {cfg.mode!r}; expected one of {MODES}")
    for name in ("input_size", "hidden_size", "num_layers"):
        check_size(name, getattr(cfg, name))
    if not isinstance(cfg.dropout, (int, float)) or isinstance(cfg.dropout, bool) or not 0 <= cfg.dropout < 1:
        raise ValueError(
            f"dropout should be a number in range [0, 1) representing the probability of an element "
            f"being zeroed, got {cfg.dropout!r}"
        )
    if cfg.proj_size < 0:
        raise ValueError(f"proj_size should be a non-negative integer, got {cfg.proj_size}")
    if cfg.proj_size and cfg.mode != "LSTM":
        raise ValueError(f"proj_size argument is only supported for LSTM, not {cfg.name}")
    if cfg.proj_size >= cfg.hidden_size:
        raise ValueError(
            f"proj_size has to be smaller than hidden_size, got proj_size={cfg.proj_size} "
            f"and hidden_size={cfg.hidden_size}"
        )


def layer_params(params: Mapping[str, jax.Array], layer: int, direction: int) -> dict[str, jax.Array]:
    """One direction of one layer's arrays, named without their suffix (``weight_ih``, ``bias_hh``...)."""
    s = suffix(layer, direction)
    return {k[: -len(s)]: v for k, v in params.items() if k.endswith(s)}


def scan_direction(mode: str, p: Mapping[str, jax.Array], x: jax.Array, carry: Any, *,
                   mask: jax.Array | None = None, reverse: bool = False, unroll: int = 1
                   ) -> tuple[jax.Array, Any]:
    """One direction of one layer. ``x`` is ``(T, B, I)``; ``mask`` ``(T, B)`` marks valid steps.

    Where a step is masked the carry passes through unchanged and the output is zero. That one
    rule gives packed-sequence semantics in both directions: forwards, the carry freezes after a
    sequence's last step, so it *is* ``h_n``; in reverse, it stays at ``h_0`` until the scan reaches
    the sequence's own last step, which is where torch's reverse direction starts.
    """
    step = cells.STEPS[mode]
    if "weight_hr" not in p and x.shape[0] > 1:
        # LSTM (unprojected), GRU and Elman RNN have hand-written backward passes.
        w_hh = p["weight_hh"]
        zeros = jnp.zeros(w_hh.shape[0], w_hh.dtype)
        b_ih, b_hh = (p["bias_ih"], p["bias_hh"]) if "bias_ih" in p else (zeros, zeros)
        if mode == "GRU":  # b_hn sits inside the reset gate's product: the biases stay apart
            ys, h_n = gru_direction(reverse, unroll, p["weight_ih"], w_hh, b_ih, b_hh, x, carry,
                                    mask)
            return ys, h_n
        b = b_ih + b_hh  # LSTM and Elman only ever use the two biases summed
        if mode == "LSTM":
            ys, h_n, c_n = lstm_direction(reverse, unroll, p["weight_ih"], w_hh, b, x, carry[0],
                                          carry[1], mask)
            return ys, (h_n, c_n)
        return elman_direction(mode, reverse, unroll, p["weight_ih"], w_hh, b, x, carry, mask)
    # The input projection for all steps is one large matmul; only h @ W_hh stays in the loop.
    gx = cells.input_projection(p, x)

    if x.shape[0] == 1:
        # One step (token-by-token decoding): a loop of one iteration is pure overhead inside an
        # outer decoding loop, so call the cell directly.
        new, y = step(p, carry, gx[0])
        if mask is not None:
            m = mask[0][:, None]
            new = jax.tree.map(lambda n, o: jnp.where(m, n, o), new, carry)
            y = jnp.where(m, y, jnp.zeros_like(y))
        return y[None], new
    if mask is None:
        def body(c, g):
            return step(p, c, g)

        carry, ys = jax.lax.scan(body, carry, gx, reverse=reverse, unroll=unroll)
    else:
        def body(c, inp):
            g, m = inp
            new, y = step(p, c, g)
            m = m[:, None]
            new = jax.tree.map(lambda n, o: jnp.where(m, n, o), new, c)
            return new, jnp.where(m, y, jnp.zeros_like(y))

        carry, ys = jax.lax.scan(body, carry, (gx, mask), reverse=reverse, unroll=unroll)
    return ys, carry


def check_floating(owner: str, name: str, a: jax.Array) -> None:
    """torch refuses an input or state whose dtype differs from the weights'. Here a floating dtype
    may differ (bfloat16 input is mixed precision, see `apply`), but an integer or boolean one would
    have the weights cast to it and give integer nonsense, so it is refused."""
    if not jnp.issubdtype(a.dtype, jnp.floating):
        raise ValueError(f"{owner} {name} dtype ({a.dtype}) is not a floating-point type: convert it, "
                         f"e.g. {name}.astype(jnp.float32)")


def _shape_str(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


def _check_hidden(name: str, h: jax.Array, expected: tuple[int, ...]) -> None:
    if tuple(h.shape) != tuple(expected):
        raise ValueError(f"Expected {name} size {_shape_str(expected)}, got {_shape_str(h.shape)}")


def _check_lengths(lengths: Any, batch: int, steps: int) -> jax.Array:
    lengths = jnp.asarray(lengths)
    if lengths.ndim != 1 or lengths.shape[0] != batch:
        raise ValueError(
            f"lengths must have one entry per sequence: expected shape ({batch},), "
            f"got {_shape_str(lengths.shape)}"
        )
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise ValueError(f"lengths must be integers, got dtype {lengths.dtype}")
    if not isinstance(lengths, jax.core.Tracer):  # values are only knowable outside jit
        values = np.asarray(lengths)
        bad = values[(values < 1) | (values > steps)]
        if bad.size:
            raise ValueError(
                f"lengths must lie in 1..{steps} (the sequence length), got {bad.tolist()}"
            )
    return lengths


def apply(cfg: Config, params: Mapping[str, jax.Array], x: jax.Array,
          hx: jax.Array | tuple[jax.Array, jax.Array] | None = None, *, lengths: jax.Array | None = None,
          dropout_key: jax.Array | None = None, unroll: int = 1) -> tuple[jax.Array, Any]:
    """``torch.nn.{RNN,LSTM,GRU}.forward`` on torch-named ``params``, as a pure function.

    Arguments:
        cfg: the layer's settings.
        params: arrays named and shaped as in torch's state dict, see :func:`param_shapes`.
        x: ``(T, B, I)``, ``(B, T, I)`` if ``cfg.batch_first``, or ``(T, I)`` unbatched.
        hx: ``h_0`` ``(num_layers*D, B, H_out)``, or ``(h_0, c_0)`` for an LSTM; zeros if ``None``.
        lengths: ``(B,)``: gives ``pad_packed_sequence(total_length=T)`` of the module run on
            ``pack_padded_sequence(x, lengths, enforce_sorted=False)``.
        dropout_key: turns on dropout between layers (training mode); ``None`` means evaluation.
        unroll: ``lax.scan``'s.

    Returns:
        ``(output, h_n)`` for RNN/GRU and ``(output, (h_n, c_n))`` for LSTM, shapes as torch's:
        ``output`` is ``(T, B, D*H_out)`` (``(B, T, ...)`` if batch_first, ``(T, ...)`` unbatched),
        ``h_n`` is ``(num_layers*D, B, H_out)`` whatever ``batch_first`` says.

    Precision: the layers compute in ``x``'s dtype. For bfloat16 ``x`` (mixed precision, with
    float32 weights or bfloat16 ones) every matmul takes bfloat16 operands, the weights cast to
    bfloat16, and accumulates in float32; the gate math is float32; ``output`` is bfloat16; ``h_n``
    has ``h_0``'s dtype (bfloat16 by default) and ``c_n`` ``c_0``'s (float32 by default). Gradients
    come back in each input's dtype: float32 weights get float32 gradients.

    >>> import jax, jax.numpy as jnp
    >>> from rnnjax import recurrent
    >>> cfg = recurrent.Config("GRU", input_size=3, hidden_size=4, num_layers=2)
    >>> recurrent.param_shapes(cfg)["weight_ih_l1"]
    (12, 4)
    >>> keys = jax.random.split(jax.random.key(0), 8)
    >>> params = {name: 0.1 * jax.random.normal(k, shape)
    ...           for k, (name, shape) in zip(keys, recurrent.param_shapes(cfg).items())}
    >>> output, h_n = recurrent.apply(cfg, params, jnp.ones((6, 2, 3)))
    >>> output.shape, h_n.shape
    ((6, 2, 4), (2, 2, 4))
    >>> output, h_n = jax.jit(recurrent.apply, static_argnums=0)(cfg, params, jnp.ones((6, 2, 3)))
    >>> output.shape
    (6, 2, 4)
    """
    x = jnp.asarray(x)
    check_floating(cfg.name, "input", x)
    if x.ndim not in (2, 3):
        raise ValueError(f"{cfg.name}: Expected input to be 2D or 3D, got {x.ndim}D instead")
    if x.shape[-1] != cfg.input_size:
        raise ValueError(
            f"input.size(-1) must be equal to input_size. Expected {cfg.input_size}, got {x.shape[-1]}"
        )
    batched = x.ndim == 3
    if not batched:
        x = x[:, None, :]
    elif cfg.batch_first:
        x = jnp.swapaxes(x, 0, 1)
    steps, batch = x.shape[0], x.shape[1]
    if steps == 0:
        raise ValueError("Expected sequence length to be larger than 0 in RNN: the input has 0 time steps")
    nd = cfg.num_layers * cfg.num_directions
    is_lstm = cfg.mode == "LSTM"

    h_shape = (nd, batch, cfg.out_hidden)
    c_shape = (nd, batch, cfg.hidden_size)
    if hx is None:
        h0 = jnp.zeros(h_shape, x.dtype)
        # The cell state accumulates over steps: below float32 (mixed precision) it stays float32.
        c0 = jnp.zeros(c_shape, jnp.promote_types(x.dtype, jnp.float32)) if is_lstm else None
    else:
        if is_lstm:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise ValueError("LSTM expects hx as a tuple (h_0, c_0)")
            h0, c0 = (jnp.asarray(h) for h in hx)
        else:
            if isinstance(hx, (tuple, list)):
                raise ValueError(f"{cfg.name} expects hx as a single array h_0, not a tuple")
            h0, c0 = jnp.asarray(hx), None
        for name, h in (("hx[0]" if is_lstm else "hx", h0), ("hx[1]", c0)):
            if h is not None:
                check_floating(cfg.name, name, h)
        if not batched:
            for name, h in (("hx[0]" if is_lstm else "hx", h0), ("hx[1]", c0)):
                if h is not None and h.ndim != 2:
                    raise ValueError(
                        f"For unbatched 2-D input, {name} should also be 2-D but got {h.ndim}-D tensor"
                    )
            h0 = h0[:, None, :]
            c0 = None if c0 is None else c0[:, None, :]
        _check_hidden("hidden[0]" if is_lstm else "hidden", h0, h_shape)
        if is_lstm:
            _check_hidden("hidden[1]", c0, c_shape)

    mask = None
    if lengths is not None:
        lengths = _check_lengths(lengths, batch, steps)
        mask = jnp.arange(steps)[:, None] < lengths[None, :]

    h_n, c_n = [], []
    layer_in = x
    for layer in range(cfg.num_layers):
        if layer and dropout_key is not None and cfg.dropout > 0:
            dropout_key, sub = jax.random.split(dropout_key)
            keep = jax.random.bernoulli(sub, 1.0 - cfg.dropout, layer_in.shape)
            layer_in = jnp.where(keep, layer_in / (1.0 - cfg.dropout), 0).astype(layer_in.dtype)
        outs = []
        for d in range(cfg.num_directions):
            i = layer * cfg.num_directions + d
            carry = (h0[i], c0[i]) if is_lstm else h0[i]
            p = layer_params(params, layer, d)
            ys, carry = scan_direction(cfg.mode, p, layer_in, carry, mask=mask, reverse=bool(d), unroll=unroll)
            outs.append(ys)
            if is_lstm:
                h_n.append(carry[0])
                c_n.append(carry[1])
            else:
                h_n.append(carry)
        layer_in = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=-1)

    output = layer_in
    h_n = jnp.stack(h_n)
    c_n = jnp.stack(c_n) if is_lstm else None
    if not batched:
        output, h_n = output[:, 0], h_n[:, 0]
        c_n = None if c_n is None else c_n[:, 0]
    elif cfg.batch_first:
        output = jnp.swapaxes(output, 0, 1)
    return (output, (h_n, c_n)) if is_lstm else (output, h_n)
