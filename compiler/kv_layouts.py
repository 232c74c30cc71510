"""KV-cache layouts: what the cache tensors hold, their shapes, and the runtime's spec of them.

The runtime owns the cache tensors (it allocates what the manifest lists) and passes them to
every compiled call; the kernels of kernels/attention.py (`kv_append`, `kv_attention`) update
and read them in place. The layout (storage dtype, window, sinks) is chosen by the recipe and
fixed at compile time:

  f32 / f16          plain values
  int8               symmetric, one f16 scale per token and head
  int4               asymmetric, one f16 scale and f16 minimum per token and head,
                     two values per byte (low nibble first)

Quantize-on-append happens inside `kv_append` (which also applies RoPE to the keys) and
dequantization inside `kv_attention`'s loops: there is no separate pass over the cache.

Tensors: data [layers, 2 (k, v), kv_heads, capacity, packed head_dim] and, for the integer
dtypes, scales [layers, 2, kv_heads, capacity, 1 or 2] in f16. `capacity` is symbolic: the
runtime sizes the cache for each request.

Bounded memory (sinks + window, as in StreamingLLM): the first `sinks` positions stay, and a
ring of `window + slack` slots holds the most recent positions. The slack lets a call append
up to `slack` tokens (a verify pass, a prefill chunk) and roll back without losing a kept token.
"""

from __future__ import annotations

import dataclasses

from air.runtime.contract import CAPACITY, CacheTensor, KVCacheSpec, KVGroup

from .spec import DecoderSpec

_STORAGE = {"f32": "float32", "f16": "float16", "int8": "int8", "int4": "uint8"}
_SCALES = {"f32": 0, "f16": 0, "int8": 1, "int4": 2}


@dataclasses.dataclass(frozen=True)
class KVLayout:
    spec: DecoderSpec
    dtype: str  # the storage format: one of contract.KV_DTYPES
    max_context: int  # positions a request may reach when not windowed
    sinks: int = 0
    window: int = 0  # 0: keep every position
    slack: int = 64

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
        return _STORAGE[self.dtype]

    @property
    def packed_dim(self) -> int:
        return self.spec.head_dim // 2 if self.dtype == "int4" else self.spec.head_dim

    @property
    def scale_count(self) -> int:
        return _SCALES[self.dtype]

    def tensor_shapes(self, capacity) -> list[tuple[tuple, str]]:
        """(data, scales); the float dtypes have no scales and get a one-element placeholder."""
        s = self.spec
        data = ((s.num_layers, 2, s.num_kv_heads, capacity, self.packed_dim), self.storage_dtype)
        if not self.scale_count:
            return [data, ((1, 1, 1, 1, 1), "float16")]
        return [data, ((s.num_layers, 2, s.num_kv_heads, capacity, self.scale_count), "float16")]

    def cache_spec(self) -> KVCacheSpec:
        """The runtime's view of this cache (the manifest's kv_cache entry): one group, every layer."""
        (data_shape, data_dtype), (scales_shape, scales_dtype) = self.tensor_shapes(CAPACITY)
        group = KVGroup(kind="windowed" if self.windowed else "dense", layers=tuple(range(self.spec.num_layers)),
                        tensors=(CacheTensor("cache_data", data_shape, data_dtype),
                                 CacheTensor("cache_scales", scales_shape, scales_dtype)),
                        sinks=self.sinks, window=self.window, max_append=self.slack if self.windowed else self.max_context,
                        fixed_capacity=self.fixed_capacity)
        return KVCacheSpec(dtype=self.dtype, max_context=self.max_context, groups=(group,))
