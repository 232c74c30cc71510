"""Every limit a checkpoint and recipe can hit, checked before any compilation.

The kernels rely on these shapes; this module is where a user hears about them, in one
AirError line naming the checkpoint or recipe and what to change.
"""

from __future__ import annotations

from air.errors import AirError

from .kernels.kv_codecs import DOT_LANES
from .kernels.layout import BLOCK, SCHEMES
from .spec import DecoderSpec


def check_model(source: str, spec: DecoderSpec, scheme: str) -> None:
    """The checkpoint's shapes against the weight format and the KV-cache kernels."""
    if scheme in SCHEMES:
        widths = {"hidden_size": spec.hidden_size, "intermediate_size": spec.intermediate_size,
                  "num_heads * head_dim": spec.num_heads * spec.head_dim}
        odd = [f"{name} {value}" for name, value in widths.items() if value % BLOCK]
        if odd:
            raise AirError(f"{source}: {scheme} needs layer widths that are multiples of {BLOCK} "
                           f"({', '.join(odd)}); use --quantization f16 or f32")
    # The attention kernels keep DOT_LANES partial sums per half of a rotated head.
    if spec.head_dim % (2 * DOT_LANES):
        raise AirError(f"{source}: head_dim {spec.head_dim} is not supported by the KV-cache kernels "
                       f"(a multiple of {2 * DOT_LANES} is needed)")


def check_kv_cache(recipe_name: str, context: int, sinks: int, window: int) -> None:
    """A windowed cache's kept positions must fit in the context."""
    if window and window + sinks > context:
        raise AirError(f"recipe {recipe_name}: kv_cache window {window} + sinks {sinks} exceed the context of {context}")


def check_rope_switch(source: str, spec: DecoderSpec, window: int) -> None:
    """Longrope recomputes the cache from its tokens at its switch: a windowed cache has dropped them."""
    if window and spec.rope_scaling and spec.rope_scaling["rope_type"] == "longrope":
        raise AirError(f"{source}: longrope models need the whole context in the KV cache; "
                       "a windowed cache (kv_window) is not supported for them")
