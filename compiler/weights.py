"""Checkpoint tensors -> the compiled model's parameters, in its order, checked and converted.

Plain parameters (norms, biases) are the checkpoint tensor of the same name, cast to the
parameter's dtype; a layer's weight matrix becomes "<layer>.tiles" (dense formats, packing.pack_dense)
or "<layer>.qs" and "<layer>.scales" (quantized, packing.pack), made from "<layer>.weight".
A fused layer (q/k/v as "qkv_proj", gate/up as "gate_up_proj") is made from its parts'
tensors stacked along the output rows, weights and biases alike.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from air.errors import AirError

from .kernels import packing
from .kernels.layout import SCHEMES
from .checkpoint import Checkpoint
from .rope import inverse_frequencies

# Parameters the compiler makes itself rather than reading from the checkpoint.
DERIVED = {"rope_inv_freq": lambda ckpt: inverse_frequencies(ckpt.spec)}
PACKED = ("qs", "scales", "tiles")


def sources_of(name: str, param, model) -> list[tuple[str, tuple[int, ...]]]:
    """The checkpoint tensors a parameter is made from, each with the shape it must have.

    One tensor: the parameter's own name, or "<layer>.weight" for a packed matrix. A fused
    layer (a Linear with `parts`, e.g. q/k/v) stacks its parts' tensors along the output rows."""
    layer, _, leaf = name.rpartition(".")
    packed = leaf in PACKED
    source_leaf = "weight" if packed else leaf
    owner = _module(model, layer)
    parts = getattr(owner, "parts", None)
    if not parts:
        return [(f"{layer}.{source_leaf}", (owner.rows, owner.cols) if packed else tuple(int(d) for d in param.shape))]
    parent = layer.rpartition(".")[0]
    return [(f"{parent}.{part}.{source_leaf}", (rows, owner.cols) if packed else (rows,)) for part, rows in parts]


def _module(model, path: str):
    owner = model
    for part in path.split(".") if path else []:
        owner = owner[int(part)] if part.isdigit() else getattr(owner, part)
    return owner


def check_tensors(ckpt: Checkpoint, named_params, model) -> None:
    """Fail before any compilation if a tensor is missing or misshaped."""
    for name, param in named_params:
        if name in DERIVED:
            continue
        for source, expected in sources_of(name, param, model):
            if not ckpt.has(source):
                raise AirError(f"{ckpt.path}: missing tensor '{source}' (expected shape {expected})")
            actual = ckpt.tensor_shape(source)
            if actual != expected:
                raise AirError(f"{ckpt.path}: tensor '{source}' has shape {actual}, expected {expected}")


def write_weights(ckpt: Checkpoint, named_params, model, scheme: str, path: Path) -> int:
    """Write the parameters as one safetensors file; returns its payload bytes."""
    tensors, packed = {}, {}
    for name, param in named_params:
        if name in DERIVED:
            array = DERIVED[name](ckpt)
        else:
            layer, _, leaf = name.rpartition(".")
            sources = [source for source, _ in sources_of(name, param, model)]
            if leaf in PACKED:
                if layer not in packed:
                    packed[layer] = _pack(_read(ckpt, sources, np.float32), scheme)
                array = packed[layer][leaf]
            else:
                array = _read(ckpt, sources, None)
        tensors[name] = np.ascontiguousarray(array, dtype=param.dtype)
    save_file(tensors, str(path))
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
