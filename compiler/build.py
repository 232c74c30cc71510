"""air-build compile: checkpoints + recipe -> a verified, atomically written bundle."""

from __future__ import annotations

import datetime
import json
import platform
import tempfile
from pathlib import Path

import tvm
from tokenizers import Tokenizer

from air.errors import AirError
from air.runtime.chat_template import write_chat_template
from air.runtime.manifest import (FORMAT_NAME, FORMAT_VERSION, HEAD_TOKENS_FILE, file_record, read_manifest,
                                  write_head_tokens, write_manifest)
from air.runtime.routing import ROUTING_FILE
from air.runtime.signing import write_signature
from air.devices import Device, host_device, resolve_device

from . import limits, rope
from .checkpoint import TOKENIZER_FILES, Checkpoint, load_checkpoint
from .kernels import cache as kernel_cache
from .kv_layouts import KVLayout
from .layers import WeightFormat
from .model import CausalLM
from .pipeline import compile_module
from .progress import Progress
from .recipe import Recipe
from .remote import estimate_costs, measure_costs_rpc
from .routing import build_table, calibrate, default_prompts
from .tensor_map import tensor_map
from .weights import check_tensors, write_weights

AIR_VERSION = "0.1.0"


def _context_length(ckpt: Checkpoint, recipe: Recipe, progress: Progress | None = None) -> int:
    spec = ckpt.spec
    limit = min(recipe.max_context, spec.max_position_embeddings)
    if spec.sliding_window and spec.layer_types is None and spec.sliding_window < limit:
        # Within its window a sliding-window model is exact full attention.
        if progress is not None:
            progress.note(f"{ckpt.path}: context limited to its sliding window of {spec.sliding_window}")
        limit = spec.sliding_window
    return limit


def _check_inputs(role: str, ckpt: Checkpoint, recipe: Recipe) -> None:
    """Everything that can be refused without compiling: the limits, then every tensor's presence and shape."""
    if role == "target" and ckpt.head_tokens is not None:
        raise AirError(f"{ckpt.path}: has a {HEAD_TOKENS_FILE}, but a target's LM head must cover the whole "
                       "vocabulary (only a draft may trim its head)")
    limits.check_model(str(ckpt.path), ckpt.spec, recipe.weight_format(role))
    limits.check_kv_cache(recipe.name, _context_length(ckpt, recipe), recipe.kv_sinks, recipe.kv_window)
    limits.check_rope_switch(str(ckpt.path), ckpt.spec, recipe.kv_window)
    check_tensors(ckpt, tensor_map(ckpt.spec))


def _check_same_vocabulary(target: Checkpoint, draft: Checkpoint) -> None:
    if target.spec.vocab_size != draft.spec.vocab_size:
        raise AirError(
            f"draft vocabulary size {draft.spec.vocab_size} differs from the target's {target.spec.vocab_size}; "
            "speculation needs one shared vocabulary"
        )
    target_vocab = _vocabulary(target)
    draft_vocab = _vocabulary(draft)
    if target_vocab != draft_vocab:
        raise AirError("draft tokenizer's vocabulary differs from the target's; speculation needs one shared vocabulary")


def _vocabulary(ckpt: Checkpoint) -> dict[str, int]:
    tokenizer = Tokenizer.from_str(ckpt.tokenizer_files["tokenizer.json"].decode())
    return tokenizer.get_vocab(with_added_tokens=True)


def _eos_token_ids(ckpt: Checkpoint) -> list[int]:
    for source in (ckpt.generation_config, ckpt.config):
        eos = source.get("eos_token_id")
        if eos is not None:
            return [int(e) for e in (eos if isinstance(eos, list) else [eos])]
    return []


