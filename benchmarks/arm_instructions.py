"""Instructions per weight of the q4 / q8 matmuls on AArch64, ours and llama.cpp's, counted under qemu.

    python benchmarks/arm_instructions.py [--devices raspberry-pi-4,raspberry-pi-5] [--schemes q4,q8]
                                          [--rows 1,2,5,9] [--llama-cpp-src DIR] [--work DIR]

Emulated timings mean nothing, but instruction counts are exact: `qemu-aarch64-static -singlestep
-d exec,nochain` logs one line per executed instruction, here only those in the code of the kernel's
own object (`-dfilter` with the address ranges of its .text sections, from the link map: TVM's
parallel task functions have no symbols), read from a pipe and counted. The driver
(arm_instructions.c, linked statically) makes one call on arbitrary inputs.

Ours: packed.matmul_kernel exactly as a bundle for the device has it (Cortex-A72: plain NEON;
Cortex-A76: dotprod; the recipe's 4 cores), on the Qwen2.5-0.5B shapes 4864 x 896 (gate/up) and
896 x 4864 (down). The kernel splits its tiles of 16 output rows into one equal range per core
(both shapes' tiles divide evenly); the driver runs the first task alone and the count is 4 times
its count (a smaller N would be another function, whose code LLVM compiles a little differently). The activation quantizer (quantize_rows, once per input for several matmuls) is not
counted; nor is llama.cpp's.

llama.cpp: ggml's NEON vec_dot kernels of llama-cpp-python 0.3.36's llama.cpp (q4_0 x q8_0, q4_1 x
q8_1 (a minimum per block, like our q4) and q8_0 x q8_0) compiled with the same -mcpu and -O3, one
call per weight row and activation row as ggml's matmul makes without repacking (each call's count
is the same, so 2 weight rows with all of K are exact). The source is fetched with pip (the sdist)
unless --llama-cpp-src names a llama.cpp tree (e.g. benchmarks/build_llama_cpp.sh's ROOT/src).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import tvm
import tvm_ffi

from air.compiler.kernels import packed
from air.compiler.kernels.isa import dot_path
from air.compiler.kernels.layout import PackedLayout
from air.devices import resolve_device

SHAPES = ((4864, 896), (896, 4864))  # (N, K)
GGML_KINDS = {"q4": ("q4_0", "q4_1"), "q8": ("q8_0",)}
GGML_ROWS = 2
LLAMA_CPP = "llama-cpp-python==0.3.36"
DRIVER = Path(__file__).with_name("arm_instructions.c")
CC = "aarch64-linux-gnu-gcc"


def run(cmd, **kwargs):
    subprocess.run(cmd, check=True, **kwargs)


def link(sources, obj: Path, binary: Path, *flags) -> str:
    """Link the driver statically with a kernel object; the qemu -dfilter of obj's code."""
    run([CC, "-O2", "-static", *flags, *map(str, sources), str(obj), f"-Wl,-Map={binary}.map", "-o", str(binary), "-lm"])
    sections = re.findall(r"^ \.text\S*\s+0x([0-9a-f]+)\s+0x([0-9a-f]+) (\S+)$", Path(f"{binary}.map").read_text(), re.M)
    ranges = [f"0x{start}+0x{size}" for start, size, source in sections if source == str(obj) and int(size, 16)]
    if not ranges:
        raise SystemExit(f"the link map of {binary} places no code of {obj}")
    return ",".join(ranges)


def count(binary: Path, args, cpu: str, code: str, work: Path) -> int:
    """Instructions executed inside the address ranges `code` by one run of binary under qemu."""
    fifo = work / "exec.log"
    if fifo.exists():
        fifo.unlink()
    os.mkfifo(fifo, 0o600)
    qemu = subprocess.Popen(["qemu-aarch64-static", "-cpu", cpu, "-singlestep", "-d", "exec,nochain", "-dfilter", code,
                             "-D", str(fifo), str(binary), *map(str, args)])
    lines = 0
    with open(fifo, "rb") as log:
        while chunk := log.read(1 << 20):
            lines += chunk.count(b"\n")
    if qemu.wait():
        raise SystemExit(f"{binary.name} {' '.join(map(str, args))} failed under qemu (status {qemu.returncode})")
    fifo.unlink()
    return lines


def target_for(device: str) -> tvm.target.Target:
    return tvm.target.Target(resolve_device(device).tvm_target)


