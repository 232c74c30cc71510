"""air-build: compile checkpoints into a bundle, and inspect bundles."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import click

from air.errors import AirError
from air.runtime.archive import SUFFIX, pack
from air.runtime.contract import KV_DTYPES, WEIGHT_FORMATS
from air.runtime.manifest import kv_spec


def _fail(message: str, status: int = 2):
    click.echo(f"air-build: error: {message}", err=True)
    sys.exit(status)


_interrupted = False


def _interrupt(signum, frame):
    # Raised inside a TVM callback this surfaces as a TVM error, hence the flag.
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Compile language models ahead of time for small devices."""


@main.command()
@click.option("--target-model", required=True, type=click.Path(), help="Target model: a Hugging Face checkpoint folder or a .gguf file.")
@click.option("--draft-model", type=click.Path(), help="Draft model (folder or .gguf file; same vocabulary).")
@click.option("--recipe", default="host", show_default=True, help="Recipe name (see `air-build recipes`) or a .yaml path.")
@click.option("--output", type=click.Path(), help="Bundle folder [default: dist/<target folder name, or .gguf file stem>].")
@click.option("--max-context", type=click.IntRange(min=16), help="Override the recipe's KV-cache context length.")
@click.option("--quantization", type=click.Choice(WEIGHT_FORMATS), help="Override the recipe's weight format.")
@click.option("--draft-quantization", type=click.Choice(WEIGHT_FORMATS),
              help="Weight format of the draft model [default: the recipe's draft_quantization, else --quantization].")
@click.option("--head-quantization", type=click.Choice(WEIGHT_FORMATS),
              help="Weight format of the token table and LM head [default: the recipe's head_quantization, "
                   "else q8 for a q4 target, else the model's own].")
@click.option("--kv-cache", type=click.Choice(KV_DTYPES), help="Override the recipe's KV-cache storage dtype.")
@click.option("--kv-window", type=click.IntRange(min=0), help="Keep only this many recent positions (0: all).")
@click.option("--kv-sinks", type=click.IntRange(min=0), help="First positions always kept with a window.")
@click.option("--rpc", help="Measure per-step costs on the device over TVM RPC: HOST:PORT of its server, "
                             "or KEY@HOST:PORT of a tracker.")
@click.option("--archive", is_flag=True, help="Also write the bundle as one file, <output>.air, for copying.")
@click.option("--sign", "sign_key", type=click.Path(), help="Sign the bundle with this private key (air-build keygen).")
@click.option("--quiet", is_flag=True, help="No progress output.")
def compile(target_model, draft_model, recipe, output, max_context, quantization, draft_quantization, head_quantization,
            kv_cache, kv_window, kv_sinks, rpc, archive, sign_key, quiet):  # noqa: A001 - the command's name
    """Compile a target (and draft) model for a device recipe into a bundle."""
    from air.runtime.signing import load_private_key
    from air.runtime.startup import import_tvm

    from .recipe import load_recipe

    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        chosen = load_recipe(recipe).with_overrides(max_context=max_context, kv_cache=kv_cache, quantization=quantization,
                                                    draft_quantization=draft_quantization,
                                                    head_quantization=head_quantization, kv_window=kv_window,
                                                    kv_sinks=kv_sinks)
        destination = Path(output) if output else Path("dist") / _default_name(Path(target_model))
        key = load_private_key(Path(sign_key)) if sign_key else None  # a bad key stops before compiling
        import_tvm(runtime_only=False)
        from .build import compile_bundle

        compile_bundle(target_model, draft_model, chosen, destination, quiet=quiet, rpc=rpc, signing_key=key)
        if archive:
            _pack(destination, destination.with_name(destination.name + SUFFIX), quiet)
    except AirError as e:
        _fail(str(e))
    except BaseException:
        if _interrupted:
            _fail("interrupted; no bundle was written", 130)
        raise


def _default_name(source: Path) -> str:
    source = source.resolve()
    return source.stem if source.suffix == ".gguf" else source.name


def _pack(bundle: Path, archive: Path, quiet: bool) -> None:
    pack(bundle, archive)
    if not quiet:
        click.echo(f"archive written to {archive} ({archive.stat().st_size / 1e6:.1f} MB); "
                   f"air-run accepts it directly", err=True)


