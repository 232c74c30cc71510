"""The architecture of one decoder, read from a Hugging Face config.json.

Every supported family is the same decoder with a few flags; the flags live here.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from air.errors import AirError

# Architecture name -> the flags that set it apart.
FAMILIES = {
    "LlamaForCausalLM": {"qkv_bias_key": "attention_bias", "qk_norm": False},
    "MistralForCausalLM": {"qkv_bias_key": None, "qk_norm": False},
    "Qwen2ForCausalLM": {"qkv_bias_key": "always", "qk_norm": False},
    "Qwen3ForCausalLM": {"qkv_bias_key": "attention_bias", "qk_norm": True},
    # Phi-3 / Phi-4-mini: fused qkv and gate/up tensors (tensor_map.py), longrope, partial rotary
    "Phi3ForCausalLM": {"qkv_bias_key": None, "qk_norm": False, "longrope": True, "partial_rotary": True},
    "Gemma3ForCausalLM": {"qkv_bias_key": "attention_bias", "qk_norm": True},
}
SLIDING, FULL = "sliding_attention", "full_attention"  # transformers' names of the layer types


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
    sliding_window: int | None  # with layer_types: the window of the sliding layers, else of every layer
    head_rows: int | None = None  # a draft's trimmed LM head (checkpoint's head_tokens.json); None: vocab_size
    # Gemma 3's flags (the defaults are every other family's):
    activation: str = "silu"  # of the gated MLP: silu or gelu_tanh
    sandwich_norms: bool = False  # norms after attention and after the MLP too, before the residual add
    unit_offset_norms: bool = False  # every norm scales by 1 + weight (folded into the stored weights)
    embedding_scale: float | None = None  # the looked-up rows are multiplied by it
    query_pre_attn_scalar: float | None = None  # attention scores scaled by its -1/2 power (else head_dim's)
    final_logit_softcap: float | None = None  # logits = cap * tanh(logits / cap)
    layer_types: tuple[str, ...] | None = None  # per layer SLIDING or FULL; None: every layer alike
    rope_local_theta: float | None = None  # the rope base of the sliding layers (no scaling)

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

    def sliding(self, layer: int) -> bool:
        """Whether a layer attends only to its last sliding_window positions (Gemma 3's local layers)."""
        return self.layer_types is not None and self.layer_types[layer] == SLIDING


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
    if kind == "linear":
        if "factor" not in scaling:
            raise AirError(f"{source}: linear rope scaling lacks factor")
        return float(theta), {"rope_type": "linear", "factor": float(scaling["factor"])}
    if kind != "llama3":
        supported = "linear, llama3, longrope" if family.get("longrope") else "linear, llama3"
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
    extra = {}
    if arch == "Gemma3ForCausalLM":
        extra = _gemma3(config, source, hidden)
        theta, scaling = extra.pop("rope_theta"), extra.pop("rope_scaling")
    else:
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
        o_bias=arch in ("LlamaForCausalLM", "Gemma3ForCausalLM") and qkv_bias,
        mlp_bias=bool(config.get("mlp_bias", False)),
        qk_norm=family["qk_norm"],
        max_position_embeddings=int(config.get("max_position_embeddings", 2048)),
        sliding_window=int(window) if window else None,
        **extra,
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


_GEMMA3_UNSUPPORTED = {"attn_logit_softcapping": "attention logit soft-capping",
                       "use_bidirectional_attention": "bidirectional attention"}


def _gemma3(config: dict, source: str, hidden: int) -> dict:
    """Gemma 3's fields, from a config written by transformers 5 (layer_types, rope_parameters per
    layer type) or 4 (sliding_window_pattern, rope_theta and rope_local_base_freq)."""
    for key, what in _GEMMA3_UNSUPPORTED.items():
        if config.get(key):
            raise AirError(f"{source}: {what} ({key}) is not supported")
    act = config.get("hidden_activation", config.get("hidden_act", "gelu_pytorch_tanh"))
    if act not in ("gelu_pytorch_tanh", "gelu_tanh"):
        raise AirError(f"{source}: activation '{act}' is not supported (supported: gelu_pytorch_tanh)")
    layers = int(_require(config, "num_hidden_layers", source))
    pattern = int(config.get("sliding_window_pattern", config.get("_sliding_window_pattern", 6)))
    types = config.get("layer_types") or [SLIDING if (i + 1) % pattern else FULL for i in range(layers)]
    if len(types) != layers or not set(types) <= {SLIDING, FULL}:
        raise AirError(f"{source}: layer_types should name {SLIDING} or {FULL} for each of the {layers} layers")
    if SLIDING in types and not config.get("sliding_window"):
        raise AirError(f"{source}: sliding layers need a sliding_window")
    params = config.get("rope_parameters") or {}
    full = {"rope_theta": config.get("rope_theta", 1_000_000.0), "rope_scaling": config.get("rope_scaling"),
            "rope_parameters": params.get(FULL) or {}}
    theta, scaling = _rope_settings(full, FAMILIES["Gemma3ForCausalLM"], source)
    local = params.get(SLIDING) or {"rope_theta": config.get("rope_local_base_freq", 10_000.0)}
    if local.get("rope_type", "default") != "default":
        raise AirError(f"{source}: rope scaling on the sliding layers is not supported")
    cap = config.get("final_logit_softcapping")
    return {"rope_theta": theta, "rope_scaling": scaling, "activation": "gelu_tanh", "sandwich_norms": True,
            "unit_offset_norms": True, "embedding_scale": _embedding_scale(hidden, config),
            "query_pre_attn_scalar": float(config.get("query_pre_attn_scalar", 256)),
            "final_logit_softcap": float(cap) if cap else None, "layer_types": tuple(types),
            "rope_local_theta": float(local["rope_theta"])}


def _embedding_scale(hidden: int, config: dict) -> float:
    """sqrt(hidden) rounded to the checkpoint's dtype, as transformers multiplies the embedding rows."""
    scale = np.float32(hidden ** 0.5)
    dtype = config.get("dtype", config.get("torch_dtype", "float32"))
    if dtype == "float16":
        return float(np.float16(scale))
    if dtype == "bfloat16":  # round to nearest even on the upper 16 bits
        bits = int(scale.view(np.uint32))
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return float(np.uint32(bits).view(np.float32))
    return float(scale)
