"""Checkpoint tensors -> the compiled model's parameters, in its order, checked and converted.

Plain parameters (norms, biases) are the checkpoint tensor of the same name, cast to the
parameter's dtype; a layer's weight matrix becomes "<layer>.tiles" (dense formats, dense.pack)
or "<layer>.qs" and "<layer>.scales" (quantized, quant.pack), made from "<layer>.weight".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from air.errors import AirError

from . import dense, quant
from .checkpoint import Checkpoint
from .rope import inverse_frequencies

# Parameters the compiler makes itself rather than reading from the checkpoint.
DERIVED = {"rope_inv_freq": lambda ckpt: inverse_frequencies(ckpt.spec)}
PACKED = ("qs", "scales", "tiles")


def source_of(name: str) -> str:
    """The checkpoint tensor a parameter is made from."""
    layer, _, leaf = name.rpartition(".")
    return f"{layer}.weight" if leaf in PACKED else name


def _expected_shape(name: str, param, model) -> tuple[int, ...]:
    if name.rpartition(".")[2] not in PACKED:
        return tuple(int(d) for d in param.shape)
    owner = model
    for part in name.rpartition(".")[0].split("."):
        owner = owner[int(part)] if part.isdigit() else getattr(owner, part)
    return owner.rows, owner.cols


def check_tensors(ckpt: Checkpoint, named_params, model) -> None:
    """Fail before any compilation if a tensor is missing or misshaped."""
    for name, param in named_params:
        if name in DERIVED:
            continue
        source, expected = source_of(name), _expected_shape(name, param, model)
        if not ckpt.has(source):
            raise AirError(f"{ckpt.path}: missing tensor '{source}' (expected shape {expected})")
        actual = ckpt.tensor_shape(source)
        if actual != expected:
            raise AirError(f"{ckpt.path}: tensor '{source}' has shape {actual}, expected {expected}")


def write_weights(ckpt: Checkpoint, named_params, scheme: str, path: Path) -> int:
    """Write the parameters as one safetensors file; returns its payload bytes."""
    tensors, packed = {}, {}
    for name, param in named_params:
        if name in DERIVED:
            array = DERIVED[name](ckpt)
        else:
            source = ckpt.read(source_of(name))
            if not np.all(np.isfinite(source)):
                raise AirError(f"{ckpt.path}: tensor '{source_of(name)}' contains NaN or infinity")
            if name.rpartition(".")[2] in PACKED:
                if source_of(name) not in packed:
                    packed[source_of(name)] = _pack(np.asarray(source, dtype=np.float32), scheme)
                array = packed[source_of(name)][name.rpartition(".")[2]]
            else:
                array = source
        tensors[name] = np.ascontiguousarray(array, dtype=param.dtype)
    save_file(tensors, str(path))
    return sum(a.nbytes for a in tensors.values())


def _pack(weight: np.ndarray, scheme: str) -> dict[str, np.ndarray]:
    if scheme in quant.SCHEMES:
        return quant.pack(weight, scheme)
    return {"tiles": dense.pack(weight, dense.DTYPES[scheme])}
