"""The typed parts of the bundle contract: each model's KV cache and its compiled functions.

manifest.py reads every `models.<role>.kv_cache` entry through `KVCacheSpec.from_dict`, which
checks each field the runtime reads; the compiler builds the same objects
(kv_layouts.KVLayout.cache_spec) and writes them with `to_dict`.

Words: a cache's `dtype` is its storage format (f32, f16, int8, int4); a group's `kind` is
dense (every position kept) or windowed (the first `sinks` positions plus a ring of recent
ones); a group is the layers that share one kind and one set of cache tensors.
"""

from __future__ import annotations

import dataclasses
import math

from air.errors import AirError

KV_DTYPES = ("f32", "f16", "int8", "int4")
WEIGHT_FORMATS = ("f32", "f16", "q8", "q4")  # a model's "quantization" and "head_quantization"
KV_KINDS = ("dense", "windowed")
ITEMSIZE = {"float32": 4, "float16": 2, "int8": 1, "uint8": 1}
CAPACITY = "capacity"  # the symbolic dimension the runtime sizes per request
UNBOUNDED = 2**31 - 1  # positions a windowed cache can reach
CAPACITY_STEP = 256  # dense caches grow in steps of this many slots
FUNCTIONS = ("prefill", "decode", "verify")


def _field(data: dict, key: str, kind, where: str, optional: bool = False):
    if key not in data:
        raise AirError(f"manifest: {where} lacks '{key}'")
    value = data[key]
    if optional and value is None:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise AirError(f"manifest: {where}.{key} should be {kind.__name__}{' or null' if optional else ''}")
    return value


def _mapping(data, where: str) -> dict:
    if not isinstance(data, dict):
        raise AirError(f"manifest: {where} should be dict")
    return data


def _choice(data: dict, key: str, allowed, where: str) -> str:
    value = _field(data, key, str, where)
    if value not in allowed:
        raise AirError(f"manifest: {where}.{key} '{value}' is not one of {', '.join(allowed)}")
    return value


@dataclasses.dataclass(frozen=True)
class CacheTensor:
    name: str
    shape: tuple[int | str, ...]  # ints and CAPACITY
    dtype: str

    def shape_for(self, capacity: int) -> tuple[int, ...]:
        return tuple(capacity if d == CAPACITY else d for d in self.shape)

    @property
    def bytes_per_slot(self) -> int:
        """Bytes per cache slot (0 for a tensor without a capacity dimension)."""
        if CAPACITY not in self.shape:
            return 0
        return math.prod(d for d in self.shape if d != CAPACITY) * ITEMSIZE[self.dtype]

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @staticmethod
    def from_dict(data, where: str) -> "CacheTensor":
        name = _field(_mapping(data, where), "name", str, where)
        shape = _field(data, "shape", list, where)
        if not shape or not all(d == CAPACITY or (isinstance(d, int) and not isinstance(d, bool) and d > 0)
                                for d in shape):
            raise AirError(f"manifest: {where}.shape should list positive ints and '{CAPACITY}'")
        return CacheTensor(name, tuple(shape), _choice(data, "dtype", ITEMSIZE, where))


@dataclasses.dataclass(frozen=True)
class KVGroup:
    kind: str
    layers: tuple[int, ...]
    tensors: tuple[CacheTensor, ...]
    sinks: int
    window: int
    max_append: int  # tokens one call may append
    fixed_capacity: int | None  # a windowed group's slots: sinks + ring

    @property
    def windowed(self) -> bool:
        return self.kind == "windowed"

    @property
    def bytes_per_token(self) -> int:
        return sum(t.bytes_per_slot for t in self.tensors)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "layers": list(self.layers), "sinks": self.sinks, "window": self.window,
                "max_append": self.max_append, "fixed_capacity": self.fixed_capacity,
                "bytes_per_token": self.bytes_per_token, "tensors": [t.to_dict() for t in self.tensors]}

    @staticmethod
    def from_dict(data, where: str) -> "KVGroup":
        kind = _choice(_mapping(data, where), "kind", KV_KINDS, where)
        layers = _field(data, "layers", list, where)
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in layers):
            raise AirError(f"manifest: {where}.layers should list ints")
        tensors = _field(data, "tensors", list, where)
        group = KVGroup(kind=kind, layers=tuple(layers),
                        tensors=tuple(CacheTensor.from_dict(t, f"{where}.tensors[{i}]") for i, t in enumerate(tensors)),
                        sinks=_field(data, "sinks", int, where), window=_field(data, "window", int, where),
                        max_append=_field(data, "max_append", int, where),
                        fixed_capacity=_field(data, "fixed_capacity", int, where, optional=True))
        group._check(where)
        if _field(data, "bytes_per_token", int, where) != group.bytes_per_token:
            raise AirError(f"manifest: {where}.bytes_per_token {data['bytes_per_token']} disagrees with its "
                           f"tensors ({group.bytes_per_token})")
        return group

    def _check(self, where: str) -> None:
        if self.max_append < 1 or self.sinks < 0 or self.window < 0:
            raise AirError(f"manifest: {where} needs max_append >= 1 and sinks, window >= 0")
        if self.windowed:
            if self.window < 1 or not self.fixed_capacity \
                    or self.fixed_capacity < self.sinks + self.window + self.max_append:
                raise AirError(f"manifest: {where}: a windowed cache needs window >= 1 and fixed_capacity >= "
                               f"sinks + window + max_append")
        elif self.fixed_capacity is not None or self.sinks or self.window:
            raise AirError(f"manifest: {where}: a dense cache has no sinks, window or fixed_capacity")


