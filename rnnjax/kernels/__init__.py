"""Hand-written forward/backward kernels: one direction of one layer, as a ``jax.custom_vjp``.

``lstm``, ``gru`` and ``elman`` share one anatomy (``_forward(save=)``, ``*_direction``, ``_fwd``,
``_bwd``) and the helpers of :mod:`rnnjax.kernels.common`; :mod:`rnnjax.recurrent` picks one per layer.
"""
from rnnjax.kernels.elman import elman_direction
from rnnjax.kernels.gru import gru_direction
from rnnjax.kernels.lstm import lstm_direction

__all__ = ["lstm_direction", "gru_direction", "elman_direction"]
