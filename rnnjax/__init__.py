"""rnnjax: PyTorch-exact recurrent layers (RNN, LSTM, GRU) in JAX / Flax NNX."""
from rnnjax.nn import GRU, LSTM, RNN
from rnnjax.model import PoetryModel

__all__ = ["RNN", "LSTM", "GRU", "PoetryModel"]
__version__ = "0.1.0"
