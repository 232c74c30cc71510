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


# Above this depth a model's Relax functions run as VM bytecode rather than machine code.
COMPILED_GLUE_MAX_LAYERS = 8


def exec_mode(num_layers: int) -> str:
    """How the Relax functions (the glue between kernels: allocations, shape checks, calls) run.

    As machine code ("compiled") they skip the VM's interpreter, which pays on a small model:
    interpreting a decode step's ~150 VM instructions was a fifth of the 1.4M-parameter pair
    draft's step (31 -> 25 us per token). But each entry point (prefill, decode, verify) is then
    one straight-line function, thousands of calls long for a deep model, and LLVM's optimizer
    is superlinear in function size: SmolLM2-135M's 30 layers spent 69 of 72 s of code
    generation and most of the 21 s link in those three functions, and gained nothing for it
    (decode 10.54 ms compiled, 10.51 ms interpreted, in one process; its 4-layer draft 0.334
    against 0.340 ms). So deep models keep bytecode.
    """
    return "compiled" if num_layers <= COMPILED_GLUE_MAX_LAYERS else "bytecode"


def compile_module(mod: tvm.IRModule, tvm_target: dict, num_layers: int):
    target = tvm.target.Target(tvm_target)
    return relax.build(mod, target=target, relax_pipeline=relax_pipeline(target), exec_mode=exec_mode(num_layers))