@dataclasses.dataclass(frozen=True)
class KVCacheSpec:
    """One model's KV cache: what the runtime allocates, how far a sequence may go."""

    dtype: str
    max_context: int  # positions a request may reach in a dense group
    groups: tuple[KVGroup, ...]

    @property
    def tensors(self) -> tuple[CacheTensor, ...]:
        """Every cache tensor, in the order the compiled functions take them."""
        return tuple(t for g in self.groups for t in g.tensors)

    @property
    def max_append(self) -> int:
        return min(g.max_append for g in self.groups)

    @property
    def bytes_per_token(self) -> int:
        return sum(g.bytes_per_token for g in self.groups)

    @property
    def max_bytes(self) -> int:
        return self.bytes_for(self.max_context)

    @property
    def position_limit(self) -> int:
        """How many positions a sequence may reach (any dense group bounds it by max_context)."""
        return self.reachable(self.capacities(self.max_context))

    def capacities(self, context: int) -> tuple[int, ...]:
        """Cache slots per group for a request reaching `context` positions."""
        rounded = min(max(-(-context // CAPACITY_STEP) * CAPACITY_STEP, 1), self.max_context)
        return tuple(g.fixed_capacity if g.windowed else rounded for g in self.groups)

    def shapes(self, capacities: tuple[int, ...]) -> list[tuple[tuple[int, ...], str]]:
        """(shape, dtype) of every cache tensor, in call order, for caches of these capacities."""
        return [(t.shape_for(capacity), t.dtype) for g, capacity in zip(self.groups, capacities) for t in g.tensors]

    def reachable(self, capacities: tuple[int, ...]) -> int:
        """Positions a sequence may reach in caches of these capacities."""
        return min(UNBOUNDED if g.windowed else c for g, c in zip(self.groups, capacities))

    def bytes_for(self, context: int) -> int:
        """Cache bytes a request reaching `context` positions allocates."""
        return sum(g.bytes_per_token * c for g, c in zip(self.groups, self.capacities(context)))

    def to_dict(self) -> dict:
        return {"dtype": self.dtype, "max_context": self.max_context, "max_append": self.max_append,
                "bytes_per_token": self.bytes_per_token, "max_bytes": self.max_bytes,
                "groups": [g.to_dict() for g in self.groups]}

    @staticmethod
    def from_dict(data, where: str) -> "KVCacheSpec":
        """The typed spec of a manifest entry; raises AirError naming the first bad field."""
        dtype = _choice(_mapping(data, where), "dtype", KV_DTYPES, where)
        max_context = _field(data, "max_context", int, where)
        if max_context < 1:
            raise AirError(f"manifest: {where}.max_context should be positive")
        groups = _field(data, "groups", list, where)
        if not groups:
            raise AirError(f"manifest: {where}.groups is empty")
        spec = KVCacheSpec(dtype, max_context,
                           tuple(KVGroup.from_dict(g, f"{where}.groups[{i}]") for i, g in enumerate(groups)))
        layers = sorted(i for g in spec.groups for i in g.layers)
        if layers != list(range(len(layers))):
            raise AirError(f"manifest: {where}.groups should cover layers 0..n-1 once each")
        for key in ("max_append", "bytes_per_token", "max_bytes"):
            if _field(data, key, int, where) != getattr(spec, key):
                raise AirError(f"manifest: {where}.{key} {data[key]} disagrees with its groups ({getattr(spec, key)})")
        return spec


@dataclasses.dataclass(frozen=True)
class Argument:
    name: str
    shape: tuple[int | str, ...]
    dtype: str


_TOKENS = {"prefill": Argument("tokens", ("n",), "int32"), "decode": Argument("token", (1,), "int32"),
           "verify": Argument("tokens", ("n",), "int32")}


def function_inputs(function: str, kv: KVCacheSpec) -> tuple[Argument, ...]:
    """A compiled function's inputs before the weights: only tensors, so TVM RPC can call it.

    prefill(tokens[n], *cache tensors, start[1], *weights) -> the last position's logits [1, vocab]
    decode(token[1], ...)                                   -> logits [1, vocab]
    verify(tokens[n], ...)                                  -> every position's logits [n, vocab]
    """
    caches = tuple(Argument(t.name, t.shape, t.dtype) for t in kv.tensors)
    return (_TOKENS[function], *caches, Argument("start", (1,), "int64"))


def call_arguments(tokens, caches, start, weights) -> list:
    """The arguments of a compiled call, in function_inputs' order followed by the weights."""
    return [tokens, *caches, start, *weights]
