"""Read a Hugging Face checkpoint folder: config, weights (single file or shards), tokenizer."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from air.errors import AirError
from air.runtime.manifest import sha256_file
from air.runtime.tensor_file import SafetensorsFile

from .spec import DecoderSpec, spec_from_config

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
CHAT_TEMPLATE_FILE = "chat_template.jinja"


@dataclasses.dataclass
class Checkpoint:
    path: Path
    config: dict
    spec: DecoderSpec
    tensor_files: dict[str, SafetensorsFile]  # tensor name -> the file holding it
    generation_config: dict
    tokenizer_config: dict
    chat_template: str | None = None  # Jinja source; None: the checkpoint has none

    def has(self, name: str) -> bool:
        return name in self.tensor_files

    def tensor_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.tensor_files[name].entries[name]["shape"])

    def read(self, name: str) -> np.ndarray:
        return self.tensor_files[name].read(name)

    def source_hashes(self) -> dict[str, str]:
        """sha256 of every file the build read, for the bundle's provenance."""
        files = {"config.json"} | {f.path.name for f in self.tensor_files.values()}
        files |= {name for name in TOKENIZER_FILES + ("generation_config.json", CHAT_TEMPLATE_FILE)
                  if (self.path / name).exists()}
        return {name: sha256_file(self.path / name) for name in sorted(files)}


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


def load_checkpoint(folder: str | Path) -> Checkpoint:
    folder = Path(folder)
    if not folder.is_dir():
        raise AirError(f"{folder}: checkpoint folder not found")
    config = _read_json(folder / "config.json", "model configuration")
    spec = spec_from_config(config, str(folder))
    tensor_files: dict[str, SafetensorsFile] = {}
    for path in _weight_files(folder):
        file = SafetensorsFile(path)
        for name in file.entries:
            tensor_files[name] = file
    if not (folder / "tokenizer.json").exists():
        raise AirError(f"{folder}: missing tokenizer.json")
    generation = folder / "generation_config.json"
    tok_config = folder / "tokenizer_config.json"
    tokenizer_config = _read_json(tok_config, "tokenizer settings") if tok_config.exists() else {}
    return Checkpoint(
        path=folder,
        config=config,
        spec=spec,
        tensor_files=tensor_files,
        generation_config=_read_json(generation, "generation defaults") if generation.exists() else {},
        tokenizer_config=tokenizer_config,
        chat_template=_chat_template(folder, tokenizer_config),
    )