def our_driver(device: str, schemes, work: Path) -> tuple[Path, str]:
    """A static driver with every (scheme, shape) matmul of this device, and the -dfilter of their code."""
    target = target_for(device)
    funcs, table = {}, []
    for scheme in schemes:
        for n, k in SHAPES:
            name = f"mm_{scheme}_n{n}_k{k}"
            layout = PackedLayout(scheme, n, k)
            funcs[name] = packed.matmul_kernel(scheme, n, k, target).with_attr("global_symbol", name)
            (qs_rows, qbytes), (sc_rows, nscales) = layout.shapes
            table.append(f'    {{"{name}", __tvm_ffi_{name}, {n}, {k}, {qs_rows}, {qbytes}, {sc_rows}, {nscales}}},')
    obj = work / f"air-{device}.o"
    tvm.compile(tvm.IRModule(funcs), target=target).mod.write_to_file(str(obj))
    header = work / f"air-{device}.h"
    header.write_text("".join(f"int __tvm_ffi_{name}(void *, const TVMFFIAny *, int32_t, TVMFFIAny *);\n" for name in funcs)
                      + "static const struct kernel KERNELS[] = {\n" + "\n".join(table) + "\n};\n")
    include = Path(tvm_ffi.__file__).parent / "include"
    binary = work / f"air-{device}"
    return binary, link([DRIVER], obj, binary, f"-I{include}", f"-DAIR_KERNELS=\"{header}\"")


def llama_cpp_source(given: Path | None, work: Path) -> Path:
    if given:
        return given
    src = work / "llama.cpp"
    if not (src / "ggml").is_dir():
        sdist = work / "sdist"
        run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", "llama-cpp-python", "-d", str(sdist), LLAMA_CPP])
        src.mkdir(exist_ok=True)
        archive = next(sdist.glob("llama_cpp_python-*.tar.gz"))
        run(["tar", "-xzf", str(archive), "-C", str(src), "--strip-components=3", f"{archive.name[:-7]}/vendor/llama.cpp/ggml"])
    return src


def ggml_driver(device: str, src: Path, work: Path) -> tuple[Path, str]:
    mcpu = resolve_device(device).tvm_target["mcpu"]
    ggml = src / "ggml"
    obj = work / f"ggml-{device}.o"
    run([CC, "-O3", "-DNDEBUG", "-std=gnu11", f"-mcpu={mcpu}", "-ffunction-sections", "-fdata-sections",
         f"-I{ggml}/include", f"-I{ggml}/src", f"-I{ggml}/src/ggml-cpu", "-c", str(ggml / "src/ggml-cpu/arch/arm/quants.c"),
         "-o", str(obj)])
    binary = work / f"ggml-{device}"
    return binary, link([DRIVER], obj, binary, "-DGGML", "-Wl,--gc-sections")


def ours(binary, code, device, scheme, n, k, m, work) -> float:
    """Instructions per weight of the whole N x K matmul on m rows: all tasks, each like the first."""
    target = resolve_device(device).tvm_target
    tasks = target["num-cores"]
    if (n // 16) % tasks:
        raise SystemExit(f"{n} rows do not split into {tasks} equal tasks of 16-row tiles")
    return tasks * count(binary, [f"mm_{scheme}_n{n}_k{k}", m, tasks], target["mcpu"], code, work) / (n * k)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", default="raspberry-pi-4,raspberry-pi-5")
    parser.add_argument("--schemes", default="q4,q8")
    parser.add_argument("--rows", default="1,2,5,9")
    parser.add_argument("--llama-cpp-src", type=Path, help="a llama.cpp source tree (default: fetch the sdist of " + LLAMA_CPP + ")")
    parser.add_argument("--work", type=Path, help="folder for objects and drivers (default: a temporary one)")
    args = parser.parse_args()
    schemes, rows = args.schemes.split(","), [int(m) for m in args.rows.split(",")]
    with tempfile.TemporaryDirectory(prefix="arm-instructions-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        src = llama_cpp_source(args.llama_cpp_src, work)
        print("instructions per weight of one N x K matmul on M activation rows (single thread; "
              "quantizing the activations not counted)")
        devices = args.devices.split(",")
        drivers = {device: (our_driver(device, schemes, work), ggml_driver(device, src, work)) for device in devices}
        for device, ((binary, code), (ggml, ggml_code)) in drivers.items():
            cpu = resolve_device(device).tvm_target["mcpu"]
            print(f"\n{device} ({cpu}, our {dot_path(target_for(device))} path)")
            print(f"  {'N x K':11} {'kernel':16} " + " ".join(f"{'M=' + str(m):>7}" for m in rows)
                  + " " + " ".join(f"{str(m) + '/1':>6}" for m in rows[1:]))
            for n, k in SHAPES:
                for scheme in schemes:
                    lines = [(f"air {scheme}", [ours(binary, code, device, scheme, n, k, m, work) for m in rows])]
                    for kind in GGML_KINDS[scheme]:
                        lines.append((f"llama.cpp {kind}", [count(ggml, [kind, GGML_ROWS, k, m], cpu, ggml_code, work)
                                                            / (GGML_ROWS * k) for m in rows]))
                    for label, values in lines:
                        print(f"  {f'{n}x{k}':11} {label:16} " + " ".join(f"{v:7.3f}" for v in values)
                              + " " + " ".join(f"{v / values[0]:6.2f}" for v in values[1:]), flush=True)


if __name__ == "__main__":
    main()
