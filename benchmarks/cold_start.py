"""Cold start of air-run: time to first token of a fresh process, and where it goes.

    python benchmarks/cold_start.py BUNDLE [--runs 5] [--prompt TEXT] [--max-tokens 8] [--trust KEY.pub]

Prints, as medians (and min-max) over --runs fresh processes:
- first start (an empty verification cache: every file hashed) and second start (hashes
  remembered): seconds from spawning `air-run` to the first byte of generated text on stdout;
- a phase split measured inside a fresh process that takes the same steps as air-run
  (import, manifest + signature, hashes, tokenizer, model.so, weights, first prefill), with
  counts that do not depend on the machine's load: modules imported, bytes of weights
  copied into anonymous memory, resident memory after loading.
With --trust, every start checks the bundle's signature against that public key.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Runs in the child: one air-run start, step by step, printing one JSON line of timings.
PHASES = r"""
import json, sys, time
marks = [("start", time.perf_counter())]
def mark(name): marks.append((name, time.perf_counter()))
def anon_kib():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"): return int(line.split()[1])
from pathlib import Path
import air.runtime.cli
from air.runtime.startup import import_tvm
import_tvm()
from air.runtime.bundle import Bundle, check_machine
from air.runtime.threads import configure_threads
from air.runtime.manifest import read_manifest, verify_files
from air.runtime.model import CompiledModel
from air.runtime.signing import read_signature
from air.runtime.trust import Trust
from air.runtime.verified import VerificationCache
from air.runtime.text import load_tokenizer
import tvm
mark("import")
root = Path(sys.argv[1])
manifest = read_manifest(root)
Trust.configure(tuple(sys.argv[3:])).check(manifest, read_signature(root), str(root))
check_machine(manifest)
mark("manifest + signature")
cache = VerificationCache(root, manifest)
verify_files(root, manifest, cache.sha256)
cache.save()
mark("hashes")
configure_threads(int(manifest.get("runtime", {}).get("threads", 0)))
tokenizer = load_tokenizer(root)
ids = tokenizer.encode(sys.argv[2]).ids
mark("tokenizer")
entry = manifest["models"]["target"]
library = tvm.runtime.load_module(str(root / entry["library"]))
mark("model.so")
before = anon_kib()
model = CompiledModel(root, entry, tvm.cpu(), "target")
mark("weights")
copied = (anon_kib() - before) * 1024
model.reset(len(ids) + 16)
model.prefill(ids)
mark("first prefill")
phases = {name: t - marks[i][1] for i, (name, t) in enumerate(marks[1:])}
print(json.dumps({"phases": phases, "modules": len(sys.modules), "weights_anon_bytes": copied,
                  "weight_bytes": entry["weight_bytes"], "rss_kib": anon_kib()}))
"""


def first_text_seconds(command: list[str], env: dict) -> float:
    """Seconds from spawning `command` to the first byte on its stdout (the process then runs to its end)."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    first = proc.stdout.read(1)
    elapsed = time.perf_counter() - start
    out, err = proc.communicate()
    if proc.returncode != 0 or not first:
        raise SystemExit(f"air-run failed ({proc.returncode}): {err.decode()[-400:]}")
    return elapsed


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} s (min {min(values):.3f}, max {max(values):.3f})"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--prompt", default="def read_config(path):")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--trust", help="public key the bundle's signature must verify against")
    args = parser.parse_args()

    command = [sys.executable, "-m", "air.runtime", args.bundle, "--prompt", args.prompt,
               "--max-tokens", str(args.max_tokens)] + (["--trust", args.trust] if args.trust else [])
    scratch = Path(tempfile.mkdtemp(prefix="air-cold-start-"))
    try:
        first, second, phases = [], [], []
        for run in range(args.runs):
            env = dict(os.environ, AIR_VERIFIED_CACHE=str(scratch / f"cache-{run}"))
            first.append(first_text_seconds(command, env))  # an empty cache: every file hashed
            second.append(first_text_seconds(command, env))  # the same cache: hashes remembered
            env["AIR_VERIFIED_CACHE"] = str(scratch / f"phases-{run}")
            out = subprocess.run([sys.executable, "-c", PHASES, args.bundle, args.prompt] + ([args.trust] if args.trust else []), env=env,
                                 capture_output=True, text=True, check=True).stdout
            phases.append(json.loads(out.splitlines()[-1]))
    finally:
        shutil.rmtree(scratch)

    print(f"air-run {args.bundle}, {args.runs} runs each")
    print(f"first start  (every file hashed): time to first text {spread(first)}")
    print(f"second start (hashes remembered): time to first text {spread(second)}")
    print("phases of a first start:")
    for name in phases[0]["phases"]:
        print(f"  {name:22s} {spread([p['phases'][name] for p in phases])}")
    last = phases[-1]
    print(f"modules imported: {last['modules']}; weights copied into anonymous memory: "
          f"{last['weights_anon_bytes'] / 2**20:.1f} MiB of {last['weight_bytes'] / 2**20:.1f} MiB; "
          f"anonymous RSS after the first prefill: {last['rss_kib'] / 1024:.1f} MiB")


if __name__ == "__main__":
    main()
