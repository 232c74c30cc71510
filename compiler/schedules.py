"""Schedule rules for the CPU: named, reusable, applied to every PrimFunc they match.

TVM 0.27's CPU pipeline schedules nothing (one thread, little vectorization); these rules
add parallelism and SIMD to what TVM generates itself (bias adds, reshapes, copies). The
hand-written kernels (matmuls, norms, attention, the cache) carry their own loop structure
and are marked opaque, so no rule touches them.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir import dlight
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import try_inline_contiguous_spatial
from tvm.target import Target


PARALLEL_ELEMENTS = 1 << 16  # elementwise work below which waking the thread pool costs more


class ParallelElementwise(dlight.ScheduleRule):
    """Any loop nest TVM generated (the bias adds): parallel over its outer spatial loops when
    their static extents alone reach PARALLEL_ELEMENTS. A bias add of one decode row took 6-8 us
    in parallel, mostly waking the pool, 24 times per token on Qwen2.5-0.5B; serial it takes
    well under 1 us, and a 128-row prefill's tens of microseconds are lost in its matmuls."""

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
        static = 1
        for loop in loops:
            extent = sch.get(loop).extent
            static *= int(extent) if isinstance(extent, tirx.IntImm) else 1
        if len(loops) > 1 and static >= PARALLEL_ELEMENTS:
            sch.parallel(sch.fuse(*loops[:-1]))
        return sch


def cpu_rules() -> list[dlight.ScheduleRule]:
    return [dlight.cpu.Reduction(), ParallelElementwise()]


def apply_cpu_schedules():
    return dlight.ApplyDefaultSchedule(*cpu_rules())
