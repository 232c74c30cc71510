"""Read a .gguf file (llama.cpp's format) into a Checkpoint with Hugging Face names.

The gguf library does the parsing; a GGUF is untrusted input, so the reader below refuses
any read past the end of the file and any count the remaining bytes cannot hold before the
library acts on it, and the tensor layout is checked before any data is used. Everything
GGUF-specific (metadata keys, tensor names, llama.cpp's q/k row order, the tokenizer in the
metadata) is translated here: the rest of the compiler sees what a Hugging Face folder gives.
"""

from __future__ import annotations

import collections
import json
import re
from pathlib import Path

import gguf
import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from air.errors import AirError

from .checkpoint import Checkpoint
from .spec import spec_from_config

# GGUF general.architecture -> the Hugging Face architecture it is read as.
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}

# GGUF tensor name (per block: the part after "blk.N.") -> Hugging Face name.
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_FLOAT_TYPES = {gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.BF16}

# tokenizer.ggml.pre -> how text is split before byte-level BPE (None: GPT-2's own split).
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_PRE_TOKENIZERS = {
    "default": lambda: pre_tokenizers.ByteLevel(add_prefix_space=False),
    "gpt-2": lambda: pre_tokenizers.ByteLevel(add_prefix_space=False),
    "smollm": lambda: pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                               pre_tokenizers.ByteLevel(add_prefix_space=False)]),
    "llama-bpe": lambda: _split_then_bytes(_LLAMA3_SPLIT),
    "qwen2": lambda: _split_then_bytes(_QWEN2_SPLIT),
}
_KNOWN_TYPES = {int(t) for t in gguf.GGMLQuantizationType if t in gguf.GGML_QUANT_SIZES}
_CONTROL, _USER_DEFINED = 3, 4  # tokenizer.ggml.token_type values


class _Malformed(Exception):
    """The file's own counts or offsets point outside it."""


class _BoundedReader(gguf.GGUFReader):
    """GGUFReader that checks every count and offset against the file size before using it.

    The library builds arrays from header counts and loops over them; unchecked, an absurd
    count reads past the end or spins for hours."""

    _MIN_ITEM_BYTES = {gguf.GGUFValueType.STRING: 8, gguf.GGUFValueType.ARRAY: 12}
    _ARRAY = int(gguf.GGUFValueType.ARRAY)

    def _get(self, offset, dtype, count=1, override_order=None):
        if type(self.data) is np.memmap:
            self.data = self.data.view(np.ndarray)  # same mapping; slicing a memmap costs 4x more
        itemsize = np.dtype(dtype).itemsize
        if offset < 0 or count < 0 or offset + itemsize * int(count) > len(self.data):
            raise _Malformed(f"a read of {int(count)} x {itemsize} bytes at offset {offset} runs past "
                             f"the end of the file ({len(self.data)} bytes; truncated?)")
        return super()._get(offset, dtype, count, override_order)

    def _get_field_parts(self, orig_offs, raw_type):
        if raw_type == self._ARRAY:
            item_type, count = int(self._get(orig_offs, np.uint32)[0]), int(self._get(orig_offs + 4, np.uint64)[0])
            self._check_count(count, self._item_bytes(item_type), orig_offs + 12, "array")
        return super()._get_field_parts(orig_offs, raw_type)

    def _build_fields(self, offs, count):
        self._check_count(int(count), 8 + 4 + 1, offs, "metadata key")
        return super()._build_fields(offs, count)

    def _build_tensor_info(self, offs, count):
        self._check_count(int(count), 8 + 4 + 4 + 8, offs, "tensor")
        return super()._build_tensor_info(offs, count)

    def _get_tensor_info_field(self, orig_offs):
        field = super()._get_tensor_info_field(orig_offs)
        raw_type = int(field.parts[4][0])
        if raw_type not in _KNOWN_TYPES:
            raise _Malformed(f"tensor '{field.name}' has unknown type {raw_type}")
        return field

    def _item_bytes(self, item_type: int) -> int:
        try:
            kind = gguf.GGUFValueType(item_type)
        except ValueError:
            raise _Malformed(f"unknown metadata value type {item_type}") from None
        if kind in self._MIN_ITEM_BYTES:
            return self._MIN_ITEM_BYTES[kind]
        return np.dtype(self.gguf_scalar_to_np[kind]).itemsize

    def _check_count(self, count: int, min_bytes: int, offset: int, what: str) -> None:
        if count * min_bytes > len(self.data) - offset:
            raise _Malformed(f"{count} {what} entries cannot fit in the {len(self.data) - offset} bytes left")


