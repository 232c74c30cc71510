"""The packed (q8 / q4) linear kernels (compiler/kernels/packed.py, layout.py, packing.py):
packing, the activation quantizer and the matmul on each dot product path, against numpy models
of the same arithmetic."""

import functools
import platform

import numpy as np
import pytest
import tvm
from tvm.target import codegen

from air.compiler.kernels import packed, packing
from air.compiler.kernels.isa import DOT_PATHS, dot_path
from air.compiler.kernels.layout import SCHEMES, PackedLayout
from air.devices import host_device
from helpers import host_target

HOST = host_target()
X86 = platform.machine() == "x86_64"
# N not a multiple of the 16-row tile; K of 3 blocks, and of 34 (two chunks of K, see layout.K_CHUNK).
SHAPES = [(72, 96), (40, 1088)]
ROWS = [1, 2, 3, 4, 5, 6, 7, 9, 40]  # decode, verify passes (every m % 8), a prefill chunk
# Measured relative (Frobenius) error of y against x @ W.T in f32, normal x and W: q8 about
# 0.0075, q4 about 0.08-0.09 (the bounds leave room for other seeds).
F32_ERROR = {"q8": 0.015, "q4": 0.12}


def path_target(path):
    """A target this machine runs that uses `path`; None if there is none."""
    host = dict(host_device().tvm_target)
    if X86 and path == "avx2":
        host["mcpu"] = "haswell"
    if X86 and path == "generic":
        host["mcpu"] = "x86-64-v2"  # no AVX at all: runs on any x86_64 machine
    target = tvm.target.Target(host)
    needs = {"vnni": ["avx512vnni", "avx512bw"], "avx512": ["avx512bw"], "avx2": ["avx2"], "sdot": ["dotprod"],
             "smull": ["neon"]}
    if path in needs and not codegen.llvm_cpu_has_features(needs[path], HOST):
        return None
    return target


# The host's own path on every shape; the others (same loops, another dot product) on one.
BEST = dot_path(HOST)
CASES = [(scheme, path, n, k) for scheme in SCHEMES for path in DOT_PATHS
         for n, k in (SHAPES if path == BEST else SHAPES[:1])]


def linear_funcs(scheme, n, k, target, path=None):
    """[(name, PrimFunc)]: the activation quantizer for K, then the matmul."""
    return [(f"quantize_rows_k{k}", packed.quantize_kernel(k)),
            (f"matmul_{scheme}_n{n}_k{k}", packed.matmul_kernel(scheme, n, k, target, path))]


@functools.cache
def compiled(scheme, path):
    target = path_target(path)
    shapes = SHAPES if path == BEST else SHAPES[:1]
    funcs = dict(f for n, k in shapes for f in linear_funcs(scheme, n, k, target, path))
    mod = tvm.IRModule({name: func.with_attr("global_symbol", name) for name, func in funcs.items()})
    return tvm.compile(mod, target=target)


