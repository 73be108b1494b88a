"""What the selective-scan benchmarks share: the paper's stage shapes and their inputs, timing and memory probes."""

from __future__ import annotations

import math
import statistics
import time
import traceback

import torch

STAGES = {  # the paper's PAME stages: batch, d_inner (2d) per task, tasks, state, token grid
    "nyud": dict(batch=6, d_inner=1536, tasks=4, state=16, grid=(28, 36)),
    "pascal": dict(batch=6, d_inner=2048, tasks=5, state=64, grid=(32, 32)),
}
NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias")


def stage_inputs(batch, d_inner, tasks, state, length, device, dtype=torch.float32, seed=0):
    """The model's call: u, delta (b, T*d, L) views of (b, L, T*d) memory (channels-last feature maps); B, C
    contiguous (b, T, N, L), as the model's expert maps produce them (before 2026-12-03 the suite used (b, L, T, N)
    views, a layout the model never passes; the Triton wrapper now copies either to (b, L, T, N));
    A = -exp(A_log) with S4D-real init; D ~ 1; delta_bias = softplus^-1 of dt ~ logU[1e-3, 0.1].
    Parameters (A, D, delta_bias) stay float32 for bf16 activations, as under autocast."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    ch = tasks * d_inner

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    u = randn(batch, length, ch).transpose(1, 2)
    delta = (randn(batch, length, ch) * 0.5).transpose(1, 2)
    B = randn(batch, tasks, state, length)
    C = randn(batch, tasks, state, length)
    A = -torch.arange(1, state + 1).repeat(ch, 1) * (1 + 0.1 * torch.rand(ch, state, generator=gen))
    dt = torch.exp(torch.rand(ch, generator=gen) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    bias = dt + torch.log(-torch.expm1(-dt))  # inverse softplus
    D = 1 + 0.1 * torch.randn(ch, generator=gen)
    param_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    params = [t.to(device=device, dtype=param_dtype) for t in (A, D, bias)]
    leaves = [t.requires_grad_() for t in (u, delta, params[0], B, C, params[1], params[2])]
    return dict(zip(NAMES, leaves))


def median_ms(fn, device, repeats=5, leaves=(), budget_ms=300.0):
    """Median time of fn in ms: CUDA events through triton.testing.do_bench (L2 flushed between runs), else
    perf_counter over ``repeats`` runs after one warm-up."""
    if device == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=25, rep=budget_ms, grad_to_none=list(leaves), return_mode="median"))
    fn()
    times = []
    for _ in range(repeats):
        for t in leaves:
            t.grad = None
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def cuda_peak_mb(fn, leaves=()):
    """Peak device memory allocated during fn beyond what was allocated before, in MB."""
    for t in leaves:
        t.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def fwd_and_fwdbwd(scan, inputs, device, repeats=5, budget_ms=300.0):
    """Forward and forward+backward medians (ms) of scan(**inputs), and the forward+backward closure."""
    leaves = [t for t in inputs.values() if t is not None]
    with torch.no_grad():
        g = torch.randn_like(scan(**inputs))

    def forward():
        with torch.no_grad():
            scan(**inputs)

    def forward_backward():
        scan(**inputs).backward(g)

    return (
        median_ms(forward, device, repeats, (), budget_ms),
        median_ms(forward_backward, device, repeats, leaves, budget_ms),
        forward_backward,
    )


def rel(x, ref):
    """Relative difference in norm, in float64."""
    x, ref = x.detach().double(), ref.detach().double()
    return float((x - ref).norm() / ref.norm())


def failure(err):
    """Print a failure's traceback and return a short description for the record."""
    traceback.print_exception(err)
    return repr(err)[:500]
