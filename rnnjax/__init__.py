"""rnnjax: PyTorch-exact recurrent layers (RNN, LSTM, GRU) and cells (RNNCell, LSTMCell, GRUCell) in
JAX / Flax NNX.

The library is this package minus :mod:`rnnjax.poetry`, the Tang-poetry app built on it. Imports go
one way: the app imports the library, never the reverse, so ``import rnnjax`` pulls in JAX and Flax
only (no optax, orbax, OpenCC, matplotlib...).
"""
from rnnjax import cells, recurrent
from rnnjax.nn import GRU, LSTM, RNN
from rnnjax.nn_cells import GRUCell, LSTMCell, RNNCell

__all__ = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "cells", "recurrent"]
__version__ = "0.1.0"