def run_linear(lib, scheme, packed, x, n):
    dev = tvm.cpu()
    m, k = x.shape
    xq = tvm.runtime.empty((m, k // 4), "int32", dev)
    xd = tvm.runtime.empty((m, k // 32), "float32", dev)
    xs = tvm.runtime.empty((m, k // 32), "float32", dev)
    y = tvm.runtime.empty((m, n), "float32", dev)
    quantize, matmul = f"quantize_rows_k{k}", f"matmul_{scheme}_n{n}_k{k}"  # linear_funcs' names
    lib[quantize](tvm.runtime.tensor(x, dev), xq, xd, xs)
    lib[matmul](xq, xd, xs, tvm.runtime.tensor(packed["qs"], dev), tvm.runtime.tensor(packed["scales"], dev), y)
    return xq.numpy(), xd.numpy(), xs.numpy(), y.numpy()


@pytest.mark.parametrize("scheme,path,n,k", CASES, ids=[f"{s}-{p}-{n}x{k}" for s, p, n, k in CASES])
def test_linear_matches_reference(scheme, path, n, k):
    if path_target(path) is None:
        pytest.skip(f"this machine cannot run the {path} path")
    lib = compiled(scheme, path)
    rng = np.random.default_rng(n + k)
    weight = rng.standard_normal((n, k), dtype=np.float32) * np.float32(0.02)
    packed = packing.pack(weight, scheme)
    w = packing.dequantize(packed, scheme, n, k).astype(np.float64)
    for m in ROWS:
        x = rng.standard_normal((m, k), dtype=np.float32)
        x[0, :32] = 0  # an all-zero activation block
        xq, xd, xs, y = run_linear(lib, scheme, packed, x, n)

        # The activation quantizer agrees with its numpy model.
        ref_q, ref_d, ref_s = packing.quantize_activations(x)
        np.testing.assert_array_equal(xq, ref_q)
        np.testing.assert_allclose(xd, ref_d, rtol=1e-6)
        np.testing.assert_allclose(xs, ref_s, rtol=1e-5, atol=1e-6)

        # Same quantized operands: only float rounding differs.
        reference = packing.activations_f32(xq, xd).astype(np.float64) @ w.T
        np.testing.assert_allclose(y, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())

        # Against the unquantized product.
        exact = x.astype(np.float64) @ weight.astype(np.float64).T
        assert np.linalg.norm(y - exact) / np.linalg.norm(exact) < F32_ERROR[scheme]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_pack_roundtrip(scheme):
    rng = np.random.default_rng(1)
    n, k = 37, 320  # 10 blocks: q8's scale groups of 4 blocks end with a partial one
    weight = rng.standard_normal((n, k), dtype=np.float32)
    weight[3, 32:] = 0  # all-zero blocks (and q8 groups) stay exactly zero
    packed = packing.pack(weight, scheme)
    tiles, blocks = -(-n // 16), k // 32
    groups = -(-blocks // 4) if scheme == "q8" else blocks
    assert packed["qs"].shape == (tiles * blocks, 512 if scheme == "q8" else 256)
    assert packed["scales"].shape == (tiles * groups, 16 if scheme == "q8" else 32)
    assert (packed["qs"].shape, packed["scales"].shape) == PackedLayout(scheme, n, k).shapes
    assert packed["qs"].dtype == np.uint8 and packed["scales"].dtype == np.float16
    assert packing.packed_bytes(packed) == tiles * blocks * (512 if scheme == "q8" else 256) \
        + tiles * groups * (32 if scheme == "q8" else 64)
    w = packing.dequantize(packed, scheme, n, k)
    assert w.shape == (n, k)
    assert np.all(w[3, 32:] == 0)
    # Each value is within half a quantization step of its scale group (f16 scales add a little).
    per = 128 if scheme == "q8" else 32
    padded = np.zeros((n, -(-k // per) * per), np.float32)
    padded[:, :k] = weight
    group = padded.reshape(n, -1, per)
    step = np.abs(group).max(axis=2) / 127 if scheme == "q8" else np.ptp(group, axis=2) / 15
    error = np.abs(np.pad(w - weight, ((0, 0), (0, padded.shape[1] - k)))).reshape(n, -1, per).max(axis=2)
    assert np.all(error <= step * 0.51 + 1e-3 * np.abs(group).max(axis=2))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_bad_shapes_are_refused(scheme):
    with pytest.raises(ValueError, match="multiple of 32"):
        packing.pack(np.zeros((16, 100), np.float32), scheme)
    with pytest.raises(ValueError, match="multiple of 32"):
        packed.matmul_kernel(scheme, 16, 100, HOST)
    with pytest.raises(ValueError, match="2-D"):
        packing.pack(np.zeros(64, np.float32), scheme)
    with pytest.raises(ValueError, match="unknown weight quantization scheme"):
        packing.pack(np.zeros((16, 64), np.float32), "q3")
    with pytest.raises(ValueError, match="unknown dot product path"):
        packed.matmul_kernel(scheme, 16, 64, HOST, "neon")


def test_paths_are_chosen_from_the_cpu():
    def path(triple, cpu):
        return dot_path(tvm.target.Target({"kind": "llvm", "mtriple": triple, "mcpu": cpu}))

    assert path("x86_64-linux-gnu", "znver4") == "vnni"
    assert path("x86_64-linux-gnu", "skylake-avx512") == "avx512"
    assert path("x86_64-linux-gnu", "haswell") == "avx2"
    assert path("x86_64-linux-gnu", "x86-64-v2") == "generic"
    if "aarch64" in codegen.llvm_get_targets():
        assert path("aarch64-linux-gnu", "cortex-a76") == "sdot"
        assert path("aarch64-linux-gnu", "cortex-a72") == "smull"


def test_vnni_path_uses_vpdpbusd():
    if BEST != "vnni":
        pytest.skip("this machine has no AVX-512 VNNI")
    assert "vpdpbusd" in compiled("q4", "vnni").mod.inspect_source("asm")


@pytest.mark.parametrize("cpu, instruction", [("cortex-a76", "sdot"), ("cortex-a72", "smull")])
def test_aarch64_paths_compile_to_their_instructions(cpu, instruction):
    """Compiled here only (their results were checked under qemu with the emulated ARM board)."""
    if "aarch64" not in codegen.llvm_get_targets():
        pytest.skip("this LLVM has no AArch64 backend")
    target = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": cpu})
    assert dot_path(target) == instruction
    funcs = linear_funcs("q4", 24, 64, target)
    mod = tvm.IRModule({name: func.with_attr("global_symbol", name) for name, func in funcs})
    asm = tvm.compile(mod, target=target).mod.inspect_source("asm")
    assert instruction in asm
    if instruction == "sdot":  # the activation word is taken by index, not broadcast first
        assert ".4b[" in asm and "ld1r" not in asm