def _open(path: Path) -> gguf.GGUFReader:
    if not path.is_file():
        raise AirError(f"{path}: GGUF file not found")
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:4] != b"GGUF":
        raise AirError(f"{path}: not a GGUF file (magic {head[:4]!r}, expected b'GGUF')")
    if len(head) < 8 or int.from_bytes(head[4:8], "little") not in gguf.gguf_reader.READER_SUPPORTED_VERSIONS:
        raise AirError(f"{path}: unsupported GGUF version {int.from_bytes(head[4:8], 'little')} "
                       f"(supported: {', '.join(map(str, gguf.gguf_reader.READER_SUPPORTED_VERSIONS))})")
    try:
        return _BoundedReader(path)
    except (_Malformed, ValueError, KeyError, UnicodeDecodeError, OverflowError, RecursionError) as e:
        raise AirError(f"{path}: malformed GGUF file ({e})") from None


def _metadata(reader: gguf.GGUFReader, path: Path) -> dict:
    values = {}
    for name, field in reader.fields.items():
        try:
            values[name] = field.contents()
        except (ValueError, UnicodeDecodeError, IndexError) as e:
            raise AirError(f"{path}: malformed GGUF metadata '{name}' ({e})") from None
    return values


def _check_tensor_data(reader: gguf.GGUFReader, path: Path) -> None:
    """Each tensor's data aligned, inside the file, not overlapping another, of a type we can read."""
    spans = []
    for tensor in reader.tensors:
        start = tensor.data_offset
        if (start - reader.data_offset) % reader.alignment:
            raise AirError(f"{path}: tensor '{tensor.name}' data at offset {start} is not aligned to "
                           f"{reader.alignment} bytes")
        if start + tensor.n_bytes > len(reader.data):
            raise AirError(f"{path}: tensor '{tensor.name}' runs past the end of the file (truncated?)")
        spans.append((start, start + tensor.n_bytes, tensor.name))
        _check_readable(tensor, path)
    spans.sort()
    for (_, end, first), (start, _, second) in zip(spans, spans[1:]):
        if start < end:
            raise AirError(f"{path}: tensors '{first}' and '{second}' overlap in the file")


def _check_readable(tensor, path: Path) -> None:
    qtype = tensor.tensor_type
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    if block == 1 and qtype not in _FLOAT_TYPES:
        raise AirError(f"{path}: tensor '{tensor.name}' has type {qtype.name}, not a weight type")
    try:
        gguf.quants.dequantize(np.zeros(size, np.uint8), qtype)
    except NotImplementedError:
        raise AirError(f"{path}: tensor '{tensor.name}' has type {qtype.name}, which the gguf library "
                       "cannot dequantize") from None


class GGUFTensors:
    """The file's tensors under Hugging Face names, dequantized to f32 when read.

    llama.cpp's converter reorders the rows of a llama q/k projection within each head
    (for its interleaved RoPE); reading undoes that."""

    def __init__(self, reader: gguf.GGUFReader, path: Path):
        if any(t.name == "rope_freqs.weight" for t in reader.tensors):
            raise AirError(f"{path}: GGUF rope scaling by a rope_freqs tensor is not supported yet")
        self.by_name = {}
        for tensor in reader.tensors:
            name = _hf_name(tensor.name)
            if name is None:
                raise AirError(f"{path}: tensor '{tensor.name}' is not part of a supported decoder")
            self.by_name[name] = tensor
        self.unpermute: dict[str, int] = {}  # HF name -> heads whose rows are reordered

    def has(self, name: str) -> bool:
        return name in self.by_name

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(d) for d in reversed(self.by_name[name].shape))

    def read(self, name: str) -> np.ndarray:
        tensor = self.by_name[name]
        array = gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type).reshape(self.shape(name))
        heads = self.unpermute.get(name)
        return array if heads is None else _unpermute_rows(array, heads)

    def types(self) -> dict[str, int]:
        """How many tensors the file stores in each GGML type."""
        counts = collections.Counter(t.tensor_type.name for t in self.by_name.values())
        return dict(sorted(counts.items()))


