"""A checkpoint as the compiler sees it, and the reader of Hugging Face checkpoint folders
(config, weights in one file or shards, tokenizer). A .gguf file is read by gguf_checkpoint.py
into the same Checkpoint, with Hugging Face tensor names."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Protocol

import numpy as np

from air.errors import AirError
from air.runtime.manifest import HEAD_TOKENS_FILE, load_head_tokens, sha256_file
from air.runtime.tensor_file import SafetensorsFile

from .spec import DecoderSpec, spec_from_config

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
CHAT_TEMPLATE_FILE = "chat_template.jinja"


class TensorSource(Protocol):
    """Tensors by Hugging Face name (e.g. "model.layers.0.self_attn.q_proj.weight")."""

    def has(self, name: str) -> bool: ...
    def shape(self, name: str) -> tuple[int, ...]: ...
    def read(self, name: str) -> np.ndarray: ...
    def stored_type(self, name: str) -> str: ...  # "Q4_1" marks a matrix whose q4_blocks() can be kept


class SafetensorsTensors:
    def __init__(self, files: list[SafetensorsFile]):
        self.files = {name: file for file in files for name in file.entries}  # tensor name -> its file

    def has(self, name: str) -> bool:
        return name in self.files

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.files[name].entries[name]["shape"])

    def read(self, name: str) -> np.ndarray:
        return self.files[name].read(name)

    def stored_type(self, name: str) -> str:
        return self.files[name].entries[name]["dtype"]


@dataclasses.dataclass
class Checkpoint:
    path: Path  # the folder or the file given on the command line
    config: dict  # Hugging Face config.json keys (made from the metadata for a GGUF)
    spec: DecoderSpec
    tensors: TensorSource
    generation_config: dict
    tokenizer_config: dict
    tokenizer_files: dict[str, bytes]  # file name -> contents, written into the bundle
    source_files: list[Path]  # every file the build reads, hashed into the provenance
    source_details: dict = dataclasses.field(default_factory=lambda: {"format": "huggingface"})
    chat_template: str | None = None
    head_tokens: list[int] | None = None  # a trimmed LM head's rows (lm_head.weight rows kept, in order)

    def has(self, name: str) -> bool:
        return self.tensors.has(name)

    def tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.tensors.shape(name)

    def read(self, name: str) -> np.ndarray:
        return self.tensors.read(name)

    def source_hashes(self) -> dict[str, str]:
        """sha256 of every file the build read, for the bundle's provenance."""
        return {path.name: sha256_file(path) for path in sorted(self.source_files)}


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise AirError(f"{path.parent}: missing {path.name} ({what})") from None
    except (OSError, ValueError) as e:
        raise AirError(f"{path}: not valid JSON ({e})") from None


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = _read_json(index, "shard index").get("weight_map")
        if not isinstance(weight_map, dict):
            raise AirError(f"{index}: no weight_map")
        shards = [folder / name for name in sorted(set(weight_map.values()))]
        missing = [p.name for p in shards if not p.exists()]
        if missing:
            raise AirError(f"{folder}: missing weight shard(s) {', '.join(missing)}")
        return shards
    single = folder / "model.safetensors"
    if not single.exists():
        raise AirError(f"{folder}: no model.safetensors or model.safetensors.index.json")
    return [single]


def _chat_template(folder: Path, tokenizer_config: dict) -> str | None:
    """tokenizer_config.json's chat_template (a string, or named templates: the default one),
    else a chat_template.jinja file."""
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if template is not None and not isinstance(template, str):
        raise AirError(f"{folder}/tokenizer_config.json: chat_template should be a string")
    file = folder / CHAT_TEMPLATE_FILE
    if template is None and file.is_file():
        template = file.read_text()
    return template


def _head_tokens(folder: Path, spec: DecoderSpec) -> list[int] | None:
    """head_tokens.json: the lm_head rows a draft's trimmed head keeps."""
    path = folder / HEAD_TOKENS_FILE
    if not path.exists():
        return None
    if spec.tie_word_embeddings:
        raise AirError(f"{path}: a trimmed head needs its own lm_head.weight (tie_word_embeddings false)")
    return load_head_tokens(path, spec.vocab_size)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """A Hugging Face checkpoint folder or a .gguf file."""
    path = Path(path)
    if path.suffix == ".gguf" and not path.is_dir():
        try:
            from .gguf_checkpoint import load_gguf_checkpoint
        except ModuleNotFoundError as e:
            raise AirError(f"{path}: reading GGUF files needs the {e.name} package "
                           "(pip install 'air-runtime[gguf]')") from None
        return load_gguf_checkpoint(path)
    return _load_folder(path)


def _load_folder(folder: Path) -> Checkpoint:
    if not folder.is_dir():
        raise AirError(f"{folder}: checkpoint folder not found")
    config = _read_json(folder / "config.json", "model configuration")
    spec = spec_from_config(config, str(folder))
    head_tokens = _head_tokens(folder, spec)
    if head_tokens is not None:
        spec = dataclasses.replace(spec, head_rows=len(head_tokens))
    weight_files = _weight_files(folder)
    if not (folder / "tokenizer.json").exists():
        raise AirError(f"{folder}: missing tokenizer.json")
    generation = folder / "generation_config.json"
    tok_config = folder / "tokenizer_config.json"
    tokenizer_config = _read_json(tok_config, "tokenizer settings") if tok_config.exists() else {}
    tokenizer_files = {name: (folder / name).read_bytes() for name in TOKENIZER_FILES if (folder / name).exists()}
    read = [folder / "config.json", *weight_files] + [folder / name for name in tokenizer_files]
    read += [path for path in (generation, folder / CHAT_TEMPLATE_FILE, folder / HEAD_TOKENS_FILE) if path.exists()]
    return Checkpoint(
        path=folder,
        config=config,
        spec=spec,
        tensors=SafetensorsTensors([SafetensorsFile(path) for path in weight_files]),
        generation_config=_read_json(generation, "generation defaults") if generation.exists() else {},
        tokenizer_config=tokenizer_config,
        tokenizer_files=tokenizer_files,
        source_files=read,
        chat_template=_chat_template(folder, tokenizer_config),
        head_tokens=head_tokens,
    )
