"""Weight formats side by side on prebuilt bundles of one checkpoint: speed against the
memory roofline, and accuracy against the f32 bundle.

    python benchmarks/formats.py --text FILE f32=dist/m-f32 q8=dist/m-q8 q4=dist/m-q4 [--threads 2]
        [--rounds 3] [--llama-cpp DIR --checkpoint CKPT]

Per bundle (each measured in its own process, so peak RSS is its own): weight bytes read per
decoded token, decode tokens/s (median step at a 128-token context), prefill tokens/s (128-token
prompt), verify(5)/decode, peak RSS, the fraction of the roofline (bandwidth of a compiled
8-accumulator read loop, the fastest without prefetch hints or with them 2 or 8 KB ahead,
measured in the same run / bytes per token); then top-1 agreement and
mean KL of next-token distributions against the first bundle (f32) over TEXT.

With --llama-cpp (a build from benchmarks/build_llama_cpp.sh) and --checkpoint (the checkpoint
the bundles were compiled from), llama.cpp runs on the same weights in the same rounds:
q4 against Q4_0, q8 against Q8_0, f16 against F16 (llama-bench, converted by llama.cpp's own
script), and the ratios are printed. Rounds alternate the two; the figures are medians.
"""

import argparse
import multiprocessing
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

import llama_cpp  # noqa: E402  (benchmarks/llama_cpp.py)


def _timed(fn, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(path, threads, text, queue):
    """Speed (and, given text, the logits over it) of one bundle, in this child process."""
    from air.runtime import Bundle

    bundle = Bundle.load(path, threads=threads)
    model = bundle.target
    rng = np.random.default_rng(0)
    prompt = rng.integers(2, model.vocab_size, size=128).astype(np.int32)
    model.reset(512)
    model.prefill(prompt)
    prefill = _timed(lambda: (model.reset(512), model.prefill(prompt)), 5)

    def step():
        model.rollback(128)
        model.decode(7)

    decode = _timed(step, 40)
    verify = _timed(lambda: (model.rollback(128), model.verify(prompt[:5])), 20)
    logits = None
    if text is not None:
        ids = np.array(bundle.encode(text)[:384], dtype=np.int32)
        model.reset(len(ids))
        logits = np.concatenate([model.verify(ids[i:i + 64]) for i in range(0, len(ids), 64)])
    queue.put({"decode": decode, "prefill": prefill, "verify_ratio": verify / decode,
               "weight_bytes": bundle.manifest["models"]["target"]["weight_bytes"],
               "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "logits": logits})


def read_bandwidth(threads):
    import tvm
    from quant_kernels import best_read_gbs

    from air.devices import host_device

    from air.runtime.threads import configure_threads

    configure_threads(threads)
    return best_read_gbs(tvm.target.Target(host_device().tvm_target))


def _in_child(path, threads, text):
    spawn = multiprocessing.get_context("spawn")
    queue = spawn.Queue()
    child = spawn.Process(target=measure, args=(path, threads, text, queue))
    child.start()
    result = queue.get()
    child.join()
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundles", nargs="+", help="NAME=PATH, the f32 reference first")
    parser.add_argument("--text", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--llama-cpp", type=Path, help="llama.cpp build (benchmarks/build_llama_cpp.sh)")
    parser.add_argument("--checkpoint", type=Path, help="the checkpoint the bundles were built from")
    args = parser.parse_args()
    text = args.text.read_text()
    bundles = dict(item.partition("=")[::2] for item in args.bundles)
    peers = {}
    if args.llama_cpp:
        if not args.checkpoint:
            parser.error("--llama-cpp needs --checkpoint")
        peers = {name: llama_cpp.gguf_file(args.llama_cpp, args.checkpoint, name)
                 for name in bundles if name in llama_cpp.GGUF_TYPES}
    rounds = {name: [] for name in bundles}
    peer_rounds = {name: [] for name in peers}
    logits = {}
    for index in range(args.rounds):
        for name, path in bundles.items():
            result = _in_child(path, args.threads, text if index == 0 else None)
            if index == 0:
                logits[name] = result.pop("logits")
            rounds[name].append(result)
        for name, model in peers.items():
            peer_rounds[name].append(llama_cpp.bench(args.llama_cpp, model, args.threads, repetitions=3))
    results = {name: {key: statistics.median(r[key] for r in runs) for key in runs[0] if key != "logits"}
               for name, runs in rounds.items()}
    bandwidth = read_bandwidth(args.threads)
    reference = logits[next(iter(logits))]
    ref = np.exp(reference - reference.max(-1, keepdims=True))
    ref /= ref.sum(-1, keepdims=True)
    print(f"read loop: {bandwidth:.1f} GB/s ({args.threads} threads); medians of {args.rounds} rounds")
    print(f"{'format':<7} {'MB/token':>8} {'decode':>8} {'ms/tok':>7} {'GB/s':>6} {'roofline':>9} {'prefill':>8} "
          f"{'verify5':>8} {'RSS MB':>7} {'top1':>6} {'KL':>9}")
    for name, r in results.items():
        probs = np.exp(logits[name] - logits[name].max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        kl = float((ref * (np.log(ref + 1e-30) - np.log(probs + 1e-30))).sum(-1).mean())
        top1 = float((probs.argmax(-1) == ref.argmax(-1)).mean())
        roofline = bandwidth * 1e9 / r["weight_bytes"]
        print(f"{name:<7} {r['weight_bytes'] / 1e6:>8.1f} {1 / r['decode']:>8.1f} {r['decode'] * 1e3:>7.2f} "
              f"{r['weight_bytes'] / r['decode'] / 1e9:>6.1f} {(1 / r['decode']) / roofline:>8.0%} "
              f"{128 / r['prefill']:>8.1f} {r['verify_ratio']:>8.2f} {r['rss_mb']:>7.0f} {top1:>6.3f} {kl:>9.5f}")
    if peers:
        print(f"\nllama.cpp (llama-bench, same checkpoint, {args.threads} threads), medians of {args.rounds} rounds:")
        print(f"{'format':<7} {'llama.cpp':>9} {'decode':>8} {'air':>8} {'ratio':>6} {'prefill':>8} {'air':>8} {'ratio':>6}")
        for name in peers:
            decode = statistics.median(r["decode"] for r in peer_rounds[name])
            prefill = statistics.median(r["prefill"] for r in peer_rounds[name])
            ours_decode, ours_prefill = 1 / results[name]["decode"], 128 / results[name]["prefill"]
            print(f"{name:<7} {llama_cpp.GGUF_TYPES[name]:>9} {decode:>8.1f} {ours_decode:>8.1f} {ours_decode / decode:>6.2f} "
                  f"{prefill:>8.1f} {ours_prefill:>8.1f} {ours_prefill / prefill:>6.2f}")


if __name__ == "__main__":
    main()
