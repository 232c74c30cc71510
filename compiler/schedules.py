"""Schedule rules for the CPU: named, reusable, applied to every PrimFunc they match.

TVM 0.27's CPU pipeline schedules nothing (one thread, little vectorization); these rules
add parallelism and SIMD. The hand-written kernels (attention, RoPE, cache append) carry
their own loop structure and are marked opaque, so no rule touches them.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir import dlight
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import get_extent, try_inline_contiguous_spatial
from tvm.target import Target
from tvm.target.codegen import llvm_get_vector_width


def _lanes(target: Target) -> int:
    bits = llvm_get_vector_width(target)
    return max((bits if bits > 0 else 128) // 32, 4)


class MatmulNT(dlight.ScheduleRule):
    """y[..., i, j] = sum_k x[..., i, k] * w[j, k], with an optional elementwise epilogue.

    The weight is read in its [out, in] layout (no transpose copy). Output columns are
    split into tiles, one parallel task each; inside a tile every row reuses the tile's
    weights while they are in cache; the k loop is split by the vector width and
    rfactored so the products accumulate in SIMD lanes.
    """

    column_tile = 8

    def apply(self, func: tirx.PrimFunc, target: Target, _: bool):
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        infos = try_inline_contiguous_spatial(sch, infos)
        if infos is None or len(infos) not in (1, 2):
            return None
        main, epilogue = infos[0], (infos[1] if len(infos) == 2 else None)
        kind = main.dom_kind()
        if kind.rstrip("R") != "S" * (len(kind) - 1) or not kind.endswith("R") or len(kind) < 2 or (epilogue is not None and not epilogue.is_injective()):
            return None
        loops = sch.get_loops(main.block_rv)
        *rows, col, red = loops
        lanes = _lanes(target)
        red_extent = get_extent(sch, red)
        if not isinstance(red_extent, int) or red_extent % lanes:
            return None
        col_extent = get_extent(sch, col)
        if not isinstance(col_extent, int):
            return None
        tile = self.column_tile if col_extent % self.column_tile == 0 else 1
        col_outer, col_inner = sch.split(col, [None, tile])
        sch.reorder(col_outer, *rows, col_inner)
        red_outer, red_inner = sch.split(red, [None, lanes])
        rf_block = sch.rfactor(red_inner, factor_axis=len(rows) + 1)
        # rf block loops: col_outer, rows..., col_inner, red_outer, red_inner
        rf_loops = sch.get_loops(rf_block)
        rf_col_inner, rf_red_outer, rf_red_inner = rf_loops[-3:]
        # The tile's columns become independent accumulator chains kept in registers.
        sch.reorder(rf_red_outer, rf_col_inner, rf_red_inner)
        sch.unroll(rf_col_inner)
        sch.vectorize(rf_red_inner)
        sch.reverse_compute_at(main.block_rv, rf_loops[len(rows)])
        sch.parallel(rf_loops[0])
        sch.decompose_reduction(rf_block, rf_red_outer)
        if epilogue is not None:
            sch.reverse_compute_at(epilogue.block_rv, rf_loops[0])
        return sch


class ParallelElementwise(dlight.ScheduleRule):
    """Any other loop nest: parallel over its outermost spatial loop, vector inner loop."""

    def apply(self, func: tirx.PrimFunc, target: Target, _: bool):
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None:
            return None
        infos = try_inline_contiguous_spatial(sch, infos)
        if infos is None or len(infos) != 1 or not infos[0].is_injective():
            return None
        loops = sch.get_loops(infos[0].block_rv)
        if len(loops) > 1:
            sch.parallel(sch.fuse(*loops[:-1]))
        return sch


def cpu_rules() -> list[dlight.ScheduleRule]:
    return [MatmulNT(), dlight.cpu.Reduction(), ParallelElementwise()]


def apply_cpu_schedules():
    return dlight.ApplyDefaultSchedule(*cpu_rules())
