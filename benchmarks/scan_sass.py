"""Compile the Triton selective-scan kernels for a GPU without one (no device time): registers, spills and SASS
instruction counts per state update, at a stage's launch (its specialisation: dtypes, strides equal to 1, alignment)::

    PYTHONPATH=src python benchmarks/scan_sass.py --stage nyud
    PYTHONPATH=src python benchmarks/scan_sass.py --stage pascal --config '{"tile": 8}' --dtype bfloat16 --dump /tmp/s

The wrapper (``selective_scan_triton``) runs on small CPU tensors with the stage's channel, state and group counts
and memory layout; a stand-in Triton driver reports an sm_90 target (``--arch``), so ``JITFunction.run`` specialises
and compiles every launch exactly as on the card and returns before launching. Triton and ptxas are the local ones
(this machine's Triton may differ from the card's). Per kernel: registers and spilled bytes (cuobjdump), then the
static SASS instructions x warps / (tile x channels x state) -- the loop over a tile dominates the code, so this
approximates warp instructions per state update -- in total and for MUFU (exp2/log2/rcp), SHFL and BAR.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))


class _TargetOnlyDriver:
    """Enough of a Triton driver to compile for ``arch`` on a machine without a GPU (never launches)."""

    def __init__(self, arch):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0


def compile_launches(stage, config, dtype, arch):
    """Run one forward and backward of the Triton backend at ``stage``'s channels / state / groups (short L, batch 1)
    with the kernels compiled but not launched. Returns [(kernel name, CompiledKernel, launch constexprs)]."""
    import triton
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction

    from pamm.ops.selective_scan_triton import selective_scan_triton

    compiled = []
    real_run = JITFunction.run

    def compile_only(self, *args, grid, warmup, **kwargs):
        kernel = real_run(self, *args, grid=grid, warmup=True, **kwargs)
        compiled.append((self.fn.__name__, kernel, {k: v for k, v in kwargs.items() if k.isupper()}))
        return kernel

    import importlib

    module = importlib.import_module("pamm.ops.selective_scan_triton")
    fast_exp2 = module._fast_exp2  # decides by the tensors' device: here they are CPU tensors standing in for CUDA
    module._fast_exp2 = lambda u, cdt, cfg: bool(cfg["fast_exp2"]) and cdt == torch.float32
    driver.set_active(_TargetOnlyDriver(arch))
    JITFunction.run = compile_only
    try:
        from pamm.ops import scan_orders
        from scan_common import stage_inputs

        grid = (4, 4)
        inputs = stage_inputs(1, stage["d_inner"], stage["tasks"], stage["state"], 16, "cpu", dtype=dtype)
        y = selective_scan_triton(**inputs, delta_softplus=True, orders=scan_orders(*grid), config=config)
        y.backward(torch.ones_like(y))  # the kernels wrote nothing: only the launches matter
    finally:
        JITFunction.run = real_run  # the stand-in driver stays: this process has no other
        module._fast_exp2 = fast_exp2
    assert triton is not None
    return compiled


def sass_counts(kernel, dump=None, name=""):
    """(registers, spill bytes, {opcode: count}) of a compiled kernel's cubin."""
    from triton.backends.nvidia import compiler as nv

    cuobjdump = Path(nv.__file__).parent / "bin" / "cuobjdump"
    cubin = Path("/tmp") / f"scan_sass_{name}.cubin"
    cubin.write_bytes(kernel.asm["cubin"])
    resources = subprocess.run(
        [str(cuobjdump), "--dump-resource-usage", str(cubin)], capture_output=True, text=True, check=True
    ).stdout
    regs = int(re.search(r"REG:(\d+)", resources).group(1))
    stack = int(re.search(r"STACK:(\d+)", resources).group(1))
    sass = subprocess.run(
        [str(cuobjdump), "--dump-sass", str(cubin)], capture_output=True, text=True, check=True
    ).stdout
    if dump:
        Path(dump).mkdir(parents=True, exist_ok=True)
        (Path(dump) / f"{name}.sass").write_text(sass)
        (Path(dump) / f"{name}.ptx").write_text(kernel.asm["ptx"])
        (Path(dump) / f"{name}.ttgir").write_text(kernel.asm["ttgir"])
    ops = collections.Counter()
    for line in sass.splitlines():
        m = re.match(r"\s+/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)(?:\.[\w.]+)?\b", line)
        if m:
            ops[m.group(1)] += 1
    return regs, stack, ops


def main():
    from scan_common import STAGES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", default="nyud", choices=list(STAGES))
    parser.add_argument("--config", default="{}", help="launch config overrides (JSON)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--dump", help="write each kernel's SASS, PTX and TTGIR into this folder")
    parser.add_argument("--top", type=int, default=8, help="most frequent opcodes to list")
    args = parser.parse_args()
    from pamm.ops.selective_scan_triton import resolve_config

    stage = STAGES[args.stage]
    overrides = json.loads(args.config)
    cfg = resolve_config(stage["state"], stage["d_inner"], overrides)
    print(f"{args.stage} ({args.dtype}), config {cfg}")
    for name, kernel, constexprs in compile_launches(stage, overrides, getattr(torch, args.dtype), args.arch):
        regs, stack, ops = sass_counts(kernel, args.dump, name)
        warps = kernel.metadata.num_warps
        per_tile = constexprs.get("TILE", 1) * constexprs.get("BLOCK_D", 1) * constexprs.get("N_BLOCK", 1)
        total = sum(ops.values())
        scale = warps / per_tile
        top = ", ".join(f"{op} {n}" for op, n in ops.most_common(args.top))
        print(
            f"  {name}: {regs} registers, {stack} bytes stack, {warps} warps; SASS {total} instructions = "
            f"{total * scale:.3f} warp instr / update (MUFU {ops['MUFU'] * scale:.3f}, "
            f"SHFL {ops['SHFL'] * scale:.3f}, BAR {ops['BAR'] * scale:.3f})\n    {top}"
        )


if __name__ == "__main__":
    main()
