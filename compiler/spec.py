"""The architecture of one decoder, read from a Hugging Face config.json.

Every supported family is the same decoder with a few flags; the flags live here.
"""

from __future__ import annotations

import dataclasses

from air.errors import AirError

# Architecture name -> the flags that set it apart.
FAMILIES = {
    "LlamaForCausalLM": {"qkv_bias_key": "attention_bias", "qk_norm": False},
    "MistralForCausalLM": {"qkv_bias_key": None, "qk_norm": False},
    "Qwen2ForCausalLM": {"qkv_bias_key": "always", "qk_norm": False},
    "Qwen3ForCausalLM": {"qkv_bias_key": "attention_bias", "qk_norm": True},
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


def _require(config: dict, key: str, source: str):
    if key not in config:
        raise AirError(f"{source}: config.json lacks required key '{key}'")
    return config[key]


def _rope_settings(config: dict, source: str) -> tuple[float, dict | None]:
    """rope_theta and scaling; transformers 5 nests both under rope_parameters."""
    params = config.get("rope_parameters") or {}
    theta = params.get("rope_theta", config.get("rope_theta", 10000.0))
    scaling = config.get("rope_scaling") or None
    if scaling is None and params.get("rope_type", "default") != "default":
        scaling = params
    if scaling is not None:
        kind = scaling.get("rope_type", scaling.get("type"))
        if kind in (None, "default"):
            scaling = None
        elif kind != "llama3":
            raise AirError(f"{source}: rope scaling of type '{kind}' is not supported (supported: llama3)")
        else:
            keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
            missing = [k for k in keys if k not in scaling]
            if missing:
                raise AirError(f"{source}: llama3 rope scaling lacks {', '.join(missing)}")
            scaling = {"rope_type": "llama3", **{k: scaling[k] for k in keys}}
    return float(theta), scaling


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
    theta, scaling = _rope_settings(config, source)
    act = config.get("hidden_act", "silu")
    if act != "silu":
        raise AirError(f"{source}: activation '{act}' is not supported (supported: silu)")
    window = config.get("sliding_window") if config.get("use_sliding_window", True) else None
    return DecoderSpec(
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
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        qkv_bias=qkv_bias,
        o_bias=arch == "LlamaForCausalLM" and qkv_bias,
        mlp_bias=bool(config.get("mlp_bias", False)),
        qk_norm=family["qk_norm"],
        max_position_embeddings=int(config.get("max_position_embeddings", 2048)),
        sliding_window=int(window) if window else None,
    )