@main.command("pack")
@click.argument("bundle", type=click.Path())
@click.option("--output", type=click.Path(), help="Archive file [default: <bundle>.air].")
def pack_command(bundle, output):
    """Write a bundle as one archive file for copying to a device."""
    from air.runtime.manifest import read_manifest, verify_files

    try:
        root = Path(bundle)
        verify_files(root, read_manifest(root))
        _pack(root, Path(output) if output else root.with_name(root.name + SUFFIX), False)
    except AirError as e:
        _fail(str(e))


@main.command()
@click.option("--output", required=True, type=click.Path(), help="Folder for air-signing.key (private) and air-signing.pub.")
def keygen(output):
    """Make an Ed25519 key pair for signing bundles."""
    from air.runtime.signing import PRIVATE_KEY_NAME, PUBLIC_KEY_NAME, generate_keys

    try:
        named = generate_keys(Path(output))
    except AirError as e:
        _fail(str(e))
    click.echo(f"key {named}: private {Path(output) / PRIVATE_KEY_NAME} (keep it secret), "
               f"public {Path(output) / PUBLIC_KEY_NAME} (give it to devices: air-run --trust)")


@main.command()
@click.argument("bundle", type=click.Path())
@click.option("--key", required=True, type=click.Path(), help="Private key (air-build keygen).")
def sign(bundle, key):
    """Sign a bundle's manifest (which holds every file's hash); the files are checked first."""
    from air.runtime.manifest import read_manifest, verify_files
    from air.runtime.signing import SIGNATURE_NAME, load_private_key, write_signature

    try:
        root = Path(bundle)
        private = load_private_key(Path(key))
        manifest = read_manifest(root)
        verify_files(root, manifest)
        named = write_signature(root, manifest, private)
    except AirError as e:
        _fail(str(e))
    click.echo(f"{root / SIGNATURE_NAME}: signed by {named}")


