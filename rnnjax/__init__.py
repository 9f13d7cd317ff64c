"""rnnjax: PyTorch-exact recurrent layers (RNN, LSTM, GRU) in JAX / Flax NNX."""
from rnnjax.nn import GRU, LSTM, RNN

__all__ = ["RNN", "LSTM", "GRU"]
__version__ = "0.1.0"
