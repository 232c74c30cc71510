"""The bundle contract: manifest schema, version, validation and file integrity.

Defined here, on the runtime side, and used by the compiler to write bundles, so that
both halves agree by construction. A bundle is one folder:

  manifest.json            this schema
  <role>/model.so          compiled library per model (role: target, draft)
  <role>/weights.safetensors
  tokenizer.json, tokenizer_config.json
  chat_template.jinja      when the checkpoint has one (tokenizer.chat_template names it)
  draft/head_tokens.json   a draft whose LM head covers only some tokens: their ids, one per row

Each model's KV cache and compiled functions are typed in contract.py.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from air.errors import AirError

from .contract import KVCacheSpec

FORMAT_NAME = "air-bundle"
# 2: kv_cache entries hold per-layer groups (kind dense/windowed) and name their tensors.
FORMAT_VERSION = 2
MANIFEST_NAME = "manifest.json"
MODEL_ROLES = ("target", "draft")
HEAD_TOKENS_FILE = "head_tokens.json"  # {"token_ids": [...]}: a trimmed LM head's rows, in order

_REQUIRED_TOP = {"format": str, "format_version": int, "name": str, "device": dict, "models": dict,
                 "tokenizer": dict, "files": dict, "provenance": dict}
_REQUIRED_MODEL = {"architecture": dict, "quantization": str, "library": str, "weights": str,
                   "params": list, "kv_cache": dict, "vocab_size": int, "weight_bytes": int}
_REQUIRED_DEVICE = {"name": str, "arch": str, "tvm_target": dict, "cpu_features": list}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_record(root: Path, relpath: str) -> dict:
    path = root / relpath
    return {"size": path.stat().st_size, "sha256": sha256_file(path)}


def _check_keys(data: dict, required: dict, where: str) -> None:
    for key, kind in required.items():
        if key not in data:
            raise AirError(f"manifest: {where} lacks '{key}'")
        if not isinstance(data[key], kind):
            raise AirError(f"manifest: {where}.{key} should be {kind.__name__}")


def validate(manifest: dict) -> None:
    """Structure and version; raises AirError naming the first problem."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise AirError("manifest: not an air bundle manifest")
    _check_keys(manifest, _REQUIRED_TOP, "bundle")
    version = manifest["format_version"]
    if version < FORMAT_VERSION:
        raise AirError(f"manifest: bundle format version {version} is older than this air-run reads "
                       f"({FORMAT_VERSION}); rebuild the bundle with this version's air-build")
    if version > FORMAT_VERSION:
        raise AirError(f"manifest: bundle format version {version} is newer than this air-run reads "
                       f"({FORMAT_VERSION}); update air-runtime")
    _check_keys(manifest["device"], _REQUIRED_DEVICE, "device")
    if "target" not in manifest["models"]:
        raise AirError("manifest: no target model")
    for role, entry in manifest["models"].items():
        if role not in MODEL_ROLES:
            raise AirError(f"manifest: unknown model role '{role}'")
        _check_keys(entry, _REQUIRED_MODEL, f"models.{role}")
        kv_spec(entry, role)
        _check_head_entry(entry, role, manifest["files"])
        if "rope_switch" in entry:
            _check_rope_switch(entry, role)
        for key in ("library", "weights"):
            if entry[key] not in manifest["files"]:
                raise AirError(f"manifest: models.{role}.{key} '{entry[key]}' is not in the file list")
    if "routing" in manifest and manifest["routing"] not in manifest["files"]:
        raise AirError(f"manifest: routing table '{manifest['routing']}' is not in the file list")
    for name in manifest["tokenizer"].get("files", []):
        if name not in manifest["files"]:
            raise AirError(f"manifest: tokenizer file '{name}' is not in the file list")
    template = manifest["tokenizer"].get("chat_template")
    if template is not None and template not in manifest["files"]:
        raise AirError(f"manifest: chat template '{template}' is not in the file list")


def _check_head_entry(entry: dict, role: str, files: dict) -> None:
    if "head_tokens" not in entry:
        return
    if role != "draft":
        raise AirError(f"manifest: models.{role} has a trimmed LM head; only a draft may (the target's "
                       "distribution must cover the whole vocabulary)")
    if not isinstance(entry["head_tokens"], str) or entry["head_tokens"] not in files:
        raise AirError(f"manifest: models.{role}.head_tokens '{entry['head_tokens']}' is not in the file list")


