"""Weight formats and KV caches on real weights: ours against llama.cpp's, on the same model and text.

    python benchmarks/quality.py GGUF TEXT_FILE --llama-cpp DIR [--ctx 512] [--chunks 16] [--threads 2]

GGUF is a quantized model (the README's SmolLM2-135M-Instruct Q4_1). Quantizing values that
already lie on a 4-bit grid again would flatter every 4-bit format that shares the grid, so
the benchmark first writes a **reconstructed original**: each weight moved to a uniformly drawn
point of its own quantization bin (value + U(-d/2, d/2), d the block's step; fixed seed), a
plausible pre-quantization value that the published file would have rounded to the same
number. That f32 GGUF is the reference model of both sides:

  ours       bundles compiled from it at f32, f16, q8 and q4 (KV f16), and at f16 with the
             int8 and int4 KV caches;
  llama.cpp  llama-quantize to F16, Q8_0, Q4_0, Q4_1 and Q4_K_M; llama-perplexity on each
             (KL against the F32 model's saved logits), and F16 with its q8_0 and q4_0 caches.

Both sides score the text as llama-perplexity does: chunks of --ctx tokens, every token of a
chunk's second half predicted from the tokens before it in the chunk. Printed per format: bits
per weight (ours: the bundle's weight bytes per parameter; llama.cpp: its file's bytes per
parameter; both count every tensor, norms and the tied embedding included), perplexity, its
change against the f32 reference of the same side, mean KL divergence against that reference,
and top-1 agreement.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import tempfile
from pathlib import Path

import gguf
import numpy as np

from kv_cache import log_softmax  # benchmarks/kv_cache.py
from llama_cpp import run_tool  # benchmarks/llama_cpp.py

from air.compiler.build import compile_bundle
from air.compiler.recipe import load_recipe
from air.runtime import Bundle

LLAMA_FORMATS = ["F16", "Q8_0", "Q4_0", "Q4_1", "Q4_K_M"]
OUR_FORMATS = ["f16", "q8", "q4"]
KV_TYPES = {"int8": "q8_0", "int4": "q4_0"}  # ours -> llama.cpp's closest cache type
BLOCK_STEP = {"Q4_1": (20, 0), "Q8_0": (34, 0), "Q4_0": (18, 0)}  # bytes per block, offset of its f16 step


def reconstructed_original(source: Path, output: Path, seed: int = 0) -> None:
    """An f32 GGUF of `source` with every quantized weight jittered within its bin (written
    under a temporary name, then renamed: main reuses a finished one)."""
    partial = output.with_name(output.name + ".part")
    reader = gguf.GGUFReader(source)
    writer = gguf.GGUFWriter(partial, reader.fields["general.architecture"].contents())
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name in ("general.architecture", "general.file_type"):
            continue
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), value_type, sub_type=sub_type)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    rng = np.random.default_rng(seed)
    for tensor in reader.tensors:
        values = gguf.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        kind = tensor.tensor_type.name
        if kind in BLOCK_STEP:
            size, offset = BLOCK_STEP[kind]
            blocks = np.asarray(tensor.data).reshape(-1, size)
            step = blocks[:, offset:offset + 2].copy().view(np.float16).astype(np.float32)  # [blocks, 1]
            per_weight = np.repeat(step[:, 0], 32).reshape(values.shape)
            values = values + (rng.random(values.shape, dtype=np.float32) - np.float32(0.5)) * per_weight
        elif kind not in ("F32", "F16", "BF16"):
            raise SystemExit(f"{tensor.name}: no bin known for {kind}; add it to BLOCK_STEP")
        writer.add_tensor(tensor.name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.rename(output)


def chunked_ids(ids: list[int], ctx: int, chunks: int, bos: int | None) -> list[np.ndarray]:
    """The text's first `chunks` windows of ctx tokens, as llama-perplexity cuts them."""
    out = []
    for c in range(min(chunks, len(ids) // ctx)):
        window = np.array(ids[c * ctx:(c + 1) * ctx], dtype=np.int32)
        if bos is not None:
            window[0] = bos
        out.append(window)
    return out


def scored_logprobs(model, window: np.ndarray, step: int = 128) -> np.ndarray:
    """Log-probabilities [ctx/2 - 1, vocab] predicting tokens ctx/2 + 1 .. ctx - 1 of the window."""
    model.reset(len(window))
    rows = np.concatenate([model.verify(window[i:i + step]) for i in range(0, len(window), step)])
    first = len(window) // 2
    return log_softmax(rows[first:-1].astype(np.float64))


def our_rows(bundle: Bundle, windows, reference=None):
    """(perplexity, KL against reference, top-1 agreement, this format's logprobs per window)."""
    nll, kl, top1, kept = [], [], [], []
    for w, window in enumerate(windows):
        logprobs = scored_logprobs(bundle.target, window)
        targets = window[len(window) // 2 + 1:]
        nll.append(-logprobs[np.arange(len(targets)), targets])
        if reference is not None:
            ref = reference[w]
            kl.append((np.exp(ref) * (ref - logprobs)).sum(-1))
            top1.append(logprobs.argmax(-1) == ref.argmax(-1))
        kept.append(logprobs)
    ppl = float(np.exp(np.concatenate(nll).mean()))
    if reference is None:
        return ppl, 0.0, 1.0, kept
    return ppl, float(np.concatenate(kl).mean()), float(np.concatenate(top1).mean()), kept


def run_ours(model_path: Path, text: str, args, work: Path):
    base = load_recipe("host").with_overrides(max_context=args.ctx, kv_cache="f16")
    variants = {"f32": {"quantization": "f32"}}
    variants.update({f: {"quantization": f} for f in OUR_FORMATS})
    variants.update({f"f16 + KV {kv}": {"quantization": "f16", "kv_cache": kv} for kv in KV_TYPES})
    rows, reference, windows = {}, None, None
    for name, changes in variants.items():
        folder = work / re.sub(r"[^a-z0-9]+", "-", name)
        if not (folder / "manifest.json").exists():  # a bundle left in --work by an earlier run is reused
            compile_bundle(str(model_path), None, base.with_overrides(**changes), folder, quiet=True)
        bundle = Bundle.load(folder, threads=args.threads)
        if windows is None:
            windows = chunked_ids(bundle.encode(text), args.ctx, args.chunks, args.bos)
            parameters = weight_bytes(folder) // 4  # f32 comes first: 4 bytes a parameter
        ppl, kl, top1, kept = our_rows(bundle, windows, reference)
        if reference is None:
            reference = kept
        rows[name] = (ppl, kl, top1, 8 * weight_bytes(folder) / parameters)
        print(f"  ours {name}: ppl {ppl:.4f}", flush=True)
    return rows, windows


def weight_bytes(folder: Path) -> int:
    return json.loads((folder / "manifest.json").read_text())["models"]["target"]["weight_bytes"]


def llama_perplexity(tools: Path, model: Path, text_file: Path, args, extra: list[str]) -> dict:
    command = [str(tools / "llama-perplexity"), "-m", str(model), "-f", str(text_file), "-c", str(args.ctx),
               "--chunks", str(args.chunks), "-t", str(args.threads or 2), "-b", str(args.ctx), *extra]
    done = subprocess.run(command, capture_output=True, text=True)
    log = done.stdout + done.stderr
    if done.returncode:
        raise SystemExit(f"llama-perplexity failed on {model.name}:\n{log[-2000:]}")
    found = {}
    for key, pattern in {"ppl": r"Mean PPL\(Q\)\s*:\s*([\d.]+)", "ppl_final": r"Final estimate: PPL = ([\d.]+)",
                         "kl": r"Mean\s+KLD:\s*([\d.]+)", "top1": r"Same top p:\s*([\d.]+)",
                         "chunks": r"over (\d+) chunks"}.items():
        match = re.search(pattern, log)
        if match:
            found[key] = float(match.group(1))
    return found


def llama_quantize(tools: Path, source: Path, output: Path, fmt: str) -> Path:
    """llama.cpp's own quantization of the reference (kept in --work for the next run; written
    under a temporary name first, so an interrupted run leaves nothing that looks finished)."""
    if not output.exists():
        partial = output.with_name(output.name + ".part")
        run_tool([str(tools / "llama-quantize"), str(source), str(partial), fmt])
        partial.rename(output)
    return output


def run_llama_cpp(f32_gguf: Path, text_file: Path, args, work: Path) -> dict:
    tools = Path(args.llama_cpp) / "build" / "bin"
    parameters = sum(int(t.n_elements) for t in gguf.GGUFReader(f32_gguf).tensors)
    base_logits = work / "f32.kld"
    rows = {"F32": llama_perplexity(tools, f32_gguf, text_file, args, ["--kl-divergence-base", str(base_logits)])}
    rows["F32"]["bpw"] = 8 * f32_gguf.stat().st_size / parameters
    print(f"  llama.cpp F32: {rows['F32']}", flush=True)
    for fmt in LLAMA_FORMATS:
        quantized = llama_quantize(tools, f32_gguf, work / f"model-{fmt}.gguf", fmt)
        kld = ["--kl-divergence-base", str(base_logits), "--kl-divergence"]
        rows[fmt] = llama_perplexity(tools, quantized, text_file, args, kld)
        rows[fmt]["bpw"] = 8 * quantized.stat().st_size / parameters  # the file, metadata included
        print(f"  llama.cpp {fmt}: {rows[fmt]}", flush=True)
        if fmt == "F16":
            for ours, theirs in KV_TYPES.items():
                cache = ["-ctk", theirs, "-ctv", theirs, "-fa", "on"]
                rows[f"F16 + KV {theirs}"] = llama_perplexity(tools, quantized, text_file, args, kld + cache)
                rows[f"F16 + KV {theirs}"]["bpw"] = rows["F16"]["bpw"]
                print(f"  llama.cpp F16 + KV {theirs}: {rows[f'F16 + KV {theirs}']}", flush=True)
    return rows


def print_table(ours: dict, theirs: dict) -> None:
    print(f"\n{'side':<10} {'format':<16} {'bpw':>6} {'ppl':>9} {'vs f32':>8} {'mean KL':>9} {'top-1':>6}")
    ref = ours["f32"][0]
    for name, (ppl, kl, top1, bits) in ours.items():
        print(f"{'ours':<10} {name:<16} {bits if bits else float('nan'):>6.2f} {ppl:>9.4f} "
              f"{ppl / ref - 1:>+8.2%} {kl:>9.5f} {top1:>6.3f}")
    if theirs:
        ref = theirs["F32"].get("ppl") or theirs["F32"].get("ppl_final")
        for name, row in theirs.items():
            ppl = row.get("ppl") or row.get("ppl_final", float("nan"))
            top1 = row.get("top1", 100.0 if name == "F32" else float("nan")) / 100
            print(f"{'llama.cpp':<10} {name:<16} {row.get('bpw', float('nan')):>6.2f} {ppl:>9.4f} "
                  f"{ppl / ref - 1:>+8.2%} {row.get('kl', 0.0):>9.5f} {top1:>6.3f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("gguf", type=Path)
    parser.add_argument("text", type=Path)
    parser.add_argument("--llama-cpp", help="llama.cpp folder from benchmarks/build_llama_cpp.sh (omit: ours only)")
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--chunks", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bos", type=int, help="token id to start each chunk with (llama.cpp does where the model "
                        "asks for BOS; SmolLM2 does not)")
    parser.add_argument("--work", type=Path, help="folder for the models and bundles (default: a new temporary one)")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="quality-"))
    work.mkdir(parents=True, exist_ok=True)
    f32_gguf = work / "reconstructed-f32.gguf"
    if not f32_gguf.exists():
        reconstructed_original(args.gguf, f32_gguf)
    text = args.text.read_text()
    print(f"reference: {f32_gguf} (from {args.gguf.name}, every weight jittered within its bin)")
    ours, windows = run_ours(f32_gguf, text, args, work)
    print(f"text: {args.text}, {len(windows)} chunks of {args.ctx} tokens, "
          f"{len(windows) * (args.ctx // 2 - 1)} scored tokens")
    theirs = run_llama_cpp(f32_gguf, args.text, args, work) if args.llama_cpp else {}
    print_table(ours, theirs)


if __name__ == "__main__":
    main()
