"""The fused row kernels (compiler/norms.py): RMSNorm with and without the residual add,
SwiGLU, each writing f32 rows or int8 blocks, and the per-head norm of the fused q/k/v output,
against numpy; rows independent of their count."""

import functools

import numpy as np
import pytest
import tvm

from air.compiler.kernels import norms, packing
from helpers import host_target

HOST = host_target()
WIDTH = 96 + 8  # not a multiple of the 16-lane vectors: the scalar tail runs too
QWIDTH = 96  # quantized outputs need whole 32-blocks
EPS = 1e-6


@functools.cache
def build(func):
    return tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=HOST)["main"]


def call(func, inputs, shapes):
    outs = [tvm.runtime.empty(shape, dtype, tvm.cpu()) for shape, dtype in shapes]
    build(func)(*[tvm.runtime.tensor(a) for a in inputs], *outs)
    return [o.numpy() for o in outs]


def rms_norm(x, w):
    x = x.astype(np.float64)
    return (x / np.sqrt((x ** 2).mean(-1, keepdims=True) + EPS) * w).astype(np.float32)


def quantized(width, n):
    return [((n, width // 4), "int32"), ((n, width // 32), "float32"), ((n, width // 32), "float32")]


@pytest.mark.parametrize("n", [1, 5, 300])  # 300 rows: the parallel branch
def test_rms_norm_and_residual_add(n):
    rng = np.random.default_rng(n)
    x, delta = rng.standard_normal((2, n, WIDTH)).astype(np.float32) * 3
    w = rng.random(WIDTH).astype(np.float32)
    (y,) = call(norms.rms_norm_kernel(WIDTH, EPS, False, False), [x, w], [((n, WIDTH), "float32")])
    np.testing.assert_allclose(y, rms_norm(x, w), rtol=2e-6, atol=2e-6)
    total, y = call(norms.rms_norm_kernel(WIDTH, EPS, True, False), [x, delta, w], [((n, WIDTH), "float32")] * 2)
    np.testing.assert_array_equal(total, x + delta)
    np.testing.assert_allclose(y, rms_norm(x + delta, w), rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("n", [1, 5, 300])
def test_rms_norm_writes_the_matmul_int8_blocks(n):
    rng = np.random.default_rng(n)
    x, delta = rng.standard_normal((2, n, QWIDTH)).astype(np.float32)
    w = rng.random(QWIDTH).astype(np.float32) + 0.5
    total, xq, xd, xs = call(norms.rms_norm_kernel(QWIDTH, EPS, True, True), [x, delta, w],
                             [((n, QWIDTH), "float32"), *quantized(QWIDTH, n)])
    want_q, want_d, want_s = packing.quantize_activations(rms_norm(x + delta, w))
    # The kernel's f32 norm may differ from numpy's in the last bit, moving a rare value across a rounding edge.
    assert (xq.view(np.int8) != want_q.view(np.int8)).mean() < 0.01
    np.testing.assert_allclose(xd, want_d, rtol=1e-5)
    np.testing.assert_allclose(xs, want_s, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("n", [1, 5, 300])
def test_swiglu(n):
    rng = np.random.default_rng(n)
    gate = rng.standard_normal((n, WIDTH)).astype(np.float32) * 6  # far into both tails of exp
    up = rng.standard_normal((n, WIDTH)).astype(np.float32)
    (y,) = call(norms.swiglu_kernel(WIDTH, False), [np.concatenate([gate, up], axis=1)], [((n, WIDTH), "float32")])
    g = gate.astype(np.float64)
    want = g / (1 + np.exp(-g)) * up
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)
    qgate, qup = gate[:, :QWIDTH], up[:, :QWIDTH]
    xq, xd, _ = call(norms.swiglu_kernel(QWIDTH, True), [np.concatenate([qgate, qup], axis=1)], quantized(QWIDTH, n))
    want_q, want_d, _ = packing.quantize_activations(want[:, :QWIDTH].astype(np.float32))
    assert (xq.view(np.int8) != want_q.view(np.int8)).mean() < 0.01
    np.testing.assert_allclose(xd, want_d, rtol=1e-5)


def test_rows_do_not_depend_on_how_many_run_together():
    rng = np.random.default_rng(7)
    x, delta = rng.standard_normal((2, 9, QWIDTH)).astype(np.float32)
    w = rng.random(QWIDTH).astype(np.float32)
    kernel = norms.rms_norm_kernel(QWIDTH, EPS, True, True)
    shapes = lambda n: [((n, QWIDTH), "float32"), *quantized(QWIDTH, n)]  # noqa: E731
    together = call(kernel, [x, delta, w], shapes(9))
    for i in (0, 4, 8):
        alone = call(kernel, [x[i:i + 1], delta[i:i + 1], w], shapes(1))
        for a, b in zip(alone, together):
            np.testing.assert_array_equal(a[0], b[i])


@pytest.mark.parametrize("n", [1, 5, 200])  # 200 tokens: the parallel branch
def test_head_norm_normalizes_query_and_key_heads_only(n):
    heads, kv_heads, dim = 4, 2, 64
    rng = np.random.default_rng(n)
    qkv = rng.standard_normal((n, heads + 2 * kv_heads, dim)).astype(np.float32) * 2
    q_weight, k_weight = rng.random((2, dim)).astype(np.float32) + 0.5
    rows = qkv.reshape(-1, dim)
    (y,) = call(norms.head_norm_kernel(heads, kv_heads, dim, EPS), [rows, q_weight, k_weight],
                [(rows.shape, "float32")])
    y = y.reshape(qkv.shape)
    np.testing.assert_allclose(y[:, :heads], rms_norm(qkv[:, :heads], q_weight), rtol=2e-6, atol=2e-6)
    np.testing.assert_allclose(y[:, heads:heads + kv_heads], rms_norm(qkv[:, heads:heads + kv_heads], k_weight),
                               rtol=2e-6, atol=2e-6)
    np.testing.assert_array_equal(y[:, heads + kv_heads:], qkv[:, heads + kv_heads:])
