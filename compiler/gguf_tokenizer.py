"""The tokenizer a GGUF file's metadata describes, rebuilt as a `tokenizers` tokenizer.json.

Byte-level BPE (tokenizer.ggml.model "gpt2": vocabulary, merges, control and user-defined
tokens, bos/eos), with the pre-tokenizer llama.cpp names in tokenizer.ggml.pre; and
SentencePiece BPE ("llama": pieces with scores and types, byte fallback, the "\u2581" space
marker), encoded as sentencepiece and llama.cpp encode it: the adjacent pair whose joined piece
scores highest merges first, which a BPE model does with merges ranked by that score.
"""

from __future__ import annotations

import math
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

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
# tokenizer.ggml.token_type values (sentencepiece's piece types, counted from 1)
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
_SPACE = "\u2581"  # sentencepiece's space marker
_BYTE_PIECES = [f"<0x{b:02X}>" for b in range(256)]


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
    """The tokenizer the metadata describes (vocabulary, merges or scores, special tokens)."""
    kind = require(meta, "tokenizer.ggml.model", path)
    if kind not in _BUILDERS:
        raise AirError(f"{path}: GGUF tokenizer model '{kind}' is not supported (supported: gpt2, byte-level "
                       "BPE; llama, SentencePiece BPE)")
    tokens = strings(meta, "tokenizer.ggml.tokens", path)
    types = meta.get("tokenizer.ggml.token_type") or [_NORMAL] * len(tokens)
    if len(set(tokens)) != len(tokens) or not isinstance(types, list) or len(types) != len(tokens):
        raise AirError(f"{path}: GGUF vocabulary has repeated tokens or a token_type list of another length")
    if not all(isinstance(t, int) and _NORMAL <= t <= _BYTE for t in types):
        raise AirError(f"{path}: GGUF metadata 'tokenizer.ggml.token_type' holds a value outside 1..6")
    tokenizer = _BUILDERS[kind](meta, tokens, types, path)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                  for t, kind in zip(tokens, types) if kind == _CONTROL])
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False)
                          for t, kind in zip(tokens, types) if kind == _USER_DEFINED])
    tokenizer.post_processor = _post_processor(meta, tokens, path)
    return tokenizer


