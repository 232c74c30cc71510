"""The Relax-to-machine-code pipeline for CPU targets."""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu_pipeline

from .schedules import apply_cpu_schedules


def relax_pipeline(target: tvm.target.Target) -> tvm.transform.Pass:
    """TVM's CPU pipeline plus the schedules it lacks."""

    @tvm.transform.module_pass(opt_level=0)
    def _pipeline(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        with target:
            passes = [
                *cpu_pipeline.legalize_passes(target),
                relax.transform.DeadCodeElimination(),
                apply_cpu_schedules(),
                *cpu_pipeline.dataflow_lower_passes(target),
                *cpu_pipeline.finalize_passes(target),
            ]
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline


def compile_module(mod: tvm.IRModule, tvm_target: dict):
    """The Relax functions become machine code too (exec_mode "compiled"), not bytecode for the
    VM's interpreter: a decode step runs ~150 VM instructions (allocations, kernel calls), and
    interpreting them was a fifth of the trained draft's step (31 -> 25 us per token)."""
    target = tvm.target.Target(tvm_target)
    return relax.build(mod, target=target, relax_pipeline=relax_pipeline(target), exec_mode="compiled")