def _compile_one(role: str, ckpt: Checkpoint, recipe: Recipe, device: Device, staging: Path, progress: Progress) -> dict:
    spec = ckpt.spec
    kv = KVLayout(spec, recipe.kv_cache, _context_length(ckpt, recipe, progress), recipe.kv_sinks, recipe.kv_window)
    scheme, head_scheme = recipe.weight_format(role), recipe.head_format(role)
    folder = staging / role
    folder.mkdir()
    # The stage starts before the model is defined: parsing its kernels takes much of the time.
    with progress.stage(f"compiling {role} model ({spec.architecture}, {spec.num_layers} layers, "
                        f"hidden {spec.hidden_size}) for {device.tvm_target.get('mcpu', device.arch)}"):
        kernels_before = kernel_cache.counts()
        with progress.step(f"{role}: model definition"):
            tvm_target = json.dumps(device.tvm_target)
            model = CausalLM(spec, kv, WeightFormat(scheme, tvm_target), WeightFormat(head_scheme, tvm_target))
            module, named_params = model.export_tvm(spec=model.export_spec())
        progress.note(kernel_cache.summary(kernels_before))
        with progress.step(f"{role}: Relax passes and LLVM code generation"):
            executable = compile_module(module, device.tvm_target, spec.num_layers)
        with progress.step(f"{role}: linking model.so"):
            executable.export_library(str(folder / "model.so"), **device.export_options())
    switch = rope.rope_switch(spec, kv.max_context)
    extra = {switch["long"]: rope.inverse_frequencies(spec, long=True)} if switch else None
    with progress.stage(f"writing {role} weights ({scheme}, token table and head {head_scheme})"):
        written = write_weights(ckpt, named_params, tensor_map(spec), (scheme, head_scheme),
                                folder / "weights.safetensors", extra)
    blocks = {"source_blocks": {"kept": written.kept, "requantized": written.requantized}} \
        if written.kept or written.requantized else {}
    entry = {
        "architecture": spec.to_dict(),
        "quantization": scheme,
        "head_quantization": head_scheme,
        "library": f"{role}/model.so",
        "weights": f"{role}/weights.safetensors",
        "params": [name for name, _ in named_params],
        "kv_cache": kv.cache_spec().to_dict(),
        "vocab_size": spec.vocab_size,
        "weight_bytes": written.payload_bytes,
        "eos_token_ids": _eos_token_ids(ckpt),
        **blocks,
    }
    if ckpt.head_tokens is not None:
        write_head_tokens(folder / HEAD_TOKENS_FILE, ckpt.head_tokens)
        entry["head_tokens"] = f"{role}/{HEAD_TOKENS_FILE}"
    if switch:
        entry["rope_switch"] = switch
    return entry


def _add_routing_table(staging: Path, manifest: dict, target: Checkpoint, draft: Checkpoint | None, recipe: Recipe,
                       device: Device, rpc: str | None, progress: Progress) -> None:
    """Calibrate on the compiled models and store the table in the bundle.

    Acceptance (the draft's, and lookup's per prompt class) is a property of the models: it is
    measured on the host (on a host build of them when the bundle is for another device).
    Per-step costs come from the bundle's own libraries: run here when the device is the
    host, over TVM RPC when an address is given, else estimated from the device profile.
    """
    prompts = recipe_prompts(recipe)
    transform = recipe_prompts(recipe, "transform_prompts")
    if device.name == "host":
        measurements = calibrate(staging, prompts, progress, transform)
    else:
        with tempfile.TemporaryDirectory(prefix="air-host-twin-") as twin:
            progress.note("building a host copy of both models to measure acceptance")
            quiet = Progress(total_stages=0, quiet=True)
            _write_bundle(Path(twin), target, draft, recipe, host_device(), f"{manifest['name']}-host", quiet)
            measurements = calibrate(Path(twin), prompts, progress, transform)
        if rpc:
            progress.note(f"per-step costs on the device over TVM RPC ({rpc})")
            measurements["costs"] = measure_costs_rpc(staging, manifest, rpc)
            measurements["cost_source"] = f"measured on the device over TVM RPC at {rpc}"
        else:
            measurements["costs"] = estimate_costs(measurements["costs"], manifest, device.profile)
            measurements["cost_source"] = (f"estimated from the device profile ({device.profile}) and the "
                                           "host-measured cost ratios")
    table = build_table(measurements, manifest["models"]["target"]["kv_cache"]["dtype"])
    (staging / ROUTING_FILE).write_text(json.dumps(table, indent=1) + "\n")
    manifest["routing"] = ROUTING_FILE
    manifest["files"][ROUTING_FILE] = file_record(staging, ROUTING_FILE)
    write_manifest(staging, manifest)