@main.command()
@click.argument("bundle", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the whole manifest as JSON.")
def inspect(bundle, as_json):
    """Describe a bundle (and check its files against the manifest)."""
    from air.runtime.manifest import read_manifest, verify_files

    try:
        root = Path(bundle)
        manifest = read_manifest(root)
        verify_files(root, manifest)
        signer = _signer(root, manifest)
    except AirError as e:
        _fail(str(e))
    if as_json:
        click.echo(json.dumps(manifest, indent=2))
        return
    click.echo(_summary(root, manifest) + f"\nsignature: {signer}")


def _group_summary(group) -> str:
    layers = f"layers {group.layers[0]}-{group.layers[-1]}" if len(group.layers) > 1 else f"layer {group.layers[0]}"
    if not group.windowed:
        return f"{layers}: dense, {group.bytes_per_token} bytes/token"
    return (f"{layers}: windowed ({group.sinks} sinks + {group.window} recent), "
            f"{group.bytes_per_token * group.fixed_capacity / 1e6:.2f} MB at any context")


def _signer(root: Path, manifest: dict) -> str:
    from air.runtime.signing import describe_signer, read_signature

    data = read_signature(root)
    return "not signed" if data is None else describe_signer(manifest, data, str(root))


def _summary(root: Path, manifest: dict) -> str:
    device = manifest["device"]
    total = sum(r["size"] for r in manifest["files"].values())
    lines = [
        f"bundle {manifest['name']} (format {manifest['format_version']}, {total / 1e6:.1f} MB, files verified)",
        f"device: {device['name']} - {device['description']}",
        f"  tvm target: {json.dumps(device['tvm_target'])}",
    ]
    for role, entry in manifest["models"].items():
        arch, kv = entry["architecture"], kv_spec(entry, role)
        kinds = "+".join(sorted({group.kind for group in kv.groups}))
        lines += [
            f"{role}: {arch['architecture']}, {arch['num_layers']} layers, hidden {arch['hidden_size']}, "
            f"heads {arch['num_heads']}/{arch['num_kv_heads']} (q/kv), vocab {entry['vocab_size']}",
            f"  lm head: {_head_summary(entry)}",
            f"  weights: {entry['quantization']} (token table and head {_head_format(entry)}), "
            f"{entry['weight_bytes'] / 1e6:.1f} MB",
            f"  source: {_source_summary(manifest['provenance']['sources'].get(role, {}), entry)}",
            f"  kv cache: {kinds} {kv.dtype}, context {kv.max_context}, "
            f"{kv.bytes_per_token} bytes/token, {kv.max_bytes / 1e6:.1f} MB at full context",
        ]
        if len(kv.groups) > 1:
            lines += [f"    {_group_summary(group)}" for group in kv.groups]
    template = manifest["tokenizer"].get("chat_template")
    lines.append(f"chat template: {template}" if template else
                 "chat template: none (air-run chat and serve use the plain User:/Assistant: fallback)")
    lines += _routing_summary(root, manifest)
    prov = manifest["provenance"]
    lines.append(f"built {prov['built_at']} by air {prov['air_version']} with TVM {prov['tvm_version']}, "
                 f"recipe {prov['recipe']['name']}")
    return "\n".join(lines)


def _head_summary(entry: dict) -> str:
    rows = entry["architecture"].get("head_rows")
    if rows is None:
        return f"{entry['vocab_size']} rows (the whole vocabulary)"
    return (f"{rows} rows of the vocabulary's {entry['vocab_size']} ({100 * rows / entry['vocab_size']:.1f}%, "
            f"trimmed: {entry['head_tokens']})")


def _head_format(entry: dict) -> str:
    return entry.get("head_quantization", entry["quantization"])  # bundles before the key: one format


def _source_summary(source: dict, entry: dict) -> str:
    path, quantization = source.get("path", "?"), entry["quantization"]
    if source.get("format") != "gguf":
        return f"Hugging Face folder {path}"
    types = ", ".join(f"{count} {name}" for name, count in source["tensor_types"].items())
    digest = next(iter(source["files"].values()), "?")
    blocks = entry.get("source_blocks", {"kept": [], "requantized": []})
    return (f"GGUF file {path} (sha256 {digest[:16]}..., tensors {types}; {len(blocks['kept'])} matrices "
            f"kept as stored (Q4_1 blocks are q4 blocks), {len(blocks['requantized'])} dequantized and "
            f"re-quantized to {quantization} (the token table and head to {_head_format(entry)}), "
            f"float tensors stored as {quantization})")


def _routing_summary(root: Path, manifest: dict) -> list[str]:
    if "routing" not in manifest:
        return ["routing: no table (the target serves alone unless air-run is given --speculate)"]
    table = json.loads((root / manifest["routing"]).read_text())
    mem = "both" if "draft" in manifest["models"] else "target"
    lines = [f"routing: {manifest['routing']}, costs {table['measurements']['cost_source']}; "
             f"rows with {'both models' if mem == 'both' else 'the target'} in memory (the file has the other "
             "memory classes):"]
    for key, row in table["rows"].items():
        if key.endswith(f"mem:{mem}"):
            path = f"{row['path']} k={row['k']}" if row["path"] in ("speculative", "lookup") else row["path"]
            lines.append(f"  {key.removesuffix(f'|mem:{mem}'):<34} -> {path:<16} "
                         f"{row['expected_tokens_per_second']:>9.1f} tok/s expected")
    return lines


@main.command("devices")
def devices_command():
    """List the device families and what each needs on this workstation."""
    from air.devices import NEEDS

    from .recipe import load_recipe, packaged_recipes

    by_device = {}
    for name in packaged_recipes():
        by_device.setdefault(load_recipe(name).device, []).append(name)
    for device, needs in NEEDS.items():
        click.echo(f"{device}: recipes {', '.join(by_device.get(device, ['-']))}; needs {needs}")


# The command's name before the rename, kept so that old scripts work.
main.add_command(click.Command("targets", callback=devices_command.callback, hidden=True,
                               help=devices_command.help))


@main.command()
def recipes():
    """List the packaged device recipes."""
    from .recipe import load_recipe, packaged_recipes

    for name in packaged_recipes():
        recipe = load_recipe(name)
        click.echo(f"{name}: device {recipe.device}, {recipe.quantization} weights, "
                   f"{recipe.kv_cache} KV cache, context {recipe.max_context}")


if __name__ == "__main__":
    main()
