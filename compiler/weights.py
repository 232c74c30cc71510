"""Checkpoint tensors -> the compiled model's parameters, in its order, checked and converted.

tensor_map.py says which checkpoint tensors each parameter is made from. A vector (norm,
bias) is its sources stacked and cast to the parameter's dtype; a matrix becomes the
layer's "tiles" (dense formats, packing.pack_dense) or "qs" and "scales" (quantized, packing.pack).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import save

from air.errors import AirError
from air.runtime.tensor_file import write_aligned

from .kernels import packing
from .kernels.layout import SCHEMES
from .checkpoint import Checkpoint
from .rope import inverse_frequencies
from .tensor_map import Sources, TensorMap

# Parameters the compiler makes itself rather than reading from the checkpoint.
DERIVED = {"rope_inv_freq": lambda ckpt: inverse_frequencies(ckpt.spec),
           "rope_local_inv_freq": lambda ckpt: inverse_frequencies(ckpt.spec, sliding=True)}
PACKED = ("qs", "scales", "tiles")


def check_tensors(ckpt: Checkpoint, mapping: TensorMap) -> None:
    """Fail before any compilation if a tensor is missing or misshaped."""
    for source, expected in mapping.all_sources():
        if not ckpt.has(source):
            raise AirError(f"{ckpt.path}: missing tensor '{source}' (expected shape {expected})")
        actual = ckpt.tensor_shape(source)
        if actual != expected:
            raise AirError(f"{ckpt.path}: tensor '{source}' has shape {actual}, expected {expected}")


def _sources(mapping: TensorMap, name: str) -> Sources:
    layer, _, leaf = name.rpartition(".")
    sources = mapping.matrices.get(layer) if leaf in PACKED else mapping.vectors.get(name)
    if sources is None:
        raise RuntimeError(f"tensor_map.py maps no checkpoint tensors to parameter '{name}'")
    return sources


def write_weights(ckpt: Checkpoint, named_params, mapping: TensorMap, scheme: str, path: Path) -> int:
    """Write the parameters as one safetensors file; returns its payload bytes."""
    tensors, packed = {}, {}
    for name, param in named_params:
        if name in DERIVED:
            array = DERIVED[name](ckpt)
        else:
            layer, _, leaf = name.rpartition(".")
            sources = [source for source, _ in _sources(mapping, name)]
            if leaf in PACKED:
                if layer not in packed:
                    packed[layer] = _pack(_read(ckpt, sources, np.float32), scheme)
                array = packed[layer][leaf]
            elif name in mapping.unit_offset:
                array = _read(ckpt, sources, np.float32) + np.float32(1)
            else:
                array = _read(ckpt, sources, None)
        tensors[name] = np.ascontiguousarray(array, dtype=param.dtype)
    write_aligned(path, save(tensors))
    return sum(a.nbytes for a in tensors.values())


def _read(ckpt: Checkpoint, sources: list[str], dtype) -> np.ndarray:
    """The named tensors, checked finite, stacked along their first axis."""
    arrays = []
    for source in sources:
        array = ckpt.read(source)
        if not np.all(np.isfinite(array)):
            raise AirError(f"{ckpt.path}: tensor '{source}' contains NaN or infinity")
        arrays.append(np.asarray(array, dtype=dtype))
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)


def _pack(weight: np.ndarray, scheme: str) -> dict[str, np.ndarray]:
    if scheme in SCHEMES:
        return packing.pack(weight, scheme)
    return {"tiles": packing.pack_dense(weight, packing.DENSE_DTYPES[scheme])}