def _hf_name(gguf_name: str) -> str | None:
    match = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", gguf_name)
    if match:
        layer, part, leaf = match.groups()
        return f"model.layers.{int(layer)}.{_BLOCK_NAMES[part]}.{leaf}" if part in _BLOCK_NAMES else None
    stem, _, leaf = gguf_name.rpartition(".")
    return f"{_GLOBAL_NAMES[stem]}.{leaf}" if stem in _GLOBAL_NAMES else None


def _unpermute_rows(array: np.ndarray, heads: int) -> np.ndarray:
    """Inverse of llama.cpp's permute: rows (head, pair half, i) were stored as (head, i, pair half)."""
    rows = array.shape[0]
    return array.reshape(heads, rows // heads // 2, 2, *array.shape[1:]).swapaxes(1, 2).reshape(array.shape)


def _require(meta: dict, key: str, path: Path):
    if key not in meta:
        raise AirError(f"{path}: missing required GGUF metadata '{key}'")
    return meta[key]


def _positive(meta: dict, key: str, path: Path, default=None) -> int:
    value = meta.get(key, default) if default is not None else _require(meta, key, path)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise AirError(f"{path}: GGUF metadata '{key}' is {value!r}, expected a positive integer")
    return value


def _config(meta: dict, tensors: GGUFTensors, path: Path) -> dict:
    """The Hugging Face config.json this file's metadata describes."""
    arch = _require(meta, "general.architecture", path)
    if arch not in ARCHITECTURES:
        raise AirError(f"{path}: unsupported GGUF architecture '{arch}' (supported: {', '.join(ARCHITECTURES)})")
    if f"{arch}.expert_count" in meta:
        raise AirError(f"{path}: mixture-of-experts GGUF models are not supported")
    scaling = meta.get(f"{arch}.rope.scaling.type", "none")
    if scaling != "none":
        raise AirError(f"{path}: GGUF rope scaling ('{scaling}') is not supported yet")
    heads = _positive(meta, f"{arch}.attention.head_count", path)
    hidden = _positive(meta, f"{arch}.embedding_length", path)
    head_dim = _positive(meta, f"{arch}.attention.key_length", path, hidden // heads or 1)
    if meta.get(f"{arch}.attention.value_length", head_dim) != head_dim:
        raise AirError(f"{path}: key and value head sizes differ, which is not supported")
    if meta.get(f"{arch}.rope.dimension_count", head_dim) != head_dim:
        raise AirError(f"{path}: partial rotary embeddings (rope.dimension_count "
                       f"{meta[f'{arch}.rope.dimension_count']} of head size {head_dim}) are not supported")
    layers = _positive(meta, f"{arch}.block_count", path)
    present = {int(n.split(".")[2]) for n in tensors.by_name if n.startswith("model.layers.")}
    if present != set(range(layers)):
        raise AirError(f"{path}: metadata says {layers} layers but the file has tensors for {len(present)}")
    tokens = _strings(meta, "tokenizer.ggml.tokens", path)
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
    for key in ("bos_token_id", "eos_token_id"):
        if f"tokenizer.ggml.{key}" in meta:
            config[key] = _token_id(meta, f"tokenizer.ggml.{key}", len(tokens), path)
    _check_against_tensors(config, tensors, path)
    return config


def _f32_decimal(meta: dict, key: str, path: Path, default: float | None = None) -> float:
    """A float32 from the metadata as the shortest decimal that is that float32 (1e-06, not 9.99e-07)."""
    value = meta.get(key, default) if default is not None else _require(meta, key, path)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not np.isfinite(value) or value <= 0:
        raise AirError(f"{path}: GGUF metadata '{key}' is {value!r}, expected a positive number")
    return float(str(np.float32(value)))


def _check_against_tensors(config: dict, tensors: GGUFTensors, path: Path) -> None:
    """The sizes the metadata states are those of the tensors (so they are bounded by the file)."""
    expected = {"model.embed_tokens.weight": (config["vocab_size"], config["hidden_size"]),
                "model.layers.0.mlp.up_proj.weight": (config["intermediate_size"], config["hidden_size"])}
    for name, shape in expected.items():
        if not tensors.has(name):
            raise AirError(f"{path}: missing tensor '{name}'")
        if tensors.shape(name) != shape:
            raise AirError(f"{path}: tensor '{name}' has shape {tensors.shape(name)}, but the metadata "
                           f"describes {shape}")


def _token_id(meta: dict, key: str, vocab: int, path: Path) -> int:
    value = meta[key]
    if not isinstance(value, int) or not 0 <= value < vocab:
        raise AirError(f"{path}: GGUF metadata '{key}' is {value!r}, not a token id below {vocab}")
    return value


def _strings(meta: dict, key: str, path: Path) -> list[str]:
    values = _require(meta, key, path)
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise AirError(f"{path}: GGUF metadata '{key}' is not a list of strings")
    return values


def _split_then_bytes(pattern: str):
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def _tokenizer(meta: dict, path: Path) -> Tokenizer:
    """The byte-level BPE tokenizer the metadata describes (vocabulary, merges, special tokens)."""
    kind = _require(meta, "tokenizer.ggml.model", path)
    if kind != "gpt2":
        raise AirError(f"{path}: GGUF tokenizer model '{kind}' is not supported yet (supported: gpt2, "
                       "byte-level BPE)")
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in _PRE_TOKENIZERS:
        raise AirError(f"{path}: GGUF pre-tokenizer '{pre}' is not supported (supported: {', '.join(_PRE_TOKENIZERS)})")
    tokens = _strings(meta, "tokenizer.ggml.tokens", path)
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != len(tokens) or not isinstance(types, list) or len(types) != len(tokens):
        raise AirError(f"{path}: GGUF vocabulary has repeated tokens or a token_type list of another length")
    merges = [tuple(merge.split(" ")) for merge in _strings(meta, "tokenizer.ggml.merges", path)]
    if any(len(merge) != 2 for merge in merges):
        raise AirError(f"{path}: GGUF tokenizer merges must be two tokens separated by one space")
    try:
        tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    except Exception as e:  # tokenizers raises a bare Exception for merges of unknown tokens
        raise AirError(f"{path}: GGUF tokenizer is inconsistent ({str(e).splitlines()[0]})") from None
    tokenizer.pre_tokenizer = _PRE_TOKENIZERS[pre]()
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                  for t, kind in zip(tokens, types) if kind == _CONTROL])
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False)
                          for t, kind in zip(tokens, types) if kind == _USER_DEFINED])
    tokenizer.post_processor = _post_processor(meta, tokens, path)
    return tokenizer


