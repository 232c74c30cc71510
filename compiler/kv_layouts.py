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

Per-layer groups: a layout is the cache of a set of layers; `groups()` splits the recipe's
layout by what each layer keeps. Gemma 3's sliding layers attend to their last sliding_window
positions only: a windowed group without sinks is exactly that (keys and queries rotated at
their true positions), so they keep a ring of their window whatever the context; the full
layers keep what the recipe asks (every position, or sinks + window).
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
    layers: tuple[int, ...] | None = None  # the model layers whose cache this is (None: every layer)
    name: str = "cache"  # its tensors: <name>_data and <name>_scales

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
    def members(self) -> tuple[int, ...]:
        return tuple(range(self.spec.num_layers)) if self.layers is None else self.layers

    @property
    def layer_count(self) -> int:
        return len(self.members)

    def groups(self) -> tuple["KVLayout", ...]:
        """The layers' caches in call order: this layout alone unless some layers slide (Gemma 3),
        then one group per kind of layer (merged where both keep the same)."""
        s = self.spec
        if self.layers is not None or s.layer_types is None:
            return (self,)
        sliding = tuple(i for i in range(s.num_layers) if s.sliding(i))
        full = tuple(i for i in range(s.num_layers) if not s.sliding(i))
        window = s.sliding_window if s.sliding_window < self.max_context else 0  # else nothing slides out
        if not full or not sliding or (self.sinks, self.window) == (0, window):
            return (dataclasses.replace(self, sinks=0, window=window) if not full else self,)
        local = dataclasses.replace(self, sinks=0, window=window, layers=sliding, name="local_cache")
        whole = dataclasses.replace(self, layers=full, name="global_cache")
        return tuple(sorted((local, whole), key=lambda g: g.members[0]))

    def locate(self, layer: int) -> tuple[int, int]:
        """(group, the layer's index in that group's tensors)."""
        for g, group in enumerate(self.groups()):
            if layer in group.members:
                return g, group.members.index(layer)
        raise ValueError(f"layer {layer} is in no cache group")

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
        data = ((self.layer_count, 2, s.num_kv_heads, capacity, self.packed_dim), self.storage_dtype)
        if not self.scale_count:
            return [data, ((1, 1, 1, 1, 1), "float16")]
        return [data, ((self.layer_count, 2, s.num_kv_heads, capacity, self.scale_count), "float16")]

    def _group_spec(self) -> KVGroup:
        (data_shape, data_dtype), (scales_shape, scales_dtype) = self.tensor_shapes(CAPACITY)
        return KVGroup(kind="windowed" if self.windowed else "dense", layers=self.members,
                       tensors=(CacheTensor(f"{self.name}_data", data_shape, data_dtype),
                                CacheTensor(f"{self.name}_scales", scales_shape, scales_dtype)),
                       sinks=self.sinks, window=self.window, max_append=self.slack if self.windowed else self.max_context,
                       fixed_capacity=self.fixed_capacity)

    def cache_spec(self) -> KVCacheSpec:
        """The runtime's view of this cache (the manifest's kv_cache entry): its groups."""
        groups = tuple(group._group_spec() for group in self.groups())
        return KVCacheSpec(dtype=self.dtype, max_context=self.max_context, groups=groups)
