"""torch ``state_dict`` <-> rnnjax parameters: same names, same layouts, so a load is a strict copy.

torch itself is never imported: a tensor is recognised by its ``detach`` method, so
``import rnnjax`` works (and state dicts of plain NumPy arrays load) on a machine without torch.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np


def to_numpy(value: Any) -> np.ndarray:
    """A torch tensor (any device, with or without grad), a JAX array or an array-like -> ndarray."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def load_state_dict(variables: Mapping[str, Any], state_dict: Mapping[str, Any], *, owner: str) -> None:
    """Strictly copy ``state_dict`` into ``variables`` (name -> ``nnx.Variable``).

    Every check runs before the first assignment, so a bad state dict leaves the module as it was.
    Values are cast to each parameter's own dtype.
    """
    missing = [k for k in variables if k not in state_dict]
    unexpected = [k for k in state_dict if k not in variables]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing key(s) {missing}")
        if unexpected:
            parts.append(f"unexpected key(s) {unexpected}")
        raise ValueError(f"Error(s) in loading state_dict for {owner}: " + "; ".join(parts))
    arrays = {}
    for name, var in variables.items():
        value = to_numpy(state_dict[name])
        if value.shape != tuple(var.get_value().shape):
            raise ValueError(
                f"Error(s) in loading state_dict for {owner}: size mismatch for {name}: copying a param "
                f"with shape {tuple(value.shape)} from checkpoint, the shape in current model is "
                f"{tuple(var.get_value().shape)}"
            )
        arrays[name] = jnp.asarray(value, dtype=var.get_value().dtype)
    for name, var in variables.items():
        var.set_value(arrays[name])


def state_dict(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Parameters as a dict of NumPy arrays, keyed and shaped exactly as torch's ``state_dict``."""
    return {name: np.array(var.get_value()) for name, var in variables.items()}