def check_head_tokens(data, vocab: int, where: str) -> list[int]:
    """The ids of a trimmed LM head's rows ({"token_ids": [...]}): distinct, below `vocab`, at least one."""
    ids = data.get("token_ids") if isinstance(data, dict) else None
    if not isinstance(ids, list) or not all(type(i) is int for i in ids):
        raise AirError(f"{where}: should be {{\"token_ids\": [integer token ids]}}")
    if not ids:
        raise AirError(f"{where}: token_ids is empty (the head needs at least one row)")
    outside = [i for i in ids if not 0 <= i < vocab]
    if outside:
        raise AirError(f"{where}: token id {outside[0]} is outside the vocabulary (0..{vocab - 1})")
    seen = set()
    for i in ids:
        if i in seen:
            raise AirError(f"{where}: token id {i} appears more than once")
        seen.add(i)
    return ids


def load_head_tokens(path: Path, vocab: int) -> list[int]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise AirError(f"{path}: not valid JSON ({e})") from None
    return check_head_tokens(data, vocab, str(path))


def write_head_tokens(path: Path, ids: list[int]) -> None:
    path.write_text(json.dumps({"token_ids": list(ids)}) + "\n")


def head_tokens(root: Path, entry: dict, role: str) -> np.ndarray | None:
    """A model's head rows as token ids (numpy int64), checked against its logits; None: one row per token."""
    if "head_tokens" not in entry:
        return None
    ids = load_head_tokens(_inside(root, entry["head_tokens"]), entry["vocab_size"])
    rows = entry["architecture"].get("head_rows")
    if rows != len(ids):
        raise AirError(f"manifest: models.{role} has {rows} head rows but {entry['head_tokens']} lists {len(ids)} ids")
    return np.array(ids, dtype=np.int64)
def _check_rope_switch(entry: dict, role: str) -> None:
    """A longrope model's switch: after how many positions its parameter `param` is replaced
    by the weights file's tensor `long` (runtime/model.py)."""
    switch, where = entry["rope_switch"], f"models.{role}.rope_switch"
    _check_keys(switch if isinstance(switch, dict) else {}, {"after": int, "param": str, "long": str}, where)
    if isinstance(switch["after"], bool) or switch["after"] <= 0 or switch["param"] not in entry["params"]:
        raise AirError(f"manifest: {where} should name a parameter and a positive length")


def kv_spec(entry: dict, role: str) -> KVCacheSpec:
    """The typed KV-cache spec of a model entry (checked field by field)."""
    return KVCacheSpec.from_dict(entry["kv_cache"], f"models.{role}.kv_cache")


def read_manifest(root: Path) -> dict:
    path = root / MANIFEST_NAME
    if not root.is_dir():
        raise AirError(f"{root}: bundle folder not found")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise AirError(f"{root}: not a bundle (no {MANIFEST_NAME})") from None
    except OSError as e:
        raise AirError(f"{path}: unreadable manifest ({e})") from None
    return parse_manifest(data, str(path))


def parse_manifest(data: bytes, where: str) -> dict:
    try:
        manifest = json.loads(data)
    except ValueError as e:
        raise AirError(f"{where}: unreadable manifest ({e})") from None
    validate(manifest)
    return manifest


def verify_files(root: Path, manifest: dict, digest=sha256_file) -> None:
    """Every listed file present, of the recorded size and hash; nothing else is loaded.
    `digest` computes a file's sha256 (runtime/verified.py passes one that remembers)."""
    for relpath, record in manifest["files"].items():
        path = _inside(root, relpath)
        if not path.is_file():
            raise AirError(f"{root}: bundle file '{relpath}' is missing")
        size = path.stat().st_size
        if size != record["size"]:
            raise AirError(f"{root}: bundle file '{relpath}' has {size} bytes, manifest says {record['size']} (truncated or replaced)")
        if digest(path) != record["sha256"]:
            raise AirError(f"{root}: bundle file '{relpath}' does not match its sha256 in the manifest (modified)")


def _inside(root: Path, relpath: str) -> Path:
    """Refuse paths that would leave the bundle folder."""
    if os.path.isabs(relpath) or ".." in Path(relpath).parts:
        raise AirError(f"manifest: file path '{relpath}' leaves the bundle")
    return root / relpath


def write_manifest(root: Path, manifest: dict) -> None:
    validate(manifest)
    (root / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
