"""Print a fingerprint of every hand-written kernel a model can contain, for refactoring checks.

Builds the Relax module of small decoders (no compilation) for every weight format, KV-cache
dtype, windowed cache, Qwen3 head norms and several CPU targets (each dot-product path), and
prints one line per distinct PrimFunc: its name, the sha256 of its TVMScript and its structural
hash. Run it in two trees and diff the outputs: equal lines mean the kernels are unchanged.

    python tools/kernel_fingerprint.py > before.txt     # --scripts DIR also writes every script
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import tvm
import tvm_ffi

from air.compiler.kv_layouts import KVLayout
from air.compiler.layers import WeightFormat
from air.compiler.model import CausalLM
from air.compiler.spec import DecoderSpec

TARGETS = {
    "avx2": {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell", "num-cores": 2},
    "avx512": {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "skylake-avx512", "num-cores": 4},
    "vnni": {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "cascadelake", "num-cores": 8},
    "sdot": {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76",
             "mattr": ["+neon", "+dotprod"], "num-cores": 4},
    "neon": {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"],
             "num-cores": 4},
}


def spec(qk_norm: bool, large: bool) -> DecoderSpec:
    """One layer; widths not a multiple of the 16-row tile, a K of two chunks (1088 = 34 blocks),
    and (large) weights past the serial thresholds."""
    hidden, inter, vocab = (512, 1408, 1000) if large else (64, 1088, 200)
    return DecoderSpec(architecture="Qwen3ForCausalLM" if qk_norm else "LlamaForCausalLM", vocab_size=vocab,
                       hidden_size=hidden, intermediate_size=inter, num_layers=1, num_heads=4, num_kv_heads=2,
                       head_dim=hidden // 4 if large else 32, rms_norm_eps=1e-6, rope_theta=10000.0,
                       rope_scaling=None, partial_rotary_factor=1.0, tie_word_embeddings=not large, qkv_bias=qk_norm, o_bias=False,
                       mlp_bias=False, qk_norm=qk_norm, max_position_embeddings=4096, sliding_window=None)


def cases():
    for target in TARGETS:
        for scheme in ("f32", "f16", "q8", "q4"):
            for large in (False, True):
                yield target, scheme, "f16", 0, 0, False, large
    for kind in ("f32", "f16", "int8", "int4"):
        for window, sinks in ((0, 0), (64, 4)):
            for qk_norm in (False, True):
                yield "avx2", "q8", kind, window, sinks, qk_norm, False


def kernels(target, scheme, kind, window, sinks, qk_norm, large):
    s = spec(qk_norm, large)
    kv = KVLayout(s, kind, 512, sinks, window)
    model = CausalLM(s, kv, WeightFormat(scheme, json.dumps(TARGETS[target])))
    module, _ = model.export_tvm(spec=model.export_spec())
    for gv, func in module.functions.items():
        if isinstance(func, tvm.tirx.PrimFunc):
            yield gv.name_hint, func


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scripts", type=Path, help="also write each distinct kernel's TVMScript here")
    parser.add_argument("--only", default="", help="only the cases whose name starts so (e.g. vnni/q4)")
    args = parser.parse_args()
    seen = set()
    for case in cases():
        if not "/".join(map(str, case)).startswith(args.only):
            continue
        for name, func in kernels(*case):
            script = func.script()
            digest = hashlib.sha256(script.encode()).hexdigest()[:16]
            if digest in seen:
                continue
            seen.add(digest)
            print(f"{'/'.join(map(str, case))} {name} {digest} {tvm_ffi.structural_hash(func) & 0xffffffffffffffff:x}", flush=True)
            if args.scripts:
                args.scripts.mkdir(parents=True, exist_ok=True)
                (args.scripts / f"{digest}.py").write_text(script)


if __name__ == "__main__":
    main()
