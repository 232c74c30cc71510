"""Weight formats side by side on prebuilt bundles of one checkpoint: speed against the
memory roofline, and accuracy against the f32 bundle.

    python benchmarks/formats.py --text FILE f32=dist/m-f32 q8=dist/m-q8 q4=dist/m-q4 [--threads 2]

Per bundle (each measured in its own process, so peak RSS is its own): weight bytes read per
decoded token, decode tokens/s (median step at a 128-token context), prefill tokens/s (128-token
prompt), verify(5)/decode, peak RSS, the fraction of the roofline (bandwidth of a compiled
8-accumulator read loop, measured in the same run / bytes per token); then top-1 agreement and
mean KL of next-token distributions against the first bundle (f32) over TEXT.
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


def _timed(fn, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(path, threads, text, queue):
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
    ids = np.array(bundle.encode(text)[:384], dtype=np.int32)
    model.reset(len(ids))
    logits = np.concatenate([model.verify(ids[i:i + 64]) for i in range(0, len(ids), 64)])
    queue.put({"decode": decode, "prefill": prefill, "verify_ratio": verify / decode,
               "weight_bytes": bundle.manifest["models"]["target"]["weight_bytes"],
               "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "logits": logits})


def read_bandwidth(threads):
    import tvm
    from quant_kernels import read_variant

    from air.targets import host_device

    tvm.get_global_func("runtime.config_threadpool")(0, threads)
    variant = read_variant(tvm.target.Target(host_device().tvm_target))
    variant.run(9)
    return variant.gbs


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundles", nargs="+", help="NAME=PATH, the f32 reference first")
    parser.add_argument("--text", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    text = args.text.read_text()
    context = multiprocessing.get_context("spawn")
    results = {}
    for item in args.bundles:
        name, _, path = item.partition("=")
        queue = context.Queue()
        child = context.Process(target=measure, args=(path, args.threads, text, queue))
        child.start()
        results[name] = queue.get()
        child.join()
    bandwidth = read_bandwidth(args.threads)
    reference = results[next(iter(results))]["logits"]
    ref = np.exp(reference - reference.max(-1, keepdims=True))
    ref /= ref.sum(-1, keepdims=True)
    print(f"read loop: {bandwidth:.1f} GB/s ({args.threads} threads)")
    print(f"{'format':<7} {'MB/token':>8} {'decode':>8} {'ms/tok':>7} {'roofline':>9} {'prefill':>8} "
          f"{'verify5':>8} {'RSS MB':>7} {'top1':>6} {'KL':>9}")
    for name, r in results.items():
        probs = np.exp(r["logits"] - r["logits"].max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        kl = float((ref * (np.log(ref + 1e-30) - np.log(probs + 1e-30))).sum(-1).mean())
        top1 = float((probs.argmax(-1) == ref.argmax(-1)).mean())
        roofline = bandwidth * 1e9 / r["weight_bytes"]
        print(f"{name:<7} {r['weight_bytes'] / 1e6:>8.1f} {1 / r['decode']:>8.1f} {r['decode'] * 1e3:>7.2f} "
              f"{(1 / r['decode']) / roofline:>8.0%} {128 / r['prefill']:>8.1f} {r['verify_ratio']:>8.2f} "
              f"{r['rss_mb']:>7.0f} {top1:>6.3f} {kl:>9.5f}")


if __name__ == "__main__":
    main()
