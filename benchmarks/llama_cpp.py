"""llama.cpp on the same weights, for side-by-side benchmarks (built by build_llama_cpp.sh).

    python benchmarks/llama_cpp.py LLAMA_DIR CHECKPOINT --formats q4,q8,f16 [--threads 2]

converts a Hugging Face checkpoint with llama.cpp's own convert_hf_to_gguf.py (F16 and Q8_0;
Q4_0 with llama-quantize), caching the GGUF files beside the build, and runs llama-bench:
decode (64 tokens) and prefill (128-token prompt) tokens/s, medians of its repetitions.

Two adjustments let the converter take the project's generated checkpoints; neither changes a
weight: the pre-tokenizer of a locally trained tokenizer is named explicitly ("qwen2", the
same byte-level split; the converter otherwise refuses an unknown tokenizer hash), and a
Qwen2 tokenizer whose vocabulary already fills the embedding gets its last token renamed to
the "<|endoftext|>" that transformers would otherwise append past the end of the table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

GGUF_TYPES = {"q4": "Q4_0", "q8": "Q8_0", "f16": "F16"}  # our format -> the llama.cpp format compared with it

# Run in a child interpreter: import the converter, name the pre-tokenizer, convert.
_CONVERT = """
import sys
sys.path.insert(0, sys.argv[1])
sys.argv = ["convert_hf_to_gguf.py", *sys.argv[2:]]
import conversion.base as base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "qwen2"
import convert_hf_to_gguf
convert_hf_to_gguf.main()
"""


def gguf_file(llama_dir: Path, checkpoint: Path, fmt: str) -> Path:
    """The checkpoint as GGUF in llama.cpp's format matching ours (converted once, then cached)."""
    digest = hashlib.sha256((checkpoint / "model.safetensors").read_bytes()[:1 << 20]).hexdigest()[:12] \
        if (checkpoint / "model.safetensors").exists() else hashlib.sha256(str(checkpoint).encode()).hexdigest()[:12]
    cache = llama_dir / "gguf" / f"{checkpoint.name}-{digest}"
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"{GGUF_TYPES[fmt]}.gguf"
    if target.exists():
        return target
    if fmt == "q4":
        source = gguf_file(llama_dir, checkpoint, "f16")
        run_tool([str(llama_dir / "build/bin/llama-quantize"), str(source), str(target) + ".part", "Q4_0"])
    else:
        with tempfile.TemporaryDirectory() as staging:
            _stage_checkpoint(checkpoint, Path(staging))
            run_tool([sys.executable, "-c", _CONVERT, str(llama_dir / "src"), staging,
                  "--outtype", GGUF_TYPES[fmt].lower(), "--outfile", str(target) + ".part"])
    Path(str(target) + ".part").rename(target)
    return target


def _stage_checkpoint(checkpoint: Path, staging: Path) -> None:
    for item in checkpoint.iterdir():
        if item.name != "tokenizer.json":
            (staging / item.name).symlink_to(item.resolve())
    tokenizer = json.loads((checkpoint / "tokenizer.json").read_text())
    config = json.loads((checkpoint / "config.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    names = {t["content"] for t in tokenizer.get("added_tokens", [])} | set(vocab)
    if "<|endoftext|>" not in names and config.get("model_type") == "qwen2":
        last = config["vocab_size"] - 1
        for token in tokenizer.get("added_tokens", []):
            if token["id"] == last:
                token["content"] = "<|endoftext|>"
        for name, index in list(vocab.items()):
            if index == last:
                vocab["<|endoftext|>"] = vocab.pop(name)
    (staging / "tokenizer.json").write_text(json.dumps(tokenizer))


def run_tool(command: list[str]) -> str:
    """Run a llama.cpp tool; its stdout, or RuntimeError with the end of its stderr."""
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{Path(command[0]).name} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def bench(llama_dir: Path, model: Path, threads: int, repetitions: int = 5, prompt: int = 128) -> dict:
    """llama-bench: {"decode": tokens/s, "prefill": tokens/s}, medians over the repetitions
    (prompt 0: decode only)."""
    out = run_tool([str(llama_dir / "build/bin/llama-bench"), "-m", str(model), "-t", str(threads),
                    "-p", str(prompt), "-n", "64", "-r", str(repetitions), "-o", "json"])
    result = {}
    for test in json.loads(out):
        key = "prefill" if test["n_prompt"] else "decode"
        result[key] = statistics.median(test["samples_ts"])
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("llama_dir", type=Path)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--formats", default="q4,q8,f16")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    for fmt in args.formats.split(","):
        model = gguf_file(args.llama_dir, args.checkpoint, fmt)
        r = bench(args.llama_dir, model, args.threads)
        print(f"llama.cpp {GGUF_TYPES[fmt]:5} decode {r['decode']:7.1f} tok/s   prefill {r['prefill']:7.1f} tok/s")


if __name__ == "__main__":
    main()