def _byte_level_bpe(meta: dict, tokens: list[str], types: list[int], path: Path) -> Tokenizer:
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in _PRE_TOKENIZERS:
        raise AirError(f"{path}: GGUF pre-tokenizer '{pre}' is not supported (supported: {', '.join(_PRE_TOKENIZERS)})")
    merges = [tuple(merge.split(" ")) for merge in strings(meta, "tokenizer.ggml.merges", path)]
    if any(len(merge) != 2 for merge in merges):
        raise AirError(f"{path}: GGUF tokenizer merges must be two tokens separated by one space")
    try:
        tokenizer = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    except Exception as e:  # tokenizers raises a bare Exception for merges of unknown tokens
        raise AirError(f"{path}: GGUF tokenizer is inconsistent ({str(e).splitlines()[0]})") from None
    tokenizer.pre_tokenizer = _PRE_TOKENIZERS[pre]()
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _sentencepiece_bpe(meta: dict, tokens: list[str], types: list[int], path: Path) -> Tokenizer:
    """Spaces become "\u2581" (one prepended to each run of text unless add_space_prefix is false,
    as llama.cpp does), characters outside the vocabulary become <0xNN> byte pieces."""
    scores = meta.get("tokenizer.ggml.scores")
    if not isinstance(scores, list) or len(scores) != len(tokens) \
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in scores):
        raise AirError(f"{path}: GGUF metadata 'tokenizer.ggml.scores' must be one finite number per token "
                       f"({len(tokens)} tokens)")
    unk = _unknown_id(meta, tokens, types, path)
    byte_fallback = _byte_fallback(tokens, types, path)
    model = models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=_score_merges(tokens, scores, types),
                       unk_token=tokens[unk], fuse_unk=True, byte_fallback=byte_fallback)
    tokenizer = Tokenizer(model)
    prefix = meta.get("tokenizer.ggml.add_space_prefix", True)
    if not isinstance(prefix, bool):
        raise AirError(f"{path}: GGUF metadata 'tokenizer.ggml.add_space_prefix' is {prefix!r}, not a boolean")
    spaces = [normalizers.Replace(" ", _SPACE)]
    tokenizer.normalizer = normalizers.Sequence(([normalizers.Prepend(_SPACE)] if prefix else []) + spaces)
    tokenizer.decoder = decoders.Sequence([decoders.Replace(_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
                                          + ([decoders.Strip(" ", 1, 0)] if prefix else []))
    return tokenizer


def _unknown_id(meta: dict, tokens: list[str], types: list[int], path: Path) -> int:
    if "tokenizer.ggml.unknown_token_id" in meta:
        unk = token_id(meta, "tokenizer.ggml.unknown_token_id", len(tokens), path)
    elif _UNKNOWN in types:
        unk = types.index(_UNKNOWN)
    else:
        raise AirError(f"{path}: GGUF SentencePiece vocabulary has no unknown token (no "
                       "'tokenizer.ggml.unknown_token_id' and no token of type 2)")
    if types[unk] != _UNKNOWN or types.count(_UNKNOWN) != 1:
        raise AirError(f"{path}: GGUF SentencePiece vocabulary must have exactly one unknown token (type 2), "
                       f"the one 'tokenizer.ggml.unknown_token_id' names")
    return unk


def _byte_fallback(tokens: list[str], types: list[int], path: Path) -> bool:
    """True when the vocabulary holds all 256 byte pieces, each typed as one."""
    bytes_ = [t for t, kind in zip(tokens, types) if kind == _BYTE]
    if bytes_ and sorted(bytes_) != _BYTE_PIECES:
        raise AirError(f"{path}: GGUF SentencePiece vocabulary has {len(bytes_)} byte tokens (type 6), not the "
                       "256 pieces <0x00> .. <0xFF>")
    return bool(bytes_)


def _score_merges(tokens: list[str], scores: list[float], types: list[int]) -> list[tuple[str, str]]:
    """Every split of a normal piece into two normal pieces, the best-scoring joined piece first."""
    normal = {t: i for i, (t, kind) in enumerate(zip(tokens, types)) if kind == _NORMAL}
    ranked = []
    for piece, i in normal.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in normal and right in normal:
                ranked.append((-scores[i], i, normal[left], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def _post_processor(meta: dict, tokens: list[str], path: Path):
    """bos/eos added around each encoded text where the metadata asks for it."""
    added = [(flag, key) for flag, key in (("add_bos_token", "bos_token_id"), ("add_eos_token", "eos_token_id"))
             if _adds(meta, flag)]
    if not added:
        return processors.ByteLevel(trim_offsets=False) if meta["tokenizer.ggml.model"] == "gpt2" else None
    ids = {key: token_id(meta, f"tokenizer.ggml.{key}", len(tokens), path) for _, key in added}
    bos = [tokens[ids["bos_token_id"]]] if "bos_token_id" in ids else []
    eos = [tokens[ids["eos_token_id"]]] if "eos_token_id" in ids else []
    return processors.TemplateProcessing(single=" ".join(bos + ["$A"] + eos),
                                         pair=" ".join(bos + ["$A"] + eos + bos + ["$B"] + eos),
                                         special_tokens=[(tokens[i], i) for i in ids.values()])


def tokenizer_settings(meta: dict, config: dict, chat_template: str | None) -> dict:
    tokens = meta["tokenizer.ggml.tokens"]
    settings = {"tokenizer_class": "PreTrainedTokenizerFast",
                "add_bos_token": _adds(meta, "add_bos_token"), "add_eos_token": _adds(meta, "add_eos_token")}
    for name in ("bos", "eos"):
        if f"{name}_token_id" in config:
            settings[f"{name}_token"] = tokens[config[f"{name}_token_id"]]
    if chat_template is not None:
        settings["chat_template"] = chat_template
    return settings


def _adds(meta: dict, flag: str) -> bool:
    """add_bos_token / add_eos_token; llama.cpp adds bos to a SentencePiece vocabulary that does not say."""
    default = flag == "add_bos_token" and meta["tokenizer.ggml.model"] == "llama"
    return bool(meta.get(f"tokenizer.ggml.{flag}", default))


_BUILDERS = {"gpt2": _byte_level_bpe, "llama": _sentencepiece_bpe}
