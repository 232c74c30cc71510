"""The architecture of one decoder, read from a Hugging Face config.json.

Every supported family is the same decoder with a few flags; the flags live here.
"""

from __future__ import annotations

import dataclasses
import math

from air.errors import AirError

# Architecture name -> the flags that set it apart.
FAMILIES = {
    "LlamaForCausalLM": {"qkv_bias_key": "attention_bias", "qk_norm": False},
    "MistralForCausalLM": {"qkv_bias_key": None, "qk_norm": False},
    "Qwen2ForCausalLM": {"qkv_bias_key": "always", "qk_norm": False},
    "Qwen3ForCausalLM": {"qkv_bias_key": "attention_bias", "qk_norm": True},
    # Phi-3 / Phi-4-mini: fused qkv and gate/up tensors (tensor_map.py), longrope, partial rotary
    "Phi3ForCausalLM": {"qkv_bias_key": None, "qk_norm": False, "longrope": True, "partial_rotary": True},
}


@dataclasses.dataclass(frozen=True)
class DecoderSpec:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None
    partial_rotary_factor: float  # RoPE turns the first rotary_dim dimensions of each head (Phi-4-mini: 0.75)
    tie_word_embeddings: bool
    qkv_bias: bool  # bias on the q, k and v projections
    o_bias: bool  # bias on the output projection (Llama's attention_bias)
    mlp_bias: bool
    qk_norm: bool  # RMSNorm over head_dim on q and k before RoPE (Qwen3)
    max_position_embeddings: int
    sliding_window: int | None
    head_rows: int | None = None  # a draft's trimmed LM head (checkpoint's head_tokens.json); None: vocab_size

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def logit_rows(self) -> int:
        """Rows of the LM head: one per logit the compiled functions return."""
        return self.head_rows or self.vocab_size

    @property
    def kv_width(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)


def _require(config: dict, key: str, source: str):
    if key not in config:
        raise AirError(f"{source}: config.json lacks required key '{key}'")
    return config[key]


def _rope_settings(config: dict, family: dict, source: str) -> tuple[float, dict | None]:
    """rope_theta and scaling; transformers 5 nests both under rope_parameters."""
    params = config.get("rope_parameters") or {}
    theta = params.get("rope_theta", config.get("rope_theta", 10000.0))
    scaling = config.get("rope_scaling") or None
    if scaling is None and params.get("rope_type", "default") != "default":
        scaling = params
    if scaling is None:
        return float(theta), None
    kind = scaling.get("rope_type", scaling.get("type"))
    if family.get("longrope") and kind in ("su", "yarn"):  # Phi-3's older names for longrope
        kind = "longrope"
    if kind in (None, "default"):
        return float(theta), None
    if kind == "longrope" and family.get("longrope"):
        return float(theta), _longrope(config, scaling, source)
    if kind != "llama3":
        supported = "llama3, longrope" if family.get("longrope") else "llama3"
        raise AirError(f"{source}: rope scaling of type '{kind}' is not supported (supported: {supported})")
    keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    missing = [k for k in keys if k not in scaling]
    if missing:
        raise AirError(f"{source}: llama3 rope scaling lacks {', '.join(missing)}")
    return float(theta), {"rope_type": "llama3", **{k: scaling[k] for k in keys}}


def _longrope(config: dict, scaling: dict, source: str) -> dict:
    """Per-pair short and long factors, the length they switch at, and the attention factor
    (transformers' default: sqrt(1 + ln(factor) / ln(original length)), factor = max / original)."""
    original = scaling.get("original_max_position_embeddings", config.get("original_max_position_embeddings"))
    if not isinstance(original, int) or original <= 0:
        raise AirError(f"{source}: longrope scaling needs a positive original_max_position_embeddings")
    factors = {}
    for key in ("short_factor", "long_factor"):
        values = scaling.get(key)
        if not isinstance(values, list) or not all(isinstance(v, (int, float)) for v in values):
            raise AirError(f"{source}: longrope scaling lacks a list of numbers '{key}'")
        factors[key] = [float(v) for v in values]
    factor = scaling.get("factor") or config.get("max_position_embeddings", original) / original
    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        attention_factor = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    return {"rope_type": "longrope", **factors, "original_max_position_embeddings": original,
            "attention_factor": float(attention_factor)}


def _partial_rotary_factor(config: dict, family: dict, source: str) -> float:
    params = config.get("rope_parameters") or {}
    factor = params.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))
    if not isinstance(factor, (int, float)) or not 0 < factor <= 1:
        raise AirError(f"{source}: partial_rotary_factor {factor!r} should be a number in (0, 1]")
    if factor != 1.0 and not family.get("partial_rotary"):
        raise AirError(f"{source}: partial_rotary_factor {factor} is not supported for this architecture")
    return float(factor)


def spec_from_config(config: dict, source: str) -> DecoderSpec:
    architectures = config.get("architectures") or []
    arch = architectures[0] if architectures else None
    if arch not in FAMILIES:
        supported = ", ".join(sorted(FAMILIES))
        raise AirError(f"{source}: unsupported architecture '{arch}' (supported: {supported})")
    family = FAMILIES[arch]
    hidden = int(_require(config, "hidden_size", source))
    heads = int(_require(config, "num_attention_heads", source))
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    if heads % kv_heads:
        raise AirError(f"{source}: {heads} attention heads are not a multiple of {kv_heads} key/value heads")
    bias_key = family["qkv_bias_key"]
    qkv_bias = bias_key == "always" or bool(bias_key and config.get(bias_key, False))
    theta, scaling = _rope_settings(config, family, source)
    act = config.get("hidden_act", "silu")
    if act != "silu":
        raise AirError(f"{source}: activation '{act}' is not supported (supported: silu)")
    window = config.get("sliding_window") if config.get("use_sliding_window", True) else None
    spec = DecoderSpec(
        architecture=arch,
        vocab_size=int(_require(config, "vocab_size", source)),
        hidden_size=hidden,
        intermediate_size=int(_require(config, "intermediate_size", source)),
        num_layers=int(_require(config, "num_hidden_layers", source)),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=scaling,
        partial_rotary_factor=_partial_rotary_factor(config, family, source),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        qkv_bias=qkv_bias,
        o_bias=arch == "LlamaForCausalLM" and qkv_bias,
        mlp_bias=bool(config.get("mlp_bias", False)),
        qk_norm=family["qk_norm"],
        max_position_embeddings=int(config.get("max_position_embeddings", 2048)),
        sliding_window=int(window) if window else None,
    )
    _check_rotary(spec, source)
    return spec


def _check_rotary(spec: DecoderSpec, source: str) -> None:
    pairs = spec.rotary_dim // 2
    if pairs == 0 or spec.rotary_dim % 2:
        raise AirError(f"{source}: rotary dimension {spec.rotary_dim} (head_dim {spec.head_dim} times "
                       f"partial_rotary_factor {spec.partial_rotary_factor}) should be even and positive")
    if spec.rope_scaling and spec.rope_scaling["rope_type"] == "longrope":
        for key in ("short_factor", "long_factor"):
            if len(spec.rope_scaling[key]) != pairs:
                raise AirError(f"{source}: longrope {key} has {len(spec.rope_scaling[key])} values, "
                               f"expected one per rotated pair ({pairs})")
