"""Read a .gguf file (llama.cpp's format) into a Checkpoint with Hugging Face names.

The gguf library does the parsing, behind the bounds checks of gguf_reader.py (a GGUF is
untrusted input); the tokenizer is rebuilt by gguf_tokenizer.py. Everything else GGUF-specific
(metadata keys, tensor names, llama.cpp's q/k row order) is translated here: the rest of the
compiler sees what a Hugging Face folder gives.
"""

from __future__ import annotations

import collections
import json
import re
from pathlib import Path

import gguf
import numpy as np

from air.errors import AirError

from .checkpoint import Checkpoint
from .gguf_reader import check_tensor_data, open_gguf, read_metadata, require
from .gguf_tokenizer import gguf_tokenizer, strings, token_id, tokenizer_settings
from .spec import FULL, SLIDING, spec_from_config

# GGUF general.architecture -> the Hugging Face architecture it is read as.
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
                 "phi3": "Phi3ForCausalLM", "gemma3": "Gemma3ForCausalLM"}

# GGUF tensor name (per block: the part after "blk.N.") -> Hugging Face name.
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
# phi3 stores Phi-3's fused projections: q/k/v in one tensor, and gate/up under ffn_up.
_FUSED_BLOCK_NAMES = {**_BLOCK_NAMES, "attn_qkv": "self_attn.qkv_proj", "ffn_up": "mlp.gate_up_proj"}
# gemma3 has norms after attention and the MLP, and its ffn_norm is the one before the MLP.
_GEMMA3_BLOCK_NAMES = {**_BLOCK_NAMES, "ffn_norm": "pre_feedforward_layernorm",
                       "post_attention_norm": "post_attention_layernorm", "post_ffw_norm": "post_feedforward_layernorm"}
# phi3's longrope factors, read into the config rather than as tensors.
_ROPE_FACTORS = {"rope_factors_short.weight": "short_factor", "rope_factors_long.weight": "long_factor"}


