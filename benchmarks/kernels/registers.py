"""Registers, spills and shared memory of every Triton kernel an op launches, compiled for a GPU
architecture on a machine without one (ptxas ships with Triton).

    python -m benchmarks.kernels.registers [--ops gla gated_delta ...] [--shape B1_T128_H2_D128] [--arch 90] [--out DIR]

Two steps. First a subprocess runs each op's forward and backward (our kernels, bf16, at `--shape`:
only D matters, T and H are run-time or irrelevant to the code) in Triton's interpreter and records
every launch: kernel, arguments, the launch config (with float16 inputs: the interpreter lacks some
bfloat16 constants; the compile step reads them as bfloat16). Then each launched kernel is compiled, with the
argument specialisation the JIT would use on a GPU (16-byte aligned pointers), for every autotune
config it can choose, and cuobjdump reads the cubin's resources: registers per thread, the stack
(local-memory spills, bytes per thread) and shared memory. A spill is the usual sign of a kernel
that loses time to local memory; ncu on a GPU says how much. Prints a table and writes
DIR/kernel_registers_sm<arch>.{json,md} (default DIR benchmarks/results) with the Triton version and date.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.kernels.report import save_table
from benchmarks.kernels.shapes import OUR_FUNCTIONS, parse_shape

RESULTS = Path(__file__).resolve().parents[1] / "results"
# the interpreter lacks some bfloat16 constants, so launches are recorded with float16 inputs and compiled as bfloat16
DTYPES = {"torch.float16": torch.bfloat16, "torch.float32": torch.float32, "torch.int32": torch.int32, "torch.int64": torch.int64}


def record_launches(ops: list[str], shape: str) -> list[dict]:
    """Run each op forward + backward in the interpreter (this process must have TRITON_INTERPRET=1) and
    return its distinct launches: {kernel: "module:name", args: {param: ["tensor", dtype] | ["value", v]}, op}."""
    from triton.runtime.interpreter import InterpretedFunction

    from benchmarks.kernels.impls import implementation, make_inputs

    launches: dict[str, dict] = {}
    original = InterpretedFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        signature = inspect.signature(self.fn)
        bound = signature.bind(*args, **{n: v for n, v in kwargs.items() if n in signature.parameters})
        bound.apply_defaults()
        described = {n: ["tensor", str(v.dtype)] if isinstance(v, torch.Tensor) else ["value", v] for n, v in bound.arguments.items()}
        entry = {"kernel": f"{self.fn.__module__}:{self.fn.__name__}", "args": described}
        launches.setdefault(json.dumps(entry, sort_keys=True, default=str), entry | {"op": current_op})
        return original(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = run
    try:
        for current_op in ops:  # read by run() above
            inputs = make_inputs(current_op, parse_shape(shape), device="cpu", dtype=torch.float16)  # compiled as bfloat16
            fn, _ = implementation(current_op, "ours")
            leaves = {n: inputs[n].requires_grad_() for n in ("q", "k", "v", "g", "beta") if n in inputs}
            fn(**leaves, scale=inputs["q"].shape[-1] ** -0.5).backward(inputs["do"])
    finally:
        InterpretedFunction.run = original
    return list(launches.values())  # each with the first op that launched it


def resources(cubin: bytes) -> dict:
    """Registers, stack bytes (spills) per thread of a cubin, read by Triton's cuobjdump."""
    import triton

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        text = subprocess.run([str(tool), "--dump-resource-usage", str(path)], capture_output=True, text=True, check=True).stdout
    found = dict(re.findall(r"(REG|STACK):(\d+)", text))
    return {"registers": int(found["REG"]), "spill_bytes": int(found["STACK"])}


def autotune_choices(module, name: str) -> tuple:
    """(the jit function `name` of `module`, its configs): those of its autotuner, or of all of them where the
    module autotunes one kernel over several config lists (its AUTOTUNED, in order, without repeats); one default
    config if none."""
    import triton

    kernel = getattr(module, name)
    if isinstance(kernel, triton.runtime.Autotuner):
        return kernel.fn, kernel.configs
    tuners = [t for t in getattr(module, "AUTOTUNED", {}) if t.fn is kernel]
    choices = {str(c): c for t in tuners for c in t.configs}
    return kernel, list(choices.values()) or [triton.Config({})]


