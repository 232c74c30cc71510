"""The tokenizer a GGUF file's metadata describes, rebuilt as a `tokenizers` tokenizer.json.

Byte-level BPE (tokenizer.ggml.model "gpt2": vocabulary, merges, control and user-defined
tokens, bos/eos), with the pre-tokenizer llama.cpp names in tokenizer.ggml.pre.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from air.errors import AirError

from .gguf_reader import require

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
_CONTROL, _USER_DEFINED = 3, 4  # tokenizer.ggml.token_type values


def token_id(meta: dict, key: str, vocab: int, path: Path) -> int:
    value = meta[key]
    if not isinstance(value, int) or not 0 <= value < vocab:
        raise AirError(f"{path}: GGUF metadata '{key}' is {value!r}, not a token id below {vocab}")
    return value


def strings(meta: dict, key: str, path: Path) -> list[str]:
    values = require(meta, key, path)
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise AirError(f"{path}: GGUF metadata '{key}' is not a list of strings")
    return values


def _split_then_bytes(pattern: str):
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def gguf_tokenizer(meta: dict, path: Path) -> Tokenizer:
    """The byte-level BPE tokenizer the metadata describes (vocabulary, merges, special tokens)."""
    kind = require(meta, "tokenizer.ggml.model", path)
    if kind != "gpt2":
        raise AirError(f"{path}: GGUF tokenizer model '{kind}' is not supported yet (supported: gpt2, "
                       "byte-level BPE)")
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in _PRE_TOKENIZERS:
        raise AirError(f"{path}: GGUF pre-tokenizer '{pre}' is not supported (supported: {', '.join(_PRE_TOKENIZERS)})")
    tokens = strings(meta, "tokenizer.ggml.tokens", path)
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != len(tokens) or not isinstance(types, list) or len(types) != len(tokens):
        raise AirError(f"{path}: GGUF vocabulary has repeated tokens or a token_type list of another length")
    merges = [tuple(merge.split(" ")) for merge in strings(meta, "tokenizer.ggml.merges", path)]
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
    ids = {key: token_id(meta, f"tokenizer.ggml.{key}", len(tokens), path) for _, key in added}
    bos = [tokens[ids["bos_token_id"]]] if "bos_token_id" in ids else []
    eos = [tokens[ids["eos_token_id"]]] if "eos_token_id" in ids else []
    return processors.TemplateProcessing(single=" ".join(bos + ["$A"] + eos),
                                         pair=" ".join(bos + ["$A"] + eos + bos + ["$B"] + eos),
                                         special_tokens=[(tokens[i], i) for i in ids.values()])


def tokenizer_settings(meta: dict, config: dict, chat_template: str | None) -> dict:
    tokens = meta["tokenizer.ggml.tokens"]
    settings = {"tokenizer_class": "PreTrainedTokenizerFast",
                "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False))}
    for name in ("bos", "eos"):
        if f"{name}_token_id" in config:
            settings[f"{name}_token"] = tokens[config[f"{name}_token_id"]]
    if chat_template is not None:
        settings["chat_template"] = chat_template
    return settings