class GGUFTensors:
    """The file's tensors under Hugging Face names, dequantized to f32 when read.

    llama.cpp's converter reorders the rows of a llama q/k projection within each head
    (for its interleaved RoPE); reading undoes that."""

    def __init__(self, reader: gguf.GGUFReader, path: Path, arch: str = "llama"):
        fused = arch == "phi3"
        block_names = _FUSED_BLOCK_NAMES if fused else _GEMMA3_BLOCK_NAMES if arch == "gemma3" else _BLOCK_NAMES
        if any(t.name == "rope_freqs.weight" for t in reader.tensors):
            raise AirError(f"{path}: GGUF rope scaling by a rope_freqs tensor is not supported yet")
        self.by_name = {}
        self.rope_factors: dict[str, list[float]] = {}  # phi3's longrope factors
        for tensor in reader.tensors:
            if fused and tensor.name in _ROPE_FACTORS:
                values = gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type).reshape(-1)
                self.rope_factors[_ROPE_FACTORS[tensor.name]] = [float(str(v)) for v in values.astype(np.float32)]
                continue
            name = _hf_name(tensor.name, block_names)
            if name is None:
                raise AirError(f"{path}: tensor '{tensor.name}' is not part of a supported decoder")
            self.by_name[name] = tensor
        self.unpermute: dict[str, int] = {}  # HF name -> heads whose rows are reordered
        # llama.cpp's gemma3 converter stores norm weights with Gemma's 1 + w folded in; read undoes it
        self.norm_offset = 1.0 if arch == "gemma3" else 0.0

    def has(self, name: str) -> bool:
        return name in self.by_name

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(d) for d in reversed(self.by_name[name].shape))

    def read(self, name: str) -> np.ndarray:
        tensor = self.by_name[name]
        array = gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type).reshape(self.shape(name))
        if self.norm_offset and name.endswith("norm.weight"):
            array = array - np.float32(self.norm_offset)
        heads = self.unpermute.get(name)
        return array if heads is None else _unpermute_rows(array, heads)

    def stored_type(self, name: str) -> str:
        return self.by_name[name].tensor_type.name

    def q4_blocks(self, name: str) -> np.ndarray:
        """A Q4_1 matrix's stored blocks [rows, K / 32, 20 bytes], rows in Hugging Face order."""
        tensor = self.by_name[name]
        if tensor.tensor_type != gguf.GGMLQuantizationType.Q4_1:
            raise ValueError(f"tensor '{name}' is stored as {tensor.tensor_type.name}, not Q4_1")
        rows, k = self.shape(name)
        blocks = np.asarray(tensor.data).reshape(rows, k // 32, 20)
        heads = self.unpermute.get(name)
        return blocks if heads is None else _unpermute_rows(blocks, heads)

    def types(self) -> dict[str, int]:
        """How many tensors the file stores in each GGML type."""
        counts = collections.Counter(t.tensor_type.name for t in self.by_name.values())
        return dict(sorted(counts.items()))


def _hf_name(gguf_name: str, block_names: dict[str, str]) -> str | None:
    match = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", gguf_name)
    if match:
        layer, part, leaf = match.groups()
        return f"model.layers.{int(layer)}.{block_names[part]}.{leaf}" if part in block_names else None
    stem, _, leaf = gguf_name.rpartition(".")
    return f"{_GLOBAL_NAMES[stem]}.{leaf}" if stem in _GLOBAL_NAMES else None


def _unpermute_rows(array: np.ndarray, heads: int) -> np.ndarray:
    """Inverse of llama.cpp's permute: rows (head, pair half, i) were stored as (head, i, pair half)."""
    rows = array.shape[0]
    return array.reshape(heads, rows // heads // 2, 2, *array.shape[1:]).swapaxes(1, 2).reshape(array.shape)


def _positive(meta: dict, key: str, path: Path, default=None) -> int:
    value = meta.get(key, default) if default is not None else require(meta, key, path)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise AirError(f"{path}: GGUF metadata '{key}' is {value!r}, expected a positive integer")
    return value


def _config(meta: dict, tensors: GGUFTensors, path: Path) -> dict:
    """The Hugging Face config.json this file's metadata describes."""
    arch = require(meta, "general.architecture", path)
    if arch not in ARCHITECTURES:
        raise AirError(f"{path}: unsupported GGUF architecture '{arch}' (supported: {', '.join(ARCHITECTURES)})")
    if f"{arch}.expert_count" in meta:
        raise AirError(f"{path}: mixture-of-experts GGUF models are not supported")
    scaling = meta.get(f"{arch}.rope.scaling.type", "none")
    if scaling != "none" and not (arch == "gemma3" and scaling == "linear"):
        raise AirError(f"{path}: GGUF rope scaling ('{scaling}') is not supported yet")
    heads = _positive(meta, f"{arch}.attention.head_count", path)
    hidden = _positive(meta, f"{arch}.embedding_length", path)
    head_dim = _positive(meta, f"{arch}.attention.key_length", path, hidden // heads or 1)
    if meta.get(f"{arch}.attention.value_length", head_dim) != head_dim:
        raise AirError(f"{path}: key and value head sizes differ, which is not supported")
    rotary_dim = _positive(meta, f"{arch}.rope.dimension_count", path, head_dim)
    if rotary_dim != head_dim and arch != "phi3":
        raise AirError(f"{path}: partial rotary embeddings (rope.dimension_count "
                       f"{meta[f'{arch}.rope.dimension_count']} of head size {head_dim}) are not supported")
    layers = _positive(meta, f"{arch}.block_count", path)
    present = {int(n.split(".")[2]) for n in tensors.by_name if n.startswith("model.layers.")}
    if present != set(range(layers)):
        raise AirError(f"{path}: metadata says {layers} layers but the file has tensors for {len(present)}")
    tokens = strings(meta, "tokenizer.ggml.tokens", path)
    vocab = _positive(meta, f"{arch}.vocab_size", path, len(tokens) or None)
    config = {
        "architectures": [ARCHITECTURES[arch]],
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": _positive(meta, f"{arch}.feed_forward_length", path),
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": _positive(meta, f"{arch}.attention.head_count_kv", path, heads),
        "head_dim": head_dim,
        "rms_norm_eps": _f32_decimal(meta, f"{arch}.attention.layer_norm_rms_epsilon", path),
        "rope_theta": _f32_decimal(meta, f"{arch}.rope.freq_base", path, 10000.0),
        "max_position_embeddings": _positive(meta, f"{arch}.context_length", path),
        "tie_word_embeddings": not tensors.has("lm_head.weight"),
        "attention_bias": tensors.has("model.layers.0.self_attn.q_proj.bias"),
        "hidden_act": "silu",
    }
    if arch == "phi3":
        config.update(_phi3_settings(meta, tensors, rotary_dim / head_dim, path))
    if arch == "gemma3":
        config.update(_gemma3_settings(meta, config, path))
    for key in ("bos_token_id", "eos_token_id"):
        if f"tokenizer.ggml.{key}" in meta:
            config[key] = token_id(meta, f"tokenizer.ggml.{key}", len(tokens), path)
    _check_against_tensors(config, tensors, path)
    return config


def _phi3_settings(meta: dict, tensors: GGUFTensors, partial_rotary_factor: float, path: Path) -> dict:
    """Partial rotary, the sliding window and longrope (its factors are tensors in the file)."""
    settings = {"partial_rotary_factor": partial_rotary_factor,
                "sliding_window": meta.get("phi3.attention.sliding_window")}
    if tensors.rope_factors:
        settings["rope_scaling"] = {"rope_type": "longrope", **tensors.rope_factors, "original_max_position_embeddings":
                                    _positive(meta, "phi3.rope.scaling.original_context_length", path)}
    return settings


def _gemma3_settings(meta: dict, config: dict, path: Path) -> dict:
    """Gemma 3's settings as llama.cpp's gemma3 loader reads them: the local rope base (10000 if
    absent), the layer pattern (one global layer in six if absent; every layer global without a
    sliding window), and queries scaled by head_dim (by hidden / heads for the 62-layer 27B)."""
    layers = config["num_hidden_layers"]
    scalar = config["hidden_size"] // config["num_attention_heads"] if layers == 62 else config["head_dim"]
    window = meta.get("gemma3.attention.sliding_window")
    settings = {"hidden_activation": "gelu_pytorch_tanh", "query_pre_attn_scalar": scalar,
                "rope_local_base_freq": _f32_decimal(meta, "gemma3.rope.freq_base_swa", path, 10000.0),
                "sliding_window": window}
    pattern = meta.get("gemma3.attention.sliding_window_pattern", 6)
    if not window:
        settings["layer_types"] = [FULL] * layers
    elif isinstance(pattern, (list, tuple)):  # one flag per layer: sliding or not
        settings["layer_types"] = [SLIDING if flag else FULL for flag in pattern]
    elif isinstance(pattern, int) and not isinstance(pattern, bool) and pattern > 0:
        settings["sliding_window_pattern"] = pattern
    else:
        raise AirError(f"{path}: GGUF metadata 'gemma3.attention.sliding_window_pattern' is {pattern!r}, "
                       "expected a positive integer or one flag per layer")
    if "gemma3.final_logit_softcapping" in meta:
        settings["final_logit_softcapping"] = _f32_decimal(meta, "gemma3.final_logit_softcapping", path)
    if meta.get("gemma3.rope.scaling.type") == "linear":
        settings["rope_scaling"] = {"rope_type": "linear",
                                    "factor": _f32_decimal(meta, "gemma3.rope.scaling.factor", path)}
    return settings


def _f32_decimal(meta: dict, key: str, path: Path, default: float | None = None) -> float:
    """A float32 from the metadata as the shortest decimal that is that float32 (1e-06, not 9.99e-07)."""
    value = meta.get(key, default) if default is not None else require(meta, key, path)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not np.isfinite(value) or value <= 0:
        raise AirError(f"{path}: GGUF metadata '{key}' is {value!r}, expected a positive number")
    return float(str(np.float32(value)))


def _check_against_tensors(config: dict, tensors: GGUFTensors, path: Path) -> None:
    """The sizes the metadata states are those of the tensors (so they are bounded by the file)."""
    up = ("model.layers.0.mlp.gate_up_proj.weight", 2) if tensors.has("model.layers.0.mlp.gate_up_proj.weight") \
        else ("model.layers.0.mlp.up_proj.weight", 1)
    expected = {"model.embed_tokens.weight": (config["vocab_size"], config["hidden_size"]),
                up[0]: (up[1] * config["intermediate_size"], config["hidden_size"])}
    for name, shape in expected.items():
        if not tensors.has(name):
            raise AirError(f"{path}: missing tensor '{name}'")
        if tensors.shape(name) != shape:
            raise AirError(f"{path}: tensor '{name}' has shape {tensors.shape(name)}, but the metadata "
                           f"describes {shape}")


def load_gguf_checkpoint(path: Path) -> Checkpoint:
    reader = open_gguf(path)
    meta = read_metadata(reader, path)
    check_tensor_data(reader, path)
    tensors = GGUFTensors(reader, path, arch=meta.get("general.architecture"))
    config = _config(meta, tensors, path)
    arch = meta["general.architecture"]
    if arch == "llama":
        tensors.unpermute = _permuted_rows(tensors, config)
    spec = spec_from_config(config, str(path))
    template = meta.get("tokenizer.chat_template")
    if template is not None and not isinstance(template, str):
        raise AirError(f"{path}: GGUF metadata 'tokenizer.chat_template' is not a string")
    tokenizer_config = tokenizer_settings(meta, config, template)
    tokenizer_files = {"tokenizer.json": gguf_tokenizer(meta, path).to_str().encode(),
                       "tokenizer_config.json": json.dumps(tokenizer_config, indent=1).encode()}
    return Checkpoint(
        path=path,
        config=config,
        spec=spec,
        tensors=tensors,
        generation_config={},
        tokenizer_config=tokenizer_config,
        tokenizer_files=tokenizer_files,
        source_files=[path],
        source_details={"format": "gguf", "gguf_architecture": arch, "tensor_types": tensors.types()},
        chat_template=template,
    )


def _permuted_rows(tensors: GGUFTensors, config: dict) -> dict[str, int]:
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    reordered = {}
    for layer in range(config["num_hidden_layers"]):
        for proj, count in (("q_proj", heads), ("k_proj", kv_heads)):
            for leaf in ("weight", "bias"):
                name = f"model.layers.{layer}.self_attn.{proj}.{leaf}"
                if tensors.has(name):
                    reordered[name] = count
    return reordered
