"""Selective scan benchmark.

Table mode (any device): median forward and forward+backward time and peak memory of each backend at one shape::

    python benchmarks/scan.py --device cpu --threads 2 --shape 2,1536,16,1008 --backends reference,chunked

Suite mode (CUDA): correctness of the Triton kernels against the reference, the card's copy bandwidth and exp2
rate, a launch-config sweep, the paper's PAME stage shapes (NYUD, PASCAL: all tasks x 4 Hilbert directions) for the
fused Triton launch, the chunked backend and the authors' pattern (one call per task per direction with permuted
copies, summed) on our single-direction Triton call and, when built, on mamba-ssm's CUDA kernel; and a sweep over
the sequence length. Writes scan_suite.json (and the plot, see plot_scan.py) to --out::

    python benchmarks/scan.py --device cuda --suite --out results/ [--mamba-build DIR]

Quick suite (CUDA, about 2 minutes on a warm H100, most of it compiling): the card's copy bandwidth and exp2 rate,
then the Triton kernel variants against each other at the two stage shapes, v2 and v3 (tiled) with their default
launch configs and a few v3 alternatives (``SWEEP`` in selective_scan_triton_tiled.py): forward and forward+backward
ms, peak MB and the largest relative difference of y and every gradient from v2's; then v3's values and gradients
against the float64 reference at small shapes (fp32 N=16 and N=64, fp64, bf16)::

    python benchmarks/scan.py --device cuda --suite --quick --out results/ [--no-sweep]

The same comparison as a CPU dry run (Triton's interpreter, tiny shapes; checks the code path, not the speed)::

    python benchmarks/scan.py --device cpu --tiny --out /tmp/scan-dry

mamba-ssm is a comparison only, built from its PyPI source distribution (never a dependency)::

    python benchmarks/scan.py --build-mamba mamba_ssm-2.3.2.post1.tar.gz --mamba-build DIR
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import time
import traceback
from pathlib import Path

import torch

from pamm.ops import inverse_orders, scan_orders
from pamm.ops.selective_scan import BACKENDS, selective_scan, selective_scan_reference

STAGES = {  # the paper's PAME stages: batch, d_inner (2d) per task, tasks, state, token grid
    "nyud": dict(batch=6, d_inner=1536, tasks=4, state=16, grid=(28, 36)),
    "pascal": dict(batch=6, d_inner=2048, tasks=5, state=64, grid=(32, 32)),
}
SWEEP_GRIDS = [(16, 16), (16, 32), (32, 32), (32, 64), (64, 64), (64, 128), (128, 128)]  # L = 256 .. 16384
MAMBA_DONE = "BUILD_OK"


# ---- inputs ------------------------------------------------------------------------------------------------------

def stage_inputs(batch, d_inner, tasks, state, length, device, dtype=torch.float32, seed=0):
    """The model's call: u, delta (b, T*d, L) views of (b, L, T*d) memory; B, C (b, T, N, L) views of (b, L, T, N)
    memory; A = -exp(A_log) with S4D-real init; D ~ 1; delta_bias = softplus^-1 of dt ~ logU[1e-3, 0.1]."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    ch = tasks * d_inner

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    u = randn(batch, length, ch).transpose(1, 2)
    delta = (randn(batch, length, ch) * 0.5).transpose(1, 2)
    B = randn(batch, length, tasks, state).permute(0, 2, 3, 1)
    C = randn(batch, length, tasks, state).permute(0, 2, 3, 1)
    A = -torch.arange(1, state + 1).repeat(ch, 1) * (1 + 0.1 * torch.rand(ch, state, generator=gen))
    dt = torch.exp(torch.rand(ch, generator=gen) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    bias = dt + torch.log(-torch.expm1(-dt))  # inverse softplus
    D = 1 + 0.1 * torch.randn(ch, generator=gen)
    param_dtype = torch.float64 if dtype == torch.float64 else torch.float32  # mamba-ssm wants float32 here
    params = [t.to(device=device, dtype=param_dtype) for t in (A, D, bias)]
    leaves = [t.requires_grad_() for t in (u, delta, params[0], B, C, params[1], params[2])]
    return dict(zip(("u", "delta", "A", "B", "C", "D", "delta_bias"), leaves))


def table_inputs(b, d, N, L, device, seed=0):
    gen = torch.Generator(device="cpu").manual_seed(seed)
    u = torch.randn(b, d, L, generator=gen)
    delta = torch.randn(b, d, L, generator=gen) * 0.5 - 1.0
    A = -torch.arange(1, N + 1, dtype=torch.float32).repeat(d, 1)
    B = torch.randn(b, N, L, generator=gen)
    C = torch.randn(b, N, L, generator=gen)
    D = torch.ones(d)
    bias = torch.full((d,), -2.0)
    leaves = [t.to(device).requires_grad_() for t in (u, delta, A, B, C, D, bias)]
    return dict(zip(("u", "delta", "A", "B", "C", "D", "delta_bias"), leaves))


# ---- timing ------------------------------------------------------------------------------------------------------

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


def saved_extra_mb(fn, inputs):
    """MB that autograd keeps for backward beyond the inputs' own storage (each storage counted once)."""
    own = {t.untyped_storage().data_ptr() for t in inputs.values() if t is not None}
    kept = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in own:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(kept.values()) / 2**20


def fwd_and_fwdbwd(scan, inputs, device, repeats=5, budget_ms=300.0):
    """Forward and forward+backward medians (ms) of scan(**inputs)."""
    leaves = [t for t in inputs.values() if t is not None]
    with torch.no_grad():
        g = torch.randn_like(scan(**inputs))

    def forward():
        with torch.no_grad():
            scan(**inputs)

    def forward_backward():
        scan(**inputs).backward(g)

    return (median_ms(forward, device, repeats, (), budget_ms),
            median_ms(forward_backward, device, repeats, leaves, budget_ms), forward_backward)


# ---- table mode --------------------------------------------------------------------------------------------------

def measure_backend(backend, shape, device, directions, repeats):
    b, d, N, L = shape
    inputs = table_inputs(b, d, N, L, device)
    orders = None if directions == 0 else torch.stack([torch.randperm(L) for _ in range(directions)]).to(device)

    def scan(**kw):
        return selective_scan(**kw, delta_softplus=True, orders=orders, backend=backend)

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    saved = saved_extra_mb(lambda: scan(**inputs), inputs)
    fwd, fwdbwd, step = fwd_and_fwdbwd(scan, inputs, device, repeats)
    row = dict(backend=backend, fwd_ms=fwd, fwd_bwd_ms=fwdbwd, saved_for_backward_mb=saved)
    if device == "cuda":
        row["peak_mb"] = cuda_peak_mb(step, [t for t in inputs.values() if t is not None])
    else:  # high-water mark of this (fresh) process; ru_maxrss is in KiB on Linux
        row["peak_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    return row


def table(args):
    shape = tuple(int(x) for x in args.shape.split(","))
    rows = []
    for backend in args.backends.split(","):
        if args.device == "cpu":  # a fresh process per backend, so that its peak memory is its own
            cmd = [sys.executable, __file__, "--device", "cpu", "--shape", args.shape, "--child", backend,
                   "--directions", str(args.directions), "--repeats", str(args.repeats)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
        else:
            rows.append(measure_backend(backend, shape, args.device, args.directions, args.repeats))
    title = (f"selective scan, (b, d, N, L) = {shape}, fp32, softplus + bias, "
             f"{args.directions or 1} direction(s), {args.device}, torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads, median of {args.repeats}")
    print(title)
    print(f"{'backend':<12}{'fwd ms':>10}{'fwd+bwd ms':>12}{'peak MB':>10}{'saved MB':>10}")
    for r in rows:
        print(f"{r['backend']:<12}{r['fwd_ms']:>10.1f}{r['fwd_bwd_ms']:>12.1f}{r['peak_mb']:>10.1f}"
              f"{r['saved_for_backward_mb']:>10.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(title=title, rows=rows), indent=1))


# ---- mamba-ssm (comparison only) -----------------------------------------------------------------------------------

def build_mamba(sdist, build_dir):
    """Build mamba-ssm's csrc/selective_scan for this GPU's architecture only; writes BUILD_OK when done."""
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
    load(name="selective_scan_cuda", sources=sources, build_directory=str(_mamba_obj_dir(build_dir)),
         extra_cflags=["-O3", "-std=c++17"], extra_cuda_cflags=_MAMBA_NVCC, verbose=True)
    (build_dir / MAMBA_DONE).write_text(f"{time.time() - start:.1f}")


_MAMBA_NVCC = ["-O3", "-std=c++17", "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
               "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
               "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
               "--expt-relaxed-constexpr", "--expt-extended-lambda", "--use_fast_math"]


def _mamba_obj_dir(build_dir):
    path = Path(build_dir) / "obj"
    path.mkdir(parents=True, exist_ok=True)
    return path


def load_mamba(build_dir, wait_s):
    """The built extension module, waiting up to wait_s for a build running beside us; None if unavailable."""
    if build_dir is None:
        return None
    done = Path(build_dir) / MAMBA_DONE
    deadline = time.time() + wait_s
    while not done.exists() and time.time() < deadline:
        time.sleep(2)
    if not done.exists():
        return None
    import importlib.util

    so = next(_mamba_obj_dir(build_dir).glob("selective_scan_cuda*.so"))
    spec = importlib.util.spec_from_file_location("selective_scan_cuda", so)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mamba_scan_fn(ext):
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
            du, ddelta, dA, dB, dC, dD, dbias = ext.bwd(u, delta, A, B, C, D, None, delta_bias, dout.contiguous(), x,
                                                        None, None, True, False)[:7]
            return du, ddelta, dA, dB.squeeze(1), dC.squeeze(1), dD, dbias

    return MambaScan.apply


# ---- the authors' pattern ------------------------------------------------------------------------------------------

def authors_pattern(scan_one, u, delta, A, B, C, D, delta_bias, orders, tasks):
    """One scan per task per direction, each on permuted copies of u, delta, B, C; outputs un-permuted and summed
    over directions (released PAMM code's structure). scan_one(u, delta, A, B, C, D, delta_bias) -> (b, d, L)."""
    d = u.shape[1] // tasks
    inverse = inverse_orders(orders)
    outs = []
    for t in range(tasks):
        ch = slice(t * d, (t + 1) * d)
        y = 0
        for k in range(orders.shape[0]):
            perm = orders[k]
            y_k = scan_one(u[:, ch].index_select(2, perm), delta[:, ch].index_select(2, perm), A[ch],
                           B[:, t].index_select(2, perm), C[:, t].index_select(2, perm), D[ch], delta_bias[ch])
            y = y + y_k.index_select(2, inverse[k])
        outs.append(y)
    return torch.cat(outs, 1)


# ---- suite -------------------------------------------------------------------------------------------------------

def failure(err):
    """Print a failure's traceback and return a short description for the record."""
    traceback.print_exception(err)
    return repr(err)[:500]


def rel(x, ref):
    x, ref = x.detach().double(), ref.detach().double()
    return float((x - ref).norm() / ref.norm())


def check_against_reference(backend, dtype, device, tasks, N, grid, config=None, kernel=None, d_inner=32):
    """Values and all gradients of backend vs the float64 reference, model layout, 4 Hilbert directions. kernel:
    the Triton variant ("v2", "v3"; None: $PAMM_SCAN_KERNEL, else v2)."""
    L = grid[0] * grid[1]
    inputs = stage_inputs(2, d_inner, tasks, N, L, device, dtype=dtype, seed=L + N)
    orders = scan_orders(*grid, device=device)
    kw = dict(delta_softplus=True, orders=orders)
    if kernel is not None:
        from pamm.ops.selective_scan_triton import selective_scan_triton

        y = selective_scan_triton(**inputs, **kw, config=config, kernel=kernel)
    elif config:
        y = BACKENDS[backend](**inputs, **kw, config=config)
    else:
        y = selective_scan(**inputs, **kw, backend=backend)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, list(inputs.values()), g)
    wide = {k: v.detach().double().requires_grad_() for k, v in inputs.items()}
    y_ref = selective_scan_reference(**wide, **kw)
    grads_ref = torch.autograd.grad(y_ref, list(wide.values()), g.double())
    errs = {"y": rel(y, y_ref)}
    errs.update({f"d{name}": rel(a, b) for name, a, b in zip(inputs, grads, grads_ref)})
    finite = bool(torch.isfinite(y).all()) and all(bool(torch.isfinite(a).all()) for a in grads)
    return dict(backend=backend if kernel is None else f"triton {kernel}", dtype=str(dtype).replace("torch.", ""),
                tasks=tasks, N=N, L=L, finite=finite, max_rel_err=max(errs.values()), errors=errs)


def copy_bandwidth_gbs():
    """Device-to-device copy of 1 GiB, bytes read + written per second (GB/s)."""
    from triton.testing import do_bench

    src = torch.empty(2**28, dtype=torch.float32, device="cuda").normal_()
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=50, rep=500, return_mode="median")
    return 2 * src.numel() * 4 / (ms * 1e-3) / 1e9


def exp2_rate():
    """Measured exp2 results per second of a Triton kernel doing nothing else (4 independent chains a thread)."""
    import triton
    import triton.language as tl
    from triton.testing import do_bench

    @triton.jit
    def exp2_chain(x_ptr, iters, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        a = tl.load(x_ptr + offs)
        b = a + 0.25
        c = a + 0.5
        d = a + 0.75
        for _ in range(iters):
            a = tl.exp2(a * -0.5)
            b = tl.exp2(b * -0.5)
            c = tl.exp2(c * -0.5)
            d = tl.exp2(d * -0.5)
        tl.store(x_ptr + offs, a + b + c + d)

    sms = torch.cuda.get_device_properties(0).multi_processor_count
    block, iters = 1024, 4096
    x = torch.rand(sms * 8 * block, device="cuda")
    ms = do_bench(lambda: exp2_chain[(sms * 8,)](x, iters, BLOCK=block, num_warps=8), warmup=25, rep=200,
                  return_mode="median")
    return x.numel() * iters * 4 / (ms * 1e-3)


def stage_bytes(inputs, K):
    """Bytes of one forward: each input read once and y written once; and the same counted per direction."""
    u, delta, B, C = (inputs[k] for k in ("u", "delta", "B", "C"))
    once = (2 * u.numel() + u.numel()) * u.element_size() + (B.numel() + C.numel()) * B.element_size()
    return once, K * once


def sweep_configs(name, stage, device, record, quick=False):
    """Time forward and forward+backward of the fused launch for a few launch configs; returns the best."""
    from pamm.ops.selective_scan_triton import kernel_config, selective_scan_triton

    L = stage["grid"][0] * stage["grid"][1]
    inputs = stage_inputs(stage["batch"], stage["d_inner"], stage["tasks"], stage["state"], L, device)
    orders = scan_orders(*stage["grid"], device=device)
    base = kernel_config(stage["state"], stage["d_inner"])
    if stage["state"] <= 16:
        fwd_cands, bwd_cands = [(16, 1), (16, 2), (32, 2), (64, 4)], [(16, 2), (16, 1), (32, 4)]
    else:
        fwd_cands, bwd_cands = [(8, 2), (16, 4), (32, 8)], [(16, 4), (8, 2)]
    if quick:  # the first of each: the smallest blocks that compile without spills (docs/kernel-notes.md)
        fwd_cands, bwd_cands = [fwd_cands[1 if stage["state"] <= 16 else 0], fwd_cands[-1]], bwd_cands[:1]
    results = {"fwd": [], "bwd": []}
    best_fwd = None
    for bd, nw in fwd_cands:
        cfg = dict(base, block_d=bd, num_warps=nw)
        def forward(cfg=cfg):
            with torch.no_grad():
                selective_scan_triton(**inputs, delta_softplus=True, orders=orders, config=cfg, kernel="v2")

        try:
            ms = median_ms(forward, device)
        except Exception as err:  # a config that does not compile or launch is recorded, not fatal
            results["fwd"].append(dict(block_d=bd, num_warps=nw, error=failure(err)))
            continue
        results["fwd"].append(dict(block_d=bd, num_warps=nw, ms=ms))
        if best_fwd is None or ms < best_fwd[0]:
            best_fwd = (ms, bd, nw)
    record["config_sweep"][name] = dict(results, default=base)
    if best_fwd is None:
        return base
    best = dict(base, block_d=best_fwd[1], num_warps=best_fwd[2])
    leaves = list(inputs.values())
    with torch.no_grad():
        g = torch.randn_like(selective_scan_triton(**inputs, delta_softplus=True, orders=orders, kernel="v2"))
    best_bwd = None
    for bd, nw in bwd_cands:
        cfg = dict(best, bwd_block_d=bd, bwd_num_warps=nw)

        def step(cfg=cfg):
            selective_scan_triton(**inputs, delta_softplus=True, orders=orders, config=cfg, kernel="v2").backward(g)

        try:
            ms = median_ms(step, device, leaves=leaves)
        except Exception as err:
            results["bwd"].append(dict(block_d=bd, num_warps=nw, error=failure(err)))
            continue
        results["bwd"].append(dict(block_d=bd, num_warps=nw, fwd_bwd_ms=ms))
        if best_bwd is None or ms < best_bwd[0]:
            best_bwd = (ms, bd, nw)
    if best_bwd is not None:
        best.update(bwd_block_d=best_bwd[1], bwd_num_warps=best_bwd[2])
    record["config_sweep"][name] = dict(results, default=base, best=best)
    print(f"[sweep] {name}: best {best}  fwd {[r.get('ms') for r in results['fwd']]} "
          f"fwd+bwd {[r.get('fwd_bwd_ms') for r in results['bwd']]}", flush=True)
    return best


def scan_variants(orders, tasks, mamba=None, config=None):
    """The compared implementations of one stage's scans, each fn(**inputs) -> y (b, T*d, L)."""
    from pamm.ops.selective_scan_chunked import selective_scan_chunked
    from pamm.ops.selective_scan_triton import selective_scan_triton

    def triton_one(u, delta, A, B, C, D, delta_bias):
        return selective_scan_triton(u, delta, A, B, C, D, delta_bias, delta_softplus=True, kernel="v2")

    variants = {
        "triton fused (one launch)": lambda **kw: selective_scan_triton(**kw, delta_softplus=True, orders=orders,
                                                                        config=config, kernel="v2"),
        "triton v3 tiled (one launch)": lambda **kw: selective_scan_triton(**kw, delta_softplus=True, orders=orders,
                                                                           kernel="v3"),
        "chunked (PyTorch)": lambda **kw: selective_scan_chunked(**kw, delta_softplus=True, orders=orders),
        "authors' pattern + our triton": lambda **kw: authors_pattern(triton_one, orders=orders, tasks=tasks, **kw),
    }
    if mamba is not None:
        mamba_one = mamba_scan_fn(mamba)
        variants["authors' pattern + mamba-ssm"] = lambda **kw: authors_pattern(mamba_one, orders=orders, tasks=tasks,
                                                                               **kw)
    return variants


def fused_vs_chunked(inputs, orders, config):
    """Relative differences of y and every gradient between the fused Triton launch and the chunked backend."""
    from pamm.ops.selective_scan_chunked import selective_scan_chunked
    from pamm.ops.selective_scan_triton import selective_scan_triton

    results = []
    for scan in (lambda: selective_scan_triton(**inputs, delta_softplus=True, orders=orders, config=config,
                                               kernel="v2"),
                 lambda: selective_scan_chunked(**inputs, delta_softplus=True, orders=orders)):
        y = scan()
        g = torch.randn(y.shape, generator=torch.Generator(device=y.device).manual_seed(0), device=y.device)
        results.append([y.detach()] + list(torch.autograd.grad(y, list(inputs.values()), g)))
    names = ["y"] + [f"d{k}" for k in inputs]
    return {n: rel(a, b) for n, a, b in zip(names, *results)}


def time_stage(name, stage, device, best_cfg, mamba, record, only=None):
    L = stage["grid"][0] * stage["grid"][1]
    inputs = stage_inputs(stage["batch"], stage["d_inner"], stage["tasks"], stage["state"], L, device)
    orders = scan_orders(*stage["grid"], device=device)
    K = orders.shape[0]
    once, per_direction = stage_bytes(inputs, K)
    exps = K * inputs["u"].numel() * stage["state"]
    tasks = stage["tasks"]
    variants = scan_variants(orders, tasks, mamba, best_cfg)
    if only:
        variants = {k: v for k, v in variants.items() if k in only}
        record.setdefault("fused_vs_chunked", {})[name] = fused_vs_chunked(inputs, orders, best_cfg)
        print(f"[agree] {name}: {record['fused_vs_chunked'][name]}", flush=True)
    rows = []
    reference_y = None
    for label, fn in variants.items():
        try:
            with torch.no_grad():
                y = fn(**inputs)
            if reference_y is None:
                reference_y = y
            agreement = rel(y, reference_y)
            del y
            fwd, fwdbwd, step = fwd_and_fwdbwd(fn, inputs, device, budget_ms=150 if only else 400)
            peak = cuda_peak_mb(step, list(inputs.values()))
        except Exception as err:
            rows.append(dict(variant=label, error=failure(err)))
            continue
        rows.append(dict(variant=label, fwd_ms=fwd, fwd_bwd_ms=fwdbwd, bwd_ms=fwdbwd - fwd, peak_mb=peak,
                         fwd_gbs_inputs_once=once / (fwd * 1e-3) / 1e9,
                         fwd_gbs_per_direction=per_direction / (fwd * 1e-3) / 1e9,
                         rel_diff_vs_fused=agreement))
        print(f"[stage] {name} {label}: fwd {fwd:.3f} ms, fwd+bwd {fwdbwd:.3f} ms, peak {peak:.0f} MB, "
              f"diff {agreement:.1e}", flush=True)
    record["stages"][name] = dict(shape=dict(stage, L=L, K=K, channels=tasks * stage["d_inner"]),
                                  bytes_inputs_once=once, bytes_per_direction=per_direction, exp2_count=exps,
                                  config=best_cfg, rows=rows)


def length_sweep(device, mamba, record, only=None):
    stage = dict(STAGES["nyud"], batch=1)
    series = {}
    for grid in SWEEP_GRIDS:
        L = grid[0] * grid[1]
        inputs = stage_inputs(stage["batch"], stage["d_inner"], stage["tasks"], stage["state"], L, device)
        runs = scan_variants(scan_orders(*grid, device=device), stage["tasks"], mamba)
        if only:
            runs = {k: v for k, v in runs.items() if k in only}
        for label, fn in runs.items():
            try:
                fwd, fwdbwd, _ = fwd_and_fwdbwd(fn, inputs, device, budget_ms=60 if only else 150)
            except Exception as err:
                failure(err)
                continue
            series.setdefault(label, []).append(dict(L=L, fwd_ms=fwd, fwd_bwd_ms=fwdbwd))
        print(f"[sweep-L] L={L}: " + ", ".join(f"{k} {v[-1]['fwd_ms']:.2f}/{v[-1]['fwd_bwd_ms']:.2f} ms"
                                             for k, v in series.items() if v and v[-1]["L"] == L), flush=True)
        del inputs
        torch.cuda.empty_cache()
    record["length_sweep"] = dict(shape=dict(stage, K=4), series=series)


# ---- Triton kernel variants (v2, v3) ---------------------------------------------------------------------------

TINY_STAGES = {  # the CPU dry run (--tiny): the stages' state sizes (which pick the configs), tiny everything else
    "nyud": dict(batch=1, d_inner=8, tasks=2, state=16, grid=(2, 3)),
    "pascal": dict(batch=1, d_inner=8, tasks=1, state=64, grid=(2, 2)),
}
V3_CHECKS = [  # (dtype, tasks, N, grid): v3 against the float64 reference before it is timed
    (torch.float32, 4, 16, (10, 20)), (torch.float32, 2, 64, (9, 7)), (torch.float64, 2, 16, (5, 7)),
    (torch.bfloat16, 2, 16, (8, 8)),
]


def kernel_variants(state, sweep=True):
    """The Triton kernels compared at one stage: [(label, kernel, config overrides or None)]; v2 first (the
    baseline of the differences), then v3 with its defaults and, with sweep, v3's alternatives (``SWEEP``)."""
    from pamm.ops.selective_scan_triton_tiled import SWEEP

    variants = [("v2", "v2", None), ("v3", "v3", None)]
    if sweep:
        key = min((k for k in SWEEP if k >= state), default=max(SWEEP))
        variants += [(f"v3 alt{i + 1}", "v3", cfg) for i, cfg in enumerate(SWEEP[key])]
    return variants


def resolved_config(kernel, state, chans_per_group, overrides):
    """The launch config a variant runs with (its kernel's defaults updated with the overrides)."""
    if kernel == "v3":
        from pamm.ops.selective_scan_triton_tiled import resolve_config

        return resolve_config(state, chans_per_group, overrides)
    from pamm.ops.selective_scan_triton import kernel_config

    return dict(kernel_config(state, chans_per_group), **(overrides or {}))


def compare_kernels(name, stage, device, record, save, sweep=True, repeats=5):
    """Forward and forward+backward time (and on CUDA peak MB) of each Triton kernel variant at one stage's call,
    with the largest relative difference of y and each gradient from the first variant's (v2). repeats=0 (the dry
    run): one call of each, timed once (meaningless under the interpreter)."""
    from pamm.ops.selective_scan_triton import selective_scan_triton

    L = stage["grid"][0] * stage["grid"][1]
    inputs = stage_inputs(stage["batch"], stage["d_inner"], stage["tasks"], stage["state"], L, device)
    orders = scan_orders(*stage["grid"], device=device)
    leaves = list(inputs.values())
    exps = orders.shape[0] * inputs["u"].numel() * stage["state"]
    out = record["kernels"].setdefault(name, dict(shape=dict(stage, L=L, K=orders.shape[0]), exp2_count=exps,
                                                  rows=[]))
    gen = torch.Generator(device="cpu").manual_seed(1)
    g = torch.randn(inputs["u"].shape, generator=gen).to(device)
    base, base_label = None, None
    for label, kernel, overrides in kernel_variants(stage["state"], sweep):
        cfg = resolved_config(kernel, stage["state"], stage["d_inner"], overrides)

        def scan(kernel=kernel, overrides=overrides, **kw):
            return selective_scan_triton(**kw, delta_softplus=True, orders=orders, config=overrides, kernel=kernel)

        row = dict(variant=label, kernel=kernel, config=cfg)
        try:
            start = time.perf_counter()
            y = scan(**inputs)
            values = [y.detach()] + list(torch.autograd.grad(y, leaves, g))
            del y
            first_ms = (time.perf_counter() - start) * 1e3  # with compilation on a GPU
            if base is None:
                base, base_label = values, label
            diffs = {n: rel(a, b) for n, a, b in zip(["y"] + [f"d{k}" for k in inputs], values, base)}
            del values
            if repeats:
                fwd, fwdbwd, step = fwd_and_fwdbwd(scan, inputs, device, repeats, budget_ms=150)
            else:
                start = time.perf_counter()
                with torch.no_grad():
                    scan(**inputs)
                fwd, fwdbwd = (time.perf_counter() - start) * 1e3, first_ms
            if device == "cuda":
                row["peak_mb"] = cuda_peak_mb(step, leaves)
        except Exception as err:  # a variant that does not compile or launch is recorded, not fatal
            row["error"] = failure(err)
            out["rows"].append(row)
            save()
            continue
        row.update(fwd_ms=fwd, fwd_bwd_ms=fwdbwd, bwd_ms=fwdbwd - fwd, first_call_ms=first_ms,
                   max_rel_diff=max(diffs.values()), rel_diff_vs=base_label, rel_diffs=diffs)
        out["rows"].append(row)
        save()
        print(f"[kernels] {name} {label:8s} fwd {fwd:9.3f} ms  fwd+bwd {fwdbwd:9.3f} ms  "
              f"peak {row.get('peak_mb', float('nan')):7.0f} MB  max diff vs {base_label} {row['max_rel_diff']:.1e}  "
              f"{cfg}", flush=True)
    return out


def summarize_kernels(record):
    exp_rate = record.get("exp2_per_s")
    for name, st in record["kernels"].items():
        floor = f", exp2 floor {st['exp2_count'] / exp_rate * 1e3:.2f} ms" if exp_rate else ""
        print(f"{name}: {st['shape']}{floor}")
        print(f"  {'variant':<10}{'fwd ms':>10}{'fwd+bwd':>10}{'bwd':>10}{'peak MB':>9}{'max diff':>10}  config")
        for r in st["rows"]:
            if "error" in r:
                print(f"  {r['variant']:<10} error: {r['error'][:100]}")
                continue
            print(f"  {r['variant']:<10}{r['fwd_ms']:>10.3f}{r['fwd_bwd_ms']:>10.3f}{r['bwd_ms']:>10.3f}"
                  f"{r.get('peak_mb', float('nan')):>9.0f}{r['max_rel_diff']:>10.1e}  {r['config']}")


def v3_checks(device, record, save, check_scale=None):
    """v3's values and gradients against the float64 reference (V3_CHECKS; check_scale: a small grid, one task
    of 8 channels, for the dry run)."""
    for dtype, tasks, N, grid in V3_CHECKS:
        d_inner = 32
        if check_scale:
            tasks, grid, d_inner = 1, check_scale, 8
        try:
            result = check_against_reference("triton", dtype, device, tasks, N, grid, kernel="v3", d_inner=d_inner)
        except Exception as err:
            result = dict(backend="triton v3", dtype=str(dtype), error=failure(err))
        record["checks"].append(result)
        print(f"[check] {result}", flush=True)
        save()


def kernel_comparison(stages, device, record, save, sweep=True, repeats=5, check_scale=None):
    """compare_kernels at each stage (every variant's values against v2's at the stage shapes), then v3_checks
    (against the float64 reference; after the timings, so that a run cut short still has them)."""
    record.setdefault("kernels", {})
    for name, stage in stages.items():
        compare_kernels(name, stage, device, record, save, sweep, repeats)
        if device == "cuda":
            torch.cuda.empty_cache()
    v3_checks(device, record, save, check_scale)


def dry_run(args):
    """The quick suite's kernel comparison on CPU through Triton's interpreter at TINY_STAGES (main() sets
    TRITON_INTERPRET before Triton is imported): checks the variants, their configs and the record, not speed."""
    record = dict(date=time.strftime("%Y-%m-%d"), device="cpu (Triton interpreter)", torch=torch.__version__,
                  command=" ".join(sys.argv), checks=[], kernels={})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def save():
        (out / "scan_suite.json").write_text(json.dumps(record, indent=1))

    kernel_comparison(TINY_STAGES, "cpu", record, save, sweep=not args.no_sweep, repeats=0, check_scale=(2, 2))
    summarize_kernels(record)
    failed = [c for c in record["checks"] if "error" in c or not c.get("finite") or c["max_rel_err"] > 1e-2]
    failed += [r for st in record["kernels"].values() for r in st["rows"] if "error" in r or r["max_rel_diff"] > 1e-4]
    if failed:
        raise SystemExit(f"dry run: {len(failed)} failed checks or variants")


def suite(args):
    import triton

    device = "cuda"
    props = torch.cuda.get_device_properties(0)
    record = dict(date=time.strftime("%Y-%m-%d"), device=props.name, sms=props.multi_processor_count,
                  torch=torch.__version__, triton=triton.__version__, command=" ".join(sys.argv),
                  checks=[], config_sweep={}, stages={})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def save():
        (out / "scan_suite.json").write_text(json.dumps(record, indent=1))

    print(f"{record['device']}, {record['sms']} SMs, torch {record['torch']}, triton {record['triton']}", flush=True)
    checks = [("triton", torch.float32, 4, 16, (10, 20)), ("triton", torch.float32, 2, 64, (9, 7)),
              ("triton", torch.float64, 2, 16, (5, 7)), ("triton", torch.bfloat16, 2, 16, (8, 8)),
              ("chunked", torch.float32, 2, 16, (10, 20)), ("auto", torch.float32, 2, 8, (6, 6))]
    if args.quick:  # the Triton kernel variants only: v3's checks come with the comparison, after the ceilings
        checks = []
    for backend, dtype, tasks, N, grid in checks:
        try:
            result = check_against_reference(backend, dtype, device, tasks, N, grid)
        except Exception as err:
            result = dict(backend=backend, dtype=str(dtype), error=failure(err))
        record["checks"].append(result)
        print(f"[check] {result}", flush=True)
    save()
    record["copy_bandwidth_gbs"] = copy_bandwidth_gbs()
    record["exp2_per_s"] = exp2_rate()
    print(f"[ceilings] copy {record['copy_bandwidth_gbs']:.0f} GB/s, exp2 {record['exp2_per_s']:.3e}/s", flush=True)
    save()
    if args.quick:
        kernel_comparison(STAGES, device, record, save, sweep=not args.no_sweep)
        print(f"\n{record['date']} {record['device']}  copy {record['copy_bandwidth_gbs']:.0f} GB/s  "
              f"exp2 {record['exp2_per_s']:.2e}/s  torch {record['torch']} triton {record['triton']}")
        for c in record["checks"]:
            print(f"check {c.get('backend')} {c.get('dtype')} N={c.get('N')}: max rel err {c.get('max_rel_err', c)}")
        summarize_kernels(record)
        return
    v3_checks(device, record, save)
    best = {name: sweep_configs(name, stage, device, record) for name, stage in STAGES.items()}
    save()
    mamba = load_mamba(args.mamba_build, args.mamba_wait)
    record["mamba_ssm"] = "built" if mamba is not None else "not available"
    if args.mamba_build and (Path(args.mamba_build) / MAMBA_DONE).exists():
        record["mamba_build_s"] = float((Path(args.mamba_build) / MAMBA_DONE).read_text())
    for name, stage in STAGES.items():
        time_stage(name, stage, device, best[name], mamba, record)
        save()
    length_sweep(device, mamba, record)
    save()
    summarize(record)
    if not args.no_plot:
        from plot_scan import plot

        plot(record, out / "scan_vs_length.png")


def summarize(record):
    bw = record["copy_bandwidth_gbs"]
    print(f"\n{record['date']} {record['device']}  copy {bw:.0f} GB/s  exp2 {record['exp2_per_s']:.2e}/s  "
          f"torch {record['torch']} triton {record['triton']}")
    for c in record["checks"]:
        print(f"check {c.get('backend')} {c.get('dtype')} N={c.get('N')}: max rel err {c.get('max_rel_err', c)}")
    for name, st in record["stages"].items():
        exp_floor_ms = st["exp2_count"] / record["exp2_per_s"] * 1e3
        byte_floor_ms = st["bytes_inputs_once"] / (bw * 1e9) * 1e3
        print(f"{name}: {st['shape']}  floors: bytes(once) {byte_floor_ms:.2f} ms, exp2 {exp_floor_ms:.2f} ms; "
              f"config {st['config']}")
        print(f"  {'variant':<32}{'fwd ms':>9}{'fwd+bwd':>9}{'peak MB':>9}{'GB/s once':>10}{'% copy':>7}")
        for r in (r for r in st["rows"] if "error" not in r):
            print(f"  {r['variant']:<32}{r['fwd_ms']:>9.3f}{r['fwd_bwd_ms']:>9.3f}{r['peak_mb']:>9.0f}"
                  f"{r['fwd_gbs_inputs_once']:>10.0f}{100 * r['fwd_gbs_inputs_once'] / bw:>7.1f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--shape", default="2,1536,16,1008", help="b,d,N,L for the table mode")
    parser.add_argument("--backends", default="reference,chunked")
    parser.add_argument("--directions", type=int, default=0, help="random scan orders (0: natural order only)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", help="write the table mode's rows here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--suite", action="store_true", help="the CUDA suite (see the module docstring)")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--quick", action="store_true",
                        help="suite: the Triton kernel variants (v2, v3) at the stage shapes only (no mamba-ssm)")
    parser.add_argument("--no-sweep", action="store_true", help="quick suite / dry run: v2 and v3 defaults only")
    parser.add_argument("--tiny", action="store_true",
                        help="with --device cpu: the quick suite's kernel comparison as a dry run through Triton's "
                             "interpreter at tiny shapes")
    parser.add_argument("--build-mamba", metavar="SDIST", help="build mamba-ssm's selective scan from its sdist")
    parser.add_argument("--mamba-build", metavar="DIR", help="where the mamba-ssm extension is (being) built")
    parser.add_argument("--mamba-wait", type=float, default=300.0, help="seconds to wait for that build")
    args = parser.parse_args()
    if args.tiny:
        if args.device != "cpu":
            parser.error("--tiny is the CPU dry run (Triton's interpreter); use --suite --quick on CUDA")
        os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        shape = tuple(int(x) for x in args.shape.split(","))
        print(json.dumps(measure_backend(args.child, shape, args.device, args.directions, args.repeats)))
    elif args.build_mamba:
        build_mamba(args.build_mamba, args.mamba_build)
    elif args.tiny:
        dry_run(args)
    elif args.suite:
        suite(args)
    else:
        table(args)


if __name__ == "__main__":
    main()
