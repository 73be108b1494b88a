"""CPU selective scan benchmark: the Numba backend (selective_scan_cpu) against the pure-PyTorch reference.

Median forward and forward+backward times (after a warm-up call) at the CPU demo's stage shape and at a long
ungrouped sequence, on the given thread counts, and optionally the kernels' first-call time with an empty and with
a filled on-disk cache (fresh processes)::

    python benchmarks/scan_cpu.py --threads 1,2
    python benchmarks/scan_cpu.py --threads 1 --shapes demo --backends cpu --repeats 9
    python benchmarks/scan_cpu.py --compile-only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from pamm.ops import scan_orders, selective_scan_reference
from pamm.ops.selective_scan_cpu import selective_scan_cpu

SHAPES = {  # name: batch, channels (tasks x d_inner), state, token grid (L = H * W), B/C groups, scan directions
    "demo": dict(batch=8, channels=4 * 128, state=8, grid=(12, 16), groups=4, directions=4),
    "long": dict(batch=2, channels=1536, state=16, grid=(28, 36), groups=None, directions=None),
}
BACKENDS = {"cpu": selective_scan_cpu, "reference": selective_scan_reference}


def make_inputs(batch, channels, state, grid, groups, directions, seed=0):
    """Inputs like the model's: A = -exp(A_log) with S4D-real init, delta_bias = softplus^-1(dt), dt ~
    logU[1e-3, 0.1], D ~ 1; orders: rotated Hilbert curves over the grid (or None)."""
    gen = torch.Generator().manual_seed(seed)
    length = grid[0] * grid[1]
    bc_shape = (batch, state, length) if groups is None else (batch, groups, state, length)
    dt = torch.exp(torch.rand(channels, generator=gen) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    inputs = dict(
        u=torch.randn(batch, channels, length, generator=gen),
        delta=torch.randn(batch, channels, length, generator=gen) * 0.5,
        A=-torch.arange(1, state + 1, dtype=torch.float32).repeat(channels, 1),
        B=torch.randn(*bc_shape, generator=gen),
        C=torch.randn(*bc_shape, generator=gen),
        D=1 + 0.1 * torch.randn(channels, generator=gen),
        delta_bias=dt + torch.log(-torch.expm1(-dt)),
    )
    for t in inputs.values():
        t.requires_grad_()
    orders = None if directions is None else scan_orders(grid[0], grid[1], "hilbert", directions)
    return inputs, orders


def closures(fn, inputs, orders) -> dict:
    """{"fwd": forward without autograd, "fwd+bwd": forward and the gradients of every input}."""
    leaves = list(inputs.values())
    grad = torch.randn(inputs["u"].shape, generator=torch.Generator().manual_seed(1))

    def forward():
        with torch.no_grad():
            fn(**inputs, delta_softplus=True, orders=orders)

    def forward_backward():
        y = fn(**inputs, delta_softplus=True, orders=orders)
        torch.autograd.grad(y, leaves, grad)

    return {"fwd": forward, "fwd+bwd": forward_backward}


def median_times_ms(calls: dict, repeats: int) -> dict:
    """Median time of every call (after one warm-up call each: compile or cache load for the Numba backend). The
    calls are interleaved, round after round, so that a load change on the machine hits them alike."""
    for call in calls.values():
        call()
    times = {key: [] for key in calls}
    for _ in range(repeats):
        for key, call in calls.items():
            start = time.perf_counter()
            call()
            times[key].append(time.perf_counter() - start)
    return {key: 1e3 * statistics.median(t) for key, t in times.items()}


PROBE = """
import json, time
import torch
from pamm.ops import scan_orders
start = time.perf_counter()
from pamm.ops.selective_scan_cpu import selective_scan_cpu  # numba's import and the kernels' decoration
result = {"import_s": time.perf_counter() - start}
for dtype in (torch.float32, torch.float64):
    b, d, n, L = 2, 16, 4, 12
    leaves = [torch.randn(b, d, L, dtype=dtype), torch.randn(b, d, L, dtype=dtype), -torch.rand(d, n, dtype=dtype),
              torch.randn(b, 2, n, L, dtype=dtype), torch.randn(b, 2, n, L, dtype=dtype), torch.ones(d, dtype=dtype),
              torch.zeros(d, dtype=dtype)]
    for t in leaves:
        t.requires_grad_()
    start = time.perf_counter()
    selective_scan_cpu(*leaves, delta_softplus=True, orders=scan_orders(3, 4, "hilbert", 2)).sum().backward()
    result["first_call_" + str(dtype).split(".")[-1] + "_s"] = time.perf_counter() - start
print(json.dumps(result))
"""


def compile_times() -> list[tuple[str, dict]]:
    """Import and first-call times in fresh processes sharing an empty temporary NUMBA_CACHE_DIR: the first process
    compiles the kernels (and fills the cache), the second loads them from it."""
    rows = []
    with tempfile.TemporaryDirectory() as cache_dir:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache_dir}
        for label in ("empty cache (compile)", "filled cache (load)"):
            out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
            rows.append((label, json.loads(out.stdout.strip().splitlines()[-1])))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--threads",
        default="1",
        help="comma-separated thread counts (torch.set_num_threads; the Numba backend follows torch's count)",
    )
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, of {sorted(SHAPES)}")
    parser.add_argument("--backends", default=",".join(BACKENDS), help=f"comma-separated, of {sorted(BACKENDS)}")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (median)")
    parser.add_argument("--compile", action="store_true", help="also time the first call in fresh processes")
    parser.add_argument("--compile-only", action="store_true", help="only the first-call times")
    args = parser.parse_args()
    if not args.compile_only:
        print(
            f"torch {torch.__version__}, {os.cpu_count()} CPUs visible; medians of {args.repeats} interleaved calls "
            "after a warm-up (ms); x: speed-up over the reference"
        )
        header = f"{'shape':<6} {'backend':<8} {'threads':>7} {'fwd':>9} {'fwd+bwd':>9} {'fwd x':>7} {'f+b x':>7}"
        print(header)
        print("-" * len(header))
        for shape in args.shapes.split(","):
            inputs, orders = make_inputs(**SHAPES[shape])
            for threads in (int(t) for t in args.threads.split(",")):
                torch.set_num_threads(threads)
                calls = {
                    (name, mode): call
                    for name in args.backends.split(",")
                    for mode, call in closures(BACKENDS[name], inputs, orders).items()
                }
                ms = median_times_ms(calls, args.repeats)
                for name in args.backends.split(","):
                    fwd, fwd_bwd = ms[name, "fwd"], ms[name, "fwd+bwd"]
                    speedup = f"{'':>7} {'':>7}"
                    if name != "reference" and ("reference", "fwd") in ms:
                        speedup = f"{ms['reference', 'fwd'] / fwd:7.1f} {ms['reference', 'fwd+bwd'] / fwd_bwd:7.1f}"
                    print(f"{shape:<6} {name:<8} {threads:>7} {fwd:9.1f} {fwd_bwd:9.1f} {speedup}", flush=True)
    if args.compile or args.compile_only:
        print(
            "\nselective_scan_cpu in a fresh process (s): import (after torch's), then the first float32 and float64 "
            "forward+backward"
        )
        for label, result in compile_times():
            print(
                f"  {label:<22} import {result['import_s']:.1f}  float32 {result['first_call_float32_s']:.1f}  "
                f"float64 {result['first_call_float64_s']:.1f}"
            )


if __name__ == "__main__":
    main()
