"""mamba-ssm's CUDA selective scan, built from its PyPI source distribution on the GPU machine, as a comparison
for benchmarks/scan_suite.py (never a dependency of pamm)::

    python benchmarks/build_mamba.py mamba_ssm-2.3.2.post1.tar.gz DIR      # ~170 s with 16 jobs on an H200 host

Only ``csrc/selective_scan`` is compiled, for the visible GPU's architecture; ``DIR/BUILD_OK`` marks a finished
build (the suite can wait for a build running beside it).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tarfile
import time
from pathlib import Path

import torch

DONE = "BUILD_OK"
_NVCC_FLAGS = [
    "-O3",
    "-std=c++17",
    "-U__CUDA_NO_HALF_OPERATORS__",
    "-U__CUDA_NO_HALF_CONVERSIONS__",
    "-U__CUDA_NO_BFLOAT16_OPERATORS__",
    "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-U__CUDA_NO_BFLOAT162_OPERATORS__",
    "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
    "--expt-relaxed-constexpr",
    "--expt-extended-lambda",
    "--use_fast_math",
]


def _obj_dir(build_dir):
    path = Path(build_dir) / "obj"
    path.mkdir(parents=True, exist_ok=True)
    return path


def build(sdist, build_dir):
    """Extract csrc/selective_scan from the sdist and build it with torch's cpp_extension; writes BUILD_OK."""
    from torch.utils.cpp_extension import load

    build_dir = Path(build_dir)
    src = build_dir / "src"
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if "/csrc/selective_scan/" in m.name]
        tar.extractall(src, members=members, filter="data")
    csrc = next(src.glob("*/csrc/selective_scan"))
    sources = [str(csrc / "selective_scan.cpp")] + sorted(str(p) for p in csrc.glob("*.cu"))
    major, minor = torch.cuda.get_device_capability()
    os.environ["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
    os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 8))
    start = time.time()
    load(
        name="selective_scan_cuda",
        sources=sources,
        build_directory=str(_obj_dir(build_dir)),
        extra_cflags=["-O3", "-std=c++17"],
        extra_cuda_cflags=_NVCC_FLAGS,
        verbose=True,
    )
    (build_dir / DONE).write_text(f"{time.time() - start:.1f}")


def load(build_dir, wait_s=0.0):
    """The built extension module, waiting up to wait_s for a build running beside us; None if unavailable."""
    if build_dir is None:
        return None
    done = Path(build_dir) / DONE
    deadline = time.time() + wait_s
    while not done.exists() and time.time() < deadline:
        time.sleep(2)
    if not done.exists():
        return None
    so = next(_obj_dir(build_dir).glob("selective_scan_cuda*.so"))
    spec = importlib.util.spec_from_file_location("selective_scan_cuda", so)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def scan_fn(ext):
    """Autograd wrapper of the extension's fwd/bwd for one direction: u, delta (b, d, L) and B, C (b, N, L)
    contiguous along L, A, D, delta_bias float32; softplus on."""

    class MambaScan(torch.autograd.Function):
        @staticmethod
        def forward(ctx, u, delta, A, B, C, D, delta_bias):
            B, C = B.unsqueeze(1), C.unsqueeze(1)  # the extension reads B, C as (b, groups, N, L)
            out, x = ext.fwd(u, delta, A, B, C, D, None, delta_bias, True)[:2]
            ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, x)
            return out

        @staticmethod
        def backward(ctx, dout):
            u, delta, A, B, C, D, delta_bias, x = ctx.saved_tensors
            du, ddelta, dA, dB, dC, dD, dbias = ext.bwd(
                u, delta, A, B, C, D, None, delta_bias, dout.contiguous(), x, None, None, True, False
            )[:7]
            return du, ddelta, dA, dB.squeeze(1), dC.squeeze(1), dD, dbias

    return MambaScan.apply


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    build(sys.argv[1], sys.argv[2])
