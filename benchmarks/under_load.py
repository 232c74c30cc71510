"""Decode while another process holds a core: the default (adaptive) thread count against fixed ones.

    python benchmarks/under_load.py BUNDLE [--tokens 256] [--rounds 3] [--threads 2]
        [--llama-cpp DIR --checkpoint CKPT]

Target alone, greedy, a fixed number of tokens. Each setting runs in its own process (TVM sizes
its thread pool once per process): `adaptive` is air-run's default (the recipe's thread count,
shed to one while that is faster, runtime/threads.py), `fixed N` is `--threads N`. First quiet,
then with one busy-loop process pinned to the last CPU. Prints tokens/s (median over rounds)
and the ratios the issue asks for. With --llama-cpp and the bundle's source checkpoint,
llama-bench decodes the same weights (Q4_0 for a q4 bundle, Q8_0 for q8) with --threads
threads under the same two loads.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import llama_cpp

PROMPT = "def read_config(path):\n    "


def one_setting(bundle: str, threads: int | None, tokens: int, rounds: int) -> list[float]:
    from air.runtime import Bundle

    loaded = Bundle.load(bundle, threads=threads)
    loaded.generate(prompt=PROMPT, max_tokens=16, speculate=0, ignore_eos=True)  # warm up
    rates = []
    for _ in range(rounds):
        result = loaded.generate(prompt=PROMPT, max_tokens=tokens, speculate=0, ignore_eos=True)
        rates.append(result.stats["decode_tokens_per_second"])
    return rates


def measure(bundle: str, threads: int | None, tokens: int, rounds: int) -> float:
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); from under_load import one_setting; "
            "print(json.dumps(one_setting(sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))))")
    out = subprocess.run([sys.executable, "-c", code, os.path.dirname(os.path.abspath(__file__)), bundle,
                          json.dumps(threads), str(tokens), str(rounds)],
                         capture_output=True, text=True, check=True)
    return statistics.median(json.loads(out.stdout.strip().splitlines()[-1]))


def busy_core() -> subprocess.Popen:
    loop = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    last = max(os.sched_getaffinity(0))
    os.sched_setaffinity(loop.pid, {last})
    time.sleep(0.5)
    return loop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="the multi-thread count to compare with one")
    parser.add_argument("--llama-cpp", type=Path, help="llama.cpp build (benchmarks/build_llama_cpp.sh)")
    parser.add_argument("--checkpoint", type=Path, help="the bundle's source checkpoint, for llama.cpp")
    args = parser.parse_args()
    settings = {"adaptive": None, f"fixed {args.threads}": args.threads, "fixed 1": 1}
    peer = _peer_model(args) if args.llama_cpp else None
    results = {}
    for load in ("quiet", "one core busy"):
        loop = busy_core() if load != "quiet" else None
        try:
            for name, threads in settings.items():
                results[load, name] = measure(args.bundle, threads, args.tokens, args.rounds)
                print(f"{load:14s} {name:10s} {results[load, name]:8.1f} tokens/s", flush=True)
            if peer is not None:
                rate = llama_cpp.bench(args.llama_cpp, peer, args.threads, args.rounds, prompt=0)["decode"]
                results[load, "llama.cpp"] = rate
                print(f"{load:14s} {'llama.cpp':10s} {rate:8.1f} tokens/s ({peer.stem}, {args.threads} threads)",
                      flush=True)
        finally:
            if loop is not None:
                loop.kill()
                loop.wait()
    many = f"fixed {args.threads}"
    print(f"quiet: adaptive / {many} = {results['quiet', 'adaptive'] / results['quiet', many]:.2f}")
    print(f"one core busy: adaptive / fixed 1 = "
          f"{results['one core busy', 'adaptive'] / results['one core busy', 'fixed 1']:.2f}, "
          f"adaptive / {many} = {results['one core busy', 'adaptive'] / results['one core busy', many]:.2f}")
    if peer is not None:
        print(f"adaptive / llama.cpp: quiet {results['quiet', 'adaptive'] / results['quiet', 'llama.cpp']:.2f}, "
              f"one core busy {results['one core busy', 'adaptive'] / results['one core busy', 'llama.cpp']:.2f}")


def _peer_model(args) -> Path:
    if args.checkpoint is None:
        raise SystemExit("--llama-cpp needs --checkpoint, the bundle's source checkpoint")
    manifest = json.loads((Path(args.bundle) / "manifest.json").read_text())
    return llama_cpp.gguf_file(args.llama_cpp, args.checkpoint, manifest["models"]["target"]["quantization"])


if __name__ == "__main__":
    main()
