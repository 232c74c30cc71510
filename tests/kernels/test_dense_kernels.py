"""The dense (f32 / f16) matmul kernel (compiler/kernels/dense.py): packing, results against numpy,
and identical bits for a row whatever the number of rows beside it (decode == verify)."""

import functools

import numpy as np
import pytest
import tvm

from air.compiler.kernels import dense, packing
from air.devices import host_device
from helpers import host_target

HOST = host_target()
AVX2 = host_target(mcpu="haswell") if host_device().arch == "x86_64" else None
# N not a multiple of the 16-row tile, odd K; a weight past dense.SERIAL_WEIGHT_BYTES in f16 and f32
# (the parallel split; the small one splits too past dense.SERIAL_ROWS rows). ROWS past
# dense.SERIAL_ROWS take tiles in pairs: 120 rows are 8 tiles, 4 per task on 2 cores, the
# partial last one in a pair; 4104 rows are 257 tiles, one left alone.
SHAPES = [(120, 97), (4104, 544)]
assert 4104 * 544 * 2 > dense.SERIAL_WEIGHT_BYTES
ROWS = [1, 2, 3, 4, 5, 7, 8, 9, 17, 40]


@functools.cache
def compiled(dtype, target=HOST):
    funcs = {f"mm_{n}_{k}": dense.matmul_kernel(n, k, dtype, target).with_attr("global_symbol", f"mm_{n}_{k}")
             for n, k in SHAPES}
    return tvm.compile(tvm.IRModule(funcs), target=target)


def run(lib, tiles, x, n):
    y = tvm.runtime.empty((x.shape[0], n), "float32", tvm.cpu())
    lib[f"mm_{n}_{x.shape[1]}"](tvm.runtime.tensor(x), tvm.runtime.tensor(tiles), y)
    return y.numpy()


@pytest.mark.parametrize("n,k", SHAPES)
def test_pack_round_trips(n, k):
    w = np.random.default_rng(0).standard_normal((n, k)).astype(np.float32)
    tiles = packing.pack_dense(w, "float32")
    assert tiles.shape == packing.dense_shape(n, k)
    np.testing.assert_array_equal(packing.unpack_dense(tiles, n, k), w)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("n,k", SHAPES)
def test_matmul_matches_numpy_and_rows_are_independent(dtype, n, k):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((n, k)).astype(np.float32)
    tiles = packing.pack_dense(w, dtype)
    x = rng.standard_normal((max(ROWS), k)).astype(np.float32)
    lib = compiled(dtype)
    reference = x.astype(np.float64) @ tiles.astype(np.float64).reshape(-1, k, 16).transpose(0, 2, 1).reshape(-1, k)[:n].T
    alone = np.concatenate([run(lib, tiles, x[i:i + 1], n) for i in range(max(ROWS))])
    np.testing.assert_allclose(alone, reference, rtol=1e-4, atol=1e-4 * np.sqrt(k))
    for m in ROWS:
        # A row computed among m rows has the same bits as the row computed alone.
        np.testing.assert_array_equal(run(lib, tiles, x[:m], n), alone[:m])


@pytest.mark.skipif(AVX2 is None, reason="x86_64 only")
def test_avx2_build_agrees():
    n, k = SHAPES[0]
    rng = np.random.default_rng(2)
    tiles = packing.pack_dense(rng.standard_normal((n, k)), "float32")
    x = rng.standard_normal((5, k)).astype(np.float32)
    np.testing.assert_allclose(run(compiled("float32", AVX2), tiles, x, n), run(compiled("float32"), tiles, x, n),
                               rtol=1e-5, atol=1e-5)
