"""Checkpoint tensors -> the compiled model's parameters, in its order, checked and converted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from air.errors import AirError

from .checkpoint import Checkpoint
from .rope import inverse_frequencies

# Parameters the compiler makes itself rather than reading from the checkpoint.
DERIVED = {"rope_inv_freq": lambda ckpt: inverse_frequencies(ckpt.spec)}


def check_tensors(ckpt: Checkpoint, named_params) -> None:
    """Fail before any compilation if a tensor is missing or misshaped."""
    for name, param in named_params:
        if name in DERIVED:
            continue
        expected = tuple(int(d) for d in param.shape)
        if not ckpt.has(name):
            raise AirError(f"{ckpt.path}: missing tensor '{name}' (expected shape {expected})")
        actual = ckpt.tensor_shape(name)
        if actual != expected:
            raise AirError(f"{ckpt.path}: tensor '{name}' has shape {actual}, expected {expected}")


def write_weights(ckpt: Checkpoint, named_params, path: Path) -> int:
    """Write the parameters as one safetensors file; returns its payload bytes."""
    tensors = {}
    for name, param in named_params:
        array = DERIVED[name](ckpt) if name in DERIVED else ckpt.read(name)
        array = np.ascontiguousarray(array, dtype=param.dtype)
        if not np.all(np.isfinite(array)):
            raise AirError(f"{ckpt.path}: tensor '{name}' contains NaN or infinity")
        tensors[name] = array
    save_file(tensors, str(path))
    return sum(a.nbytes for a in tensors.values())
