"""Write a GGUF file from a tiny Hugging Face checkpoint the way llama.cpp's converter does
(its tensor names, metadata keys and q/k row order), to test the loader against its source."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import load_file

ARCH = {"LlamaForCausalLM": gguf.MODEL_ARCH.LLAMA, "Qwen2ForCausalLM": gguf.MODEL_ARCH.QWEN2,
        "Qwen3ForCausalLM": gguf.MODEL_ARCH.QWEN3, "Phi3ForCausalLM": gguf.MODEL_ARCH.PHI3}


def permute(rows: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's order for a llama q/k projection: (head, half, i) -> (head, i, half)."""
    return rows.reshape(heads, 2, rows.shape[0] // heads // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def write_gguf(folder: Path, path: Path, qtype: str = "F32", pre: str = "default") -> Path:
    """The checkpoint in `folder` as a GGUF at `path`; 2-D weights in `qtype` (F32, F16, Q8_0, Q4_1, ...)."""
    config = json.loads((folder / "config.json").read_text())
    model_arch = ARCH[config["architectures"][0]]
    arch = gguf.MODEL_ARCH_NAMES[model_arch]
    names = gguf.get_tensor_name_map(model_arch, config["num_hidden_layers"])  # llama.cpp's converter's names
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    rope = config.get("rope_parameters", {})
    writer.add_rope_dimension_count(int(head_dim * rope.get("partial_rotary_factor", 1.0)))
    if rope.get("rope_type") == "longrope":  # as llama.cpp's phi3 converter: the factors as tensors
        writer.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
        for kind in ("long", "short"):
            writer.add_tensor(f"rope_factors_{kind}.weight", np.array(rope[f"{kind}_factor"], dtype=np.float32))
    writer.add_rope_freq_base(float(config.get("rope_theta") or config.get("rope_parameters", {})["rope_theta"]))
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_vocab_size(config["vocab_size"])
    _add_tokenizer(writer, folder, pre)
    for name, array in load_file(folder / "model.safetensors").items():
        array = array.astype(np.float32)
        if arch == "llama" and (".q_proj." in name or ".k_proj." in name):
            array = permute(array, heads if ".q_proj." in name else kv_heads)
        if array.ndim == 2 and qtype != "F32":
            kind = gguf.GGMLQuantizationType[qtype]
            array = array.astype(np.float16) if qtype == "F16" else gguf.quants.quantize(array, kind)
            writer.add_tensor(names.get_name(name, try_suffixes=(".weight", ".bias")), array, raw_dtype=kind)
        else:
            writer.add_tensor(names.get_name(name, try_suffixes=(".weight", ".bias")), array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _add_tokenizer(writer: gguf.GGUFWriter, folder: Path, pre: str) -> None:
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    added = {t["id"]: t for t in tokenizer["added_tokens"]}
    tokens = [None] * (max(list(vocab.values()) + list(added)) + 1)
    for token, index in vocab.items():
        tokens[index] = token
    for index, token in added.items():
        tokens[index] = token["content"]
    types = [(3 if added[i]["special"] else 4) if i in added else 1 for i in range(len(tokens))]
    merges = [" ".join(m) if isinstance(m, list) else m for m in tokenizer["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)
    writer.add_add_bos_token(False)
    writer.add_chat_template("{% for m in messages %}<|bos|>{{ m['role'] }}\n{{ m['content'] }}<|eos|>{% endfor %}")
