"""KV-cache layouts: what the cache tensors hold, their shapes and their cost in bytes.

The runtime owns the cache tensors (it allocates what the manifest lists) and passes them to
every compiled call; the kernels of kernels/attention.py (`kv_append`, `kv_attention`) update
and read them in place. The layout is chosen by the recipe and fixed at compile time:

  f32 / f16          plain values
  int8               symmetric, one f16 scale per token and head
  int4               asymmetric, one f16 scale and f16 minimum per token and head,
                     two values per byte (low nibble first)

Quantize-on-append happens inside `kv_append` (which also applies RoPE to the keys) and
dequantization inside `kv_attention`'s loops: there is no separate pass over the cache.

Tensors: data [layers, 2 (k, v), kv_heads, capacity, packed head_dim] and, for the integer
kinds, scales [layers, 2, kv_heads, capacity, 1 or 2] in f16. `capacity` is symbolic: the
runtime sizes the cache for each request.

Bounded memory (sinks + window, as in StreamingLLM): the first `sinks` positions stay, and a
ring of `window + slack` slots holds the most recent positions. The slack lets a call append
up to `slack` tokens (a verify pass, a prefill chunk) and roll back without losing a kept token.
"""

from __future__ import annotations

import dataclasses

from air.errors import AirError

from .kernels.kv_codecs import DOT_LANES
from .spec import DecoderSpec

KINDS = ("f32", "f16", "int8", "int4")
_STORAGE = {"f32": "float32", "f16": "float16", "int8": "int8", "int4": "uint8"}
_ITEMSIZE = {"float32": 4, "float16": 2, "int8": 1, "uint8": 1}
_SCALES = {"f32": 0, "f16": 0, "int8": 1, "int4": 2}


@dataclasses.dataclass(frozen=True)
class KVLayout:
    spec: DecoderSpec
    kind: str
    max_context: int  # positions a request may reach when not windowed
    sinks: int = 0
    window: int = 0  # 0: keep every position
    slack: int = 64

    def __post_init__(self):
        if self.spec.head_dim % (2 * DOT_LANES):
            raise AirError(f"head_dim {self.spec.head_dim} is not supported by the KV-cache kernels "
                           f"(a multiple of {2 * DOT_LANES} is needed)")

    @property
    def windowed(self) -> bool:
        return self.window > 0

    @property
    def ring(self) -> int:
        return self.window + self.slack

    @property
    def fixed_capacity(self) -> int | None:
        return self.sinks + self.ring if self.windowed else None

    @property
    def storage_dtype(self) -> str:
        return _STORAGE[self.kind]

    @property
    def packed_dim(self) -> int:
        return self.spec.head_dim // 2 if self.kind == "int4" else self.spec.head_dim

    @property
    def scale_count(self) -> int:
        return _SCALES[self.kind]

    def tensor_shapes(self, capacity) -> list[tuple[tuple, str]]:
        """(data, scales); the float kinds have no scales and get a one-element placeholder."""
        s = self.spec
        data = ((s.num_layers, 2, s.num_kv_heads, capacity, self.packed_dim), self.storage_dtype)
        if not self.scale_count:
            return [data, ((1, 1, 1, 1, 1), "float16")]
        return [data, ((s.num_layers, 2, s.num_kv_heads, capacity, self.scale_count), "float16")]

    @property
    def bytes_per_token(self) -> int:
        s = self.spec
        per_head = self.packed_dim * _ITEMSIZE[self.storage_dtype] + self.scale_count * 2
        return s.num_layers * 2 * s.num_kv_heads * per_head

    def describe(self) -> dict:
        capacity = self.fixed_capacity or self.max_context
        return {
            "layout": "windowed" if self.windowed else "dense",
            "dtype": self.kind,
            "tensors": [{"shape": list(shape), "dtype": dtype} for shape, dtype in self.tensor_shapes("capacity")],
            "max_context": self.max_context,
            "sinks": self.sinks,
            "window": self.window,
            "fixed_capacity": self.fixed_capacity,
            "max_append": self.slack if self.windowed else self.max_context,
            "bytes_per_token": self.bytes_per_token,
            "max_bytes": self.bytes_per_token * capacity,
        }
