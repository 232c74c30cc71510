"""Microbenchmark of the quantized linear kernels (compiler/kernels/packed.py) against the f32 matmul.

    python benchmarks/quant_kernels.py [--rounds 9] [--repeat 5] [--shapes 896x896,151936x896]
                                       [--schemes q4,q8,f32] [--rows 1,5] [--path avx2] [--mcpu haswell]

For each Qwen2.5-0.5B weight shape (N x K) and M activation rows: the time of one call
(median over rounds; within a round every variant runs --repeat times, variants interleaved,
so load from other processes spreads over all of them), the weight bytes it reads per second,
as a fraction of the DRAM roofline and of a plain read loop timed in the same rounds (what
the memory gives right now, on a shared machine), and the verify cost time(M=5) / time(M=1).
Threads: TVM_NUM_THREADS (default: one per physical core, as air-run; TVM alone would take half
the CPUs, one thread on a 2-core machine).

Every timed call starts with the weights flushed from the caches (time_evaluator's
cache_flush_cpu_non_first_arg), as in decoding, where each layer's weights come from DRAM;
small shapes therefore include the cost of a cold start. The activation quantization
(quantize_rows, shared by all matmuls that read the same x) is timed on its own.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import tvm
from tvm.script import tirx as T

import air.devices
from air.runtime.threads import configure_threads
from air.compiler.kernels import common, dense, packed, packing
from air.compiler.kernels.isa import DOT_PATHS, dot_path

SHAPES = [(896, 896), (128, 896), (4864, 896), (896, 4864), (151936, 896)]
ROOFLINE_GBS = 52.9  # best compiled read loop on this machine, 2 threads (shared/PEERS.md)
FLUSH = "cache_flush_cpu_non_first_arg"


def read_loop(total_bytes: int, tasks: int = 64, prefetch_bytes: int = 2048):
    """The best-case weight stream: 8 independent 64-byte XOR accumulators per task, each
    cache line hinted prefetch_bytes ahead (as the dense matmul does; 0: no hints)."""
    words = total_bytes // tasks // 4
    ahead = prefetch_bytes // 4

    @T.prim_func(private=True, s_tir=True)
    def read(a: T.Buffer((tasks, words), "int32"), out: T.Buffer((tasks, 16), "int32")):
        T.func_attr({"op_pattern": 8, "tirx.is_scheduled": True})
        for t in T.parallel(tasks):
            with T.sblock("read"):
                acc = T.sblock_alloc_buffer((8, 16), "int32")
                for j in T.unroll(8):
                    acc[j, T.ramp(0, 1, 16)] = T.Broadcast(T.int32(0), 16)
                for i in T.serial(words // 128):
                    for j in T.unroll(8):
                        if ahead > 0:
                            common.prefetch(a, t, i * 128 + j * 16 + ahead)
                        acc[j, T.ramp(0, 1, 16)] = acc[j, T.ramp(0, 1, 16)] ^ a[t, T.ramp(i * 128 + j * 16, 1, 16)]
                for j in T.unroll(7):
                    acc[0, T.ramp(0, 1, 16)] = acc[0, T.ramp(0, 1, 16)] ^ acc[j + 1, T.ramp(0, 1, 16)]
                out[t, T.ramp(0, 1, 16)] = acc[0, T.ramp(0, 1, 16)]

    return read, (tasks, words)


class Variant:
    """One compiled function with its arguments, and the times measured so far."""

    def __init__(self, module, name, args, weight_bytes):
        self.timer = module.time_evaluator(name, tvm.cpu(), number=1, repeat=1, f_preproc=FLUSH)
        self.args, self.weight_bytes, self.times = args, weight_bytes, []

    def run(self, repeat):
        for _ in range(repeat):
            self.times.append(self.timer(*self.args).mean)

    @property
    def median(self):
        return statistics.median(self.times)

    @property
    def gbs(self):
        return self.weight_bytes / self.median / 1e9


def compile_one(func, name, target):
    return tvm.compile(tvm.IRModule({name: func.with_attr("global_symbol", name)}), target=target).mod


def shape_variants(n, k, schemes, rows, target, path, rng):
    """{(scheme or "quantize", m): Variant} for one weight shape."""
    dev = tvm.cpu()
    weight = rng.standard_normal((n, k), dtype=np.float32) * np.float32(0.02)
    x = {m: rng.standard_normal((m, k), dtype=np.float32) for m in rows}
    xq = {m: [tvm.runtime.tensor(a, dev) for a in packing.quantize_activations(x[m])] for m in rows}
    y = {m: tvm.runtime.empty((m, n), "float32", dev) for m in rows}
    variants = {}
    for scheme in schemes:
        if scheme == "f32":
            module = compile_one(dense.matmul_kernel(n, k, "float32", target), "mm", target)
            w = tvm.runtime.tensor(packing.pack_dense(weight, "float32"), dev)
            for m in rows:
                variants[scheme, m] = Variant(module, "mm", [tvm.runtime.tensor(x[m], dev), w, y[m]], weight.nbytes)
            continue
        arrays = packing.pack(weight, scheme)
        module = compile_one(packed.matmul_kernel(scheme, n, k, target, path), "mm", target)
        args = [tvm.runtime.tensor(arrays[a], dev) for a in ("qs", "scales")]
        for m in rows:
            variants[scheme, m] = Variant(module, "mm", [*xq[m], *args, y[m]], packing.packed_bytes(arrays))
    quantizer = compile_one(packed.quantize_kernel(k), "quantize", target)
    for m in rows:
        variants["quantize", m] = Variant(quantizer, "quantize", [tvm.runtime.tensor(x[m], dev), *xq[m]], 0)
    return variants


def read_variant(target, prefetch_bytes: int = 2048):
    func, shape = read_loop(256 << 20, prefetch_bytes=prefetch_bytes)
    data = tvm.runtime.tensor(np.ones(shape, np.int32), tvm.cpu())
    out = tvm.runtime.empty((shape[0], 16), "int32", tvm.cpu())
    return Variant(compile_one(func, "read", target), "read", [data, out], 4 * shape[0] * shape[1])


def best_read_gbs(target, repeat: int = 9) -> float:
    """GB/s of the fastest read loop: without prefetch hints, or with them 2 or 8 KB ahead
    (the roofline)."""
    best = 0.0
    for prefetch_bytes in (0, 2048, 8192):
        variant = read_variant(target, prefetch_bytes)
        variant.run(repeat)
        best = max(best, variant.gbs)
    return best


def report(n, k, variants, schemes, rows, read_gbs):
    print(f"\n{n} x {k}   (read loop in these rounds: {read_gbs:.1f} GB/s)")
    print(f"  {'weights':8} {'MB':>7} " + " ".join(f"{'M=' + str(m) + ' us':>10} {'GB/s':>6} {'roof':>5} {'read':>5}"
                                                 for m in rows)
          + "".join(f" {'M=' + str(m) + '/M=' + str(rows[0]):>8}" for m in rows[1:]))
    for scheme in schemes:
        cells = [f"{v.median * 1e6:10.1f} {v.gbs:6.1f} {v.gbs / ROOFLINE_GBS:5.0%} {v.gbs / read_gbs:5.0%}"
                 for v in (variants[scheme, m] for m in rows)]
        ratios = "".join(f" {variants[scheme, m].median / variants[scheme, rows[0]].median:8.2f}" for m in rows[1:])
        print(f"  {scheme:8} {variants[scheme, rows[0]].weight_bytes / 1e6:7.2f} " + " ".join(cells) + ratios)
    print("  quantize_rows: " + ", ".join(f"M={m} {variants['quantize', m].median * 1e6:.1f} us" for m in rows))


def model_estimate(times, schemes, rows):
    """Linear layers of one Qwen2.5-0.5B forward (24 layers + LM head) from the shapes' medians."""
    per_layer = {(896, 896): 2, (128, 896): 2, (4864, 896): 2, (896, 4864): 1}
    print("\nQwen2.5-0.5B linear layers per forward (sum of the medians above, quantize_rows not included):")
    for scheme in schemes:
        total = {m: times[(151936, 896), scheme, m] + 24 * sum(count * times[shape, scheme, m]
                                                              for shape, count in per_layer.items()) for m in rows}
        print(f"  {scheme:8} " + ", ".join(f"M={m} {total[m] * 1e3:.2f} ms" for m in rows)
              + "".join(f", M={m}/M={rows[0]} {total[m] / total[rows[0]]:.2f}" for m in rows[1:]))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--shapes", default=",".join(f"{n}x{k}" for n, k in SHAPES))
    parser.add_argument("--schemes", default="q4,q8,f32")
    parser.add_argument("--rows", default="1,5")
    parser.add_argument("--path", choices=list(DOT_PATHS), help="dot product path (default: the target's best)")
    parser.add_argument("--mcpu", help="compile for this LLVM CPU instead of the host's (it must run here)")
    args = parser.parse_args()

    threads = configure_threads(0)
    host = dict(air.devices.host_device().tvm_target)
    if args.mcpu:
        host["mcpu"] = args.mcpu
    target = tvm.target.Target(host)
    path = args.path or dot_path(target)
    schemes = args.schemes.split(",")
    rows = [int(m) for m in args.rows.split(",")]
    print(f"target {target}, {path} kernels, {threads} threads, "
          f"roofline {ROOFLINE_GBS} GB/s, {args.rounds} rounds x {args.repeat} calls, cold weights")
    rng = np.random.default_rng(0)
    read = read_variant(target)
    shapes = [tuple(int(v) for v in shape.split("x")) for shape in args.shapes.split(",")]
    times = {}
    for n, k in shapes:
        variants = shape_variants(n, k, schemes, rows, target, path, rng)
        read.times = []
        for _ in range(args.rounds):
            for v in [*variants.values(), read]:
                v.run(args.repeat)
        report(n, k, variants, schemes, rows, read.gbs)
        times.update({((n, k), *key): v.median for key, v in variants.items()})
        del variants  # frees this shape's weights before the next
    if set(SHAPES) <= set(shapes):
        model_estimate(times, schemes, rows)


if __name__ == "__main__":
    main()