_DEFAULT_PROMPTS = {"calibration_prompts": "calibration.txt", "transform_prompts": "calibration-transform.txt"}


def recipe_prompts(recipe: Recipe, key: str = "calibration_prompts") -> list[str]:
    """The recipe's prompt file for `key` (blank-line separated), else the packaged one."""
    if getattr(recipe, key) is None:
        return default_prompts(_DEFAULT_PROMPTS[key])
    path = Path(getattr(recipe, key))
    if not path.is_file():
        raise AirError(f"recipe {recipe.name}: {key} file {path} not found")
    prompts = [p for p in path.read_text().split("\n\n") if p.strip()]
    if not prompts:
        raise AirError(f"recipe {recipe.name}: {key} file {path} has no prompts")
    return prompts


def _write_bundle(staging: Path, target: Checkpoint, draft: Checkpoint | None, recipe: Recipe, device: Device,
                  name: str, progress: Progress) -> dict:
    models = {"target": _compile_one("target", target, recipe, device, staging, progress)}
    if draft is not None:
        models["draft"] = _compile_one("draft", draft, recipe, device, staging, progress)
    with progress.stage("writing manifest"):
        tokenizer_files = [file for file in TOKENIZER_FILES if file in target.tokenizer_files]
        for file in tokenizer_files:
            (staging / file).write_bytes(target.tokenizer_files[file])
        template_entry = write_chat_template(staging, target.chat_template, target.tokenizer_config)
        files = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "name": name,
            "device": device.describe(),
            "runtime": {"threads": recipe.threads, "memory_budget_mb": recipe.memory_budget_mb},
            "models": models,
            "tokenizer": {"files": tokenizer_files, "eos_token_ids": models["target"]["eos_token_ids"], **template_entry},
            "files": {rel: file_record(staging, rel) for rel in files},
            "provenance": {
                "air_version": AIR_VERSION,
                "tvm_version": tvm.__version__,
                "python": platform.python_version(),
                "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "build_host": f"{platform.machine()} {platform.node()}",
                "recipe": {"name": recipe.name, "settings": recipe.source},
                "sources": {
                    role: {"path": str(ckpt.path.resolve()), "files": ckpt.source_hashes(), **ckpt.source_details}
                    for role, ckpt in (("target", target), ("draft", draft)) if ckpt is not None
                },
                "stage_seconds": progress.timings,
            },
        }
        write_manifest(staging, manifest)
    return manifest


def compile_bundle(target_path: str, draft_path: str | None, recipe: Recipe, output: Path,
                   quiet: bool = False, rpc: str | None = None, signing_key=None) -> dict:
    """`signing_key` (an Ed25519 private key): sign the manifest before the bundle is published."""
    from .bundle_writer import staged_bundle

    device = resolve_device(recipe.device)
    # Without a draft only lookup is calibrated, on the host (a host twin for it is not built).
    routed = draft_path is not None or device.name == "host"
    progress = Progress(total_stages=(4 if draft_path is None else 6) + routed, quiet=quiet)
    with progress.stage("reading checkpoints"):
        target = load_checkpoint(target_path)
        draft = load_checkpoint(draft_path) if draft_path else None
        if draft is not None:
            _check_same_vocabulary(target, draft)
        _check_inputs("target", target, recipe)
        if draft is not None:
            _check_inputs("draft", draft, recipe)
    with staged_bundle(output) as staging:
        manifest = _write_bundle(staging, target, draft, recipe, device, output.name, progress)
        if routed:
            with progress.stage("calibrating the routing table"):
                _add_routing_table(staging, manifest, target, draft, recipe, device, rpc, progress)
        if signing_key is not None:
            write_signature(staging, read_manifest(staging), signing_key)
    if not quiet:
        total = sum(r["size"] for r in manifest["files"].values())
        print(f"bundle written to {output} ({total / 1e6:.1f} MB) in {progress.elapsed:.1f}s", flush=True)
    return manifest