def _post_processor(meta: dict, tokens: list[str], path: Path):
    """bos/eos added around each encoded text where the metadata asks for it."""
    added = [(flag, key) for flag, key in (("add_bos_token", "bos_token_id"), ("add_eos_token", "eos_token_id"))
             if meta.get(f"tokenizer.ggml.{flag}", False)]
    if not added:
        return processors.ByteLevel(trim_offsets=False)
    ids = {key: _token_id(meta, f"tokenizer.ggml.{key}", len(tokens), path) for _, key in added}
    bos = [tokens[ids["bos_token_id"]]] if "bos_token_id" in ids else []
    eos = [tokens[ids["eos_token_id"]]] if "eos_token_id" in ids else []
    return processors.TemplateProcessing(single=" ".join(bos + ["$A"] + eos),
                                         pair=" ".join(bos + ["$A"] + eos + bos + ["$B"] + eos),
                                         special_tokens=[(tokens[i], i) for i in ids.values()])


def _tokenizer_config(meta: dict, config: dict, chat_template: str | None) -> dict:
    tokens = meta["tokenizer.ggml.tokens"]
    settings = {"tokenizer_class": "PreTrainedTokenizerFast",
                "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False))}
    for name in ("bos", "eos"):
        if f"{name}_token_id" in config:
            settings[f"{name}_token"] = tokens[config[f"{name}_token_id"]]
    if chat_template is not None:
        settings["chat_template"] = chat_template
    return settings


def load_gguf_checkpoint(path: Path) -> Checkpoint:
    reader = _open(path)
    meta = _metadata(reader, path)
    _check_tensor_data(reader, path)
    tensors = GGUFTensors(reader, path)
    config = _config(meta, tensors, path)
    arch = meta["general.architecture"]
    if arch == "llama":
        tensors.unpermute = _permuted_rows(tensors, config)
    spec = spec_from_config(config, str(path))
    template = meta.get("tokenizer.chat_template")
    if template is not None and not isinstance(template, str):
        raise AirError(f"{path}: GGUF metadata 'tokenizer.chat_template' is not a string")
    tokenizer_config = _tokenizer_config(meta, config, template)
    tokenizer_files = {"tokenizer.json": _tokenizer(meta, path).to_str().encode(),
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
