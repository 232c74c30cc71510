"""Write a GGUF file from a tiny Hugging Face checkpoint the way llama.cpp's converter does
(its tensor names, metadata keys and q/k row order), to test the loader against its source."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import load_file

ARCH = {"LlamaForCausalLM": gguf.MODEL_ARCH.LLAMA, "Qwen2ForCausalLM": gguf.MODEL_ARCH.QWEN2,
        "Qwen3ForCausalLM": gguf.MODEL_ARCH.QWEN3, "Phi3ForCausalLM": gguf.MODEL_ARCH.PHI3,
        "Gemma3ForCausalLM": gguf.MODEL_ARCH.GEMMA3}


def permute(rows: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's order for a llama q/k projection: (head, half, i) -> (head, i, half)."""
    return rows.reshape(heads, 2, rows.shape[0] // heads // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def write_gguf(folder: Path, path: Path, qtype: str = "F32", pre: str = "default", vocab: dict | None = None,
               metadata: dict | None = None) -> Path:
    """The checkpoint in `folder` as a GGUF at `path`; 2-D weights in `qtype` (F32, F16, Q8_0, Q4_1, ...);
    the folder's byte-level BPE tokenizer, or the tokenizer metadata `vocab` (sentencepiece_vocab);
    `metadata`: more keys (_add_metadata), or None for a key the converter would write (left out)."""
    metadata = dict(metadata or {})
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
    rope = rope.get("full_attention", rope)  # gemma3: the global layers' base (the local one is 10000)
    writer.add_rope_freq_base(float(config.get("rope_theta") or rope["rope_theta"]))
    if arch == "gemma3":
        if metadata.pop("gemma3.attention.sliding_window", config["sliding_window"]) is not None:
            writer.add_sliding_window(config["sliding_window"])
        if config.get("final_logit_softcapping"):
            writer.add_final_logit_softcapping(config["final_logit_softcapping"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    _add_metadata(writer, metadata)
    writer.add_vocab_size(config["vocab_size"])
    if vocab is None:
        _add_tokenizer(writer, folder, pre)
    else:
        _add_metadata(writer, vocab)
    for name, array in load_file(folder / "model.safetensors").items():
        array = array.astype(np.float32)
        if arch == "gemma3" and name.endswith("norm.weight"):
            array = array + 1.0  # llama.cpp's gemma3 converter folds Gemma's 1 + w into the stored norm
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


# sentencepiece's piece kinds -> tokenizer.ggml.token_type (as llama.cpp's converter writes them)
_PIECE_TYPES = (("is_unknown", 2), ("is_control", 3), ("is_unused", 5), ("is_byte", 6))


def sentencepiece_vocab(processor, add_space_prefix: bool = True, user_defined: tuple[str, ...] = ()) -> dict:
    """The GGUF tokenizer metadata of a sentencepiece model (tokenizer.ggml.model "llama")."""
    count = processor.get_piece_size()
    types = []
    for i in range(count):
        kind = next((t for test, t in _PIECE_TYPES if getattr(processor, test)(i)), 1)
        types.append(4 if processor.id_to_piece(i) in user_defined else kind)
    return {"tokenizer.ggml.model": "llama",
            "tokenizer.ggml.tokens": [processor.id_to_piece(i) for i in range(count)],
            "tokenizer.ggml.scores": [float(processor.get_score(i)) for i in range(count)],
            "tokenizer.ggml.token_type": types,
            "tokenizer.ggml.bos_token_id": processor.bos_id(), "tokenizer.ggml.eos_token_id": processor.eos_id(),
            "tokenizer.ggml.unknown_token_id": processor.unk_id(),
            "tokenizer.ggml.add_space_prefix": add_space_prefix, "tokenizer.ggml.add_bos_token": True}


def _add_metadata(writer: gguf.GGUFWriter, values: dict) -> None:
    """Each key with the GGUF type of its Python value (lists: of their first item's type)."""
    for key, value in values.items():
        if isinstance(value, list):
            writer.add_array(key, value)
        elif isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        else:
            writer.add_string(key, value)
