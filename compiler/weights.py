"""Checkpoint tensors -> the compiled model's parameters, in its order, checked and converted.

tensor_map.py says which checkpoint tensors each parameter is made from. A vector (norm,
bias) is its sources stacked and cast to the parameter's dtype; a matrix becomes the
layer's "tiles" (dense formats, packing.pack_dense) or "qs" and "scales" (quantized, packing.pack).
A q4 matrix stored as GGUF Q4_1 blocks (our q4 blocks exactly) keeps its stored values
(packing.pack_q4_blocks) instead of being dequantized and quantized again.
"""

from __future__ import annotations

import dataclasses
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
HEAD_LAYERS = ("model.embed_tokens", "lm_head")  # stored in the recipe's head format
FLOAT_TYPES = ("F32", "F16", "BF16")  # stored types (safetensors and GGUF spell them alike) that are not blocks


@dataclasses.dataclass
class WrittenWeights:
    payload_bytes: int
    kept: list[str]  # source matrices whose stored Q4_1 blocks are the q4 weights as they are
    requantized: list[str]  # source matrices stored in blocks, dequantized and stored in the format again


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


def write_weights(ckpt: Checkpoint, named_params, mapping: TensorMap, schemes: tuple[str, str], path: Path,
                  extra: dict[str, np.ndarray] | None = None) -> WrittenWeights:
    """Write the parameters (and `extra` tensors the runtime swaps in) as one safetensors file;
    says its payload bytes and which stored blocks were kept. schemes: the layers' format and
    the token table's and LM head's."""
    tensors, packed = dict(extra or {}), {}
    written = WrittenWeights(0, [], [])
    for name, param in named_params:
        if name in DERIVED:
            array = DERIVED[name](ckpt)
        else:
            layer, _, leaf = name.rpartition(".")
            sources = [source for source, _ in _sources(mapping, name)]
            if leaf in PACKED:
                if layer not in packed:
                    scheme = schemes[1] if layer in HEAD_LAYERS else schemes[0]
                    packed[layer] = _pack_matrix(ckpt, layer, sources, scheme, written)
                array = packed[layer][leaf]
            elif name in mapping.unit_offset:
                array = _read(ckpt, sources, np.float32) + np.float32(1)
            else:
                array = _read(ckpt, sources, None)
        tensors[name] = np.ascontiguousarray(array, dtype=param.dtype)
    write_aligned(path, save(tensors))
    written.payload_bytes = sum(a.nbytes for a in tensors.values())
    return written


def _pack_matrix(ckpt: Checkpoint, layer: str, sources: list[str], scheme: str,
                 written: WrittenWeights) -> dict[str, np.ndarray]:
    """The sources' rows stacked in the format: as stored when every source is Q4_1 and the format q4."""
    stored = [ckpt.tensors.stored_type(source) for source in sources]
    if scheme == "q4" and all(kind == "Q4_1" for kind in stored):
        written.kept += sources
        blocks = np.concatenate([_q4_blocks(ckpt, source) for source in sources])
        return packing.pack_q4_blocks(_kept_rows(ckpt, layer, blocks))
    written.requantized += [source for source, kind in zip(sources, stored) if kind not in FLOAT_TYPES]
    return _pack(_kept_rows(ckpt, layer, _read(ckpt, sources, np.float32)), scheme)


def _q4_blocks(ckpt: Checkpoint, source: str) -> np.ndarray:
    blocks = ckpt.tensors.q4_blocks(source)
    if not np.all(np.isfinite(np.ascontiguousarray(blocks[..., :4]).view(np.float16))):
        raise AirError(f"{ckpt.path}: tensor '{source}' contains NaN or infinity")
    return blocks


def _read(ckpt: Checkpoint, sources: list[str], dtype) -> np.ndarray:
    """The named tensors, checked finite, stacked along their first axis."""
    arrays = []
    for source in sources:
        array = ckpt.read(source)
        if not np.all(np.isfinite(array)):
            raise AirError(f"{ckpt.path}: tensor '{source}' contains NaN or infinity")
        arrays.append(np.asarray(array, dtype=dtype))
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)


def _kept_rows(ckpt: Checkpoint, layer: str, weight: np.ndarray) -> np.ndarray:
    """A trimmed head keeps only its rows of lm_head.weight, in head_tokens order."""
    if layer == "lm_head" and ckpt.head_tokens is not None:
        return weight[ckpt.head_tokens]
    return weight


def _pack(weight: np.ndarray, scheme: str) -> dict[str, np.ndarray]:
    if scheme in SCHEMES:
        return packing.pack(weight, scheme)
    return {"tiles": packing.pack_dense(weight, packing.DENSE_DTYPES[scheme])}