def compile_launch(launch: dict, arch: int, lengths: int | None = None) -> list[dict]:
    """Compile one recorded launch for sm_<arch> with each of its autotune configs; one row per config. With `lengths`,
    the integers a kernel keeps unspecialised (`do_not_specialize`: T, row counts) are compiled as that value and
    specialised as the JIT would without the exemption (2048: a multiple of 16), to see what the exemption costs."""
    import triton
    from triton.backends.compiler import BaseBackend, GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import MockTensor, native_specialize_impl

    module, name = launch["kernel"].split(":")
    jit, choices = autotune_choices(importlib.import_module(module), name)
    signature, constexprs, attrs = {}, {}, {}
    for i, param in enumerate(jit.params):
        kind, value = launch["args"][param.name]
        if param.is_constexpr:
            signature[param.name], constexprs[(i,)] = "constexpr", value
            continue
        specialise = not param.do_not_specialize
        if lengths is not None and param.do_not_specialize and kind == "value":
            value, specialise = lengths, True
        arg = MockTensor(DTYPES[value]) if kind == "tensor" else value
        ty, desc = native_specialize_impl(BaseBackend, arg, False, specialise, True)
        signature[param.name] = ty
        if ty == "constexpr":
            constexprs[(i,)] = desc
        elif isinstance(desc, str):
            attrs[(i,)] = BaseBackend.parse_attr(desc)
    rows = []
    for config in choices:
        options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
        if config.maxnreg is not None:
            options["maxnreg"] = config.maxnreg
        compiled = triton.compile(ASTSource(jit, signature, constexprs, attrs), target=GPUTarget("cuda", arch, 32), options=options)
        rows.append({"op": launch["op"], "kernel": name, **options, "maxnreg": config.maxnreg, **resources(compiled.asm["cubin"]),
                     "shared_bytes": compiled.metadata.shared,
                     "constexprs": {p.name: launch["args"][p.name][1] for p in jit.params if p.is_constexpr}})
    return rows


def markdown(rows: list[dict], header: str) -> str:
    lines = [header, "", "| op | kernel | launch constexprs | warps | stages | maxnreg | registers | spill bytes / thread | shared KB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        keys = ", ".join(f"{k}={v}" for k, v in r["constexprs"].items() if k not in ("H", "IS_VARLEN", "DOT_PREC", "BT"))
        lines.append(f"| {r['op']} | {r['kernel']} | {keys} | {r['num_warps']} | {r['num_stages']} | {r['maxnreg'] or '-'} | "
                     f"{r['registers']} | {r['spill_bytes']} | {r['shared_bytes'] / 1024:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", nargs="+", default=list(OUR_FUNCTIONS), choices=list(OUR_FUNCTIONS))
    parser.add_argument("--shape", default="B1_T128_H2_D128", help="B{B}_T{T}_H{H}_D{D}: D sets the kernels' tiles")
    parser.add_argument("--arch", type=int, default=90, help="compute capability: 90 = H100 / H200")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--specialise-lengths", type=int, metavar="T",
                        help="compile the kernels' unspecialised lengths as T, specialised (writes *_lengths_specialised)")
    parser.add_argument("--record", action="store_true", help=argparse.SUPPRESS)  # the interpreter step
    args = parser.parse_args(argv)
    if args.record:
        json.dump(record_launches(args.ops, args.shape), sys.stdout, default=str)
        return []
    env = dict(os.environ, TRITON_INTERPRET="1")
    command = [sys.executable, "-m", "benchmarks.kernels.registers", "--record", "--shape", args.shape, "--ops", *args.ops]
    launches = json.loads(subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, check=True).stdout)
    rows = [row for launch in launches for row in compile_launch(launch, args.arch, args.specialise_lengths)]
    import triton

    header = (f"Triton {triton.__version__} kernels compiled for sm_{args.arch} (no GPU needed), ops {' '.join(args.ops)} at "
              f"{args.shape}, bf16; {datetime.date.today()}")
    stem = f"kernel_registers_sm{args.arch}"
    if args.specialise_lengths is not None:
        header += f"; lengths (T, row counts) compiled as {args.specialise_lengths}, specialised"
        stem += "_lengths_specialised"
    data = json.dumps({"header": header, "rows": rows}, indent=1, default=str)
    save_table(args.out, stem, markdown(rows, header), ".json", data)
    return rows


if __name__ == "__main__":
    main()
