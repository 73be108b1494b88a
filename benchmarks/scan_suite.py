"""Selective scan on a CUDA GPU: the card's ceilings, then one PAME stage's scans (all tasks x 4 Hilbert directions,
the model's memory layout) timed for each variant, against the exp2 and byte floors::

    PYTHONPATH=src python benchmarks/scan_suite.py --out OUT                       # Triton + reference, both stages
    PYTHONPATH=src python benchmarks/scan_suite.py --out OUT --variants triton --configs CONFIGS.json
    PYTHONPATH=src python benchmarks/scan_suite.py --out OUT --variants all --mamba-build DIR --length-sweep

Variants: ``triton`` (the backend with its default launch config), ``reference`` (the pure-PyTorch backend),
``authors-triton`` / ``authors-mamba`` (the released code's pattern: one call per task per direction on permuted
copies, summed; on our Triton kernel, or on mamba-ssm's CUDA kernel built by build_mamba.py), and with ``--configs``
Triton launch configs beside the default ({"stage": {"label": {config overrides}}}, a JSON file or inline).
Every variant's y and gradients are compared with the first variant's (relative difference, float64 norms); the
correctness of the kernels against float64 is tests/test_selective_scan_gpu.py's job (``pytest -m cuda``).

Writes scan_suite.json to --out and prints a summary table last. ``--dtype bfloat16`` times the model's autocast call
(bf16 activations, float32 parameters). The same code path on the CPU, through Triton's interpreter at tiny shapes
(checks the script and the configs, not speed)::

    python benchmarks/scan_suite.py --device cpu --tiny --out /tmp/scan-dry
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

TINY_STAGES = {  # --tiny: the stages' state sizes (which pick the launch configs), tiny everything else
    "nyud": dict(batch=1, d_inner=8, tasks=2, state=16, grid=(2, 3)),
    "pascal": dict(batch=1, d_inner=8, tasks=1, state=64, grid=(2, 2)),
}
SWEEP_GRIDS = [(16, 16), (16, 32), (32, 32), (32, 64), (64, 64), (64, 128), (128, 128)]  # L = 256 .. 16384
VARIANTS = ("triton", "reference", "authors-triton", "authors-mamba")


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
    ms = do_bench(
        lambda: exp2_chain[(sms * 8,)](x, iters, BLOCK=block, num_warps=8), warmup=25, rep=200, return_mode="median"
    )
    return x.numel() * iters * 4 / (ms * 1e-3)


def authors_pattern(scan_one, u, delta, A, B, C, D, delta_bias, orders, tasks):
    """One scan per task per direction, each on permuted copies of u, delta, B, C; outputs un-permuted and summed
    over directions (released PAMM code's structure). scan_one(u, delta, A, B, C, D, delta_bias) -> (b, d, L)."""
    from pamm.ops import inverse_orders

    d = u.shape[1] // tasks
    inverse = inverse_orders(orders)
    outs = []
    for t in range(tasks):
        ch = slice(t * d, (t + 1) * d)
        y = 0
        for k in range(orders.shape[0]):
            perm = orders[k]
            y_k = scan_one(
                u[:, ch].index_select(2, perm),
                delta[:, ch].index_select(2, perm),
                A[ch],
                B[:, t].index_select(2, perm),
                C[:, t].index_select(2, perm),
                D[ch],
                delta_bias[ch],
            )
            y = y + y_k.index_select(2, inverse[k])
        outs.append(y)
    return torch.cat(outs, 1)


def scan_variants(names, orders, tasks, configs, mamba):
    """{label: fn(**inputs) -> y (b, T*d, L)} of the requested variants, then one Triton variant per config."""
    from pamm.ops import selective_scan
    from pamm.ops.selective_scan_triton import selective_scan_triton

    def triton_one(u, delta, A, B, C, D, delta_bias):
        return selective_scan_triton(u, delta, A, B, C, D, delta_bias, delta_softplus=True)

    variants = {}
    for name in names:
        if name == "triton":
            variants[name] = lambda **kw: selective_scan(**kw, delta_softplus=True, orders=orders, backend="triton")
        elif name == "reference":
            variants[name] = lambda **kw: selective_scan(**kw, delta_softplus=True, orders=orders, backend="reference")
        elif name == "authors-triton":
            variants[name] = lambda **kw: authors_pattern(triton_one, orders=orders, tasks=tasks, **kw)
        elif name == "authors-mamba" and mamba is not None:
            from build_mamba import scan_fn

            mamba_one = scan_fn(mamba)
            variants[name] = lambda _one=mamba_one, **kw: authors_pattern(_one, orders=orders, tasks=tasks, **kw)
    for label, overrides in (configs or {}).items():
        variants[f"triton {label}"] = lambda _config=overrides, **kw: selective_scan_triton(
            **kw, delta_softplus=True, orders=orders, config=_config
        )
    return variants


def time_stage(name, stage, device, args, record, save, mamba):
    """Every variant at one stage: agreement with the first variant (y and all gradients), forward and
    forward+backward medians, peak memory; floors from the record's ceilings."""
    from pamm.ops import scan_orders
    from pamm.ops.selective_scan_triton import resolve_config
    from scan_common import cuda_peak_mb, failure, fwd_and_fwdbwd, rel, stage_inputs

    dtype = getattr(torch, args.dtype)
    L = stage["grid"][0] * stage["grid"][1]
    inputs = stage_inputs(stage["batch"], stage["d_inner"], stage["tasks"], stage["state"], L, device, dtype=dtype)
    orders = scan_orders(*stage["grid"], device=device)
    K = orders.shape[0]
    leaves = list(inputs.values())
    u, B = inputs["u"], inputs["B"]
    bytes_once = 3 * u.numel() * u.element_size() + 2 * B.numel() * B.element_size()  # u, delta, y; B, C
    exps = K * u.numel() * stage["state"]
    configs = (args.configs or {}).get(name, {})
    out = dict(
        shape=dict(stage, L=L, K=K, channels=stage["tasks"] * stage["d_inner"]),
        dtype=args.dtype,
        bytes_inputs_once=bytes_once,
        exp2_count=exps,
        default_config=resolve_config(stage["state"], stage["d_inner"]),
        configs=configs,
        rows=[],
    )
    record["stages"][name] = out
    gen = torch.Generator(device="cpu").manual_seed(1)
    g = torch.randn(u.shape, generator=gen).to(device=device, dtype=dtype)
    base, base_label = None, None
    for label, fn in scan_variants(args.variants, orders, stage["tasks"], configs, mamba).items():
        row = dict(variant=label)
        try:
            start = time.perf_counter()
            y = fn(**inputs)
            values = [y.detach()] + list(torch.autograd.grad(y, leaves, g))
            del y
            row["first_call_ms"] = (time.perf_counter() - start) * 1e3  # compilation included
            if base is None:
                base, base_label = values, label
            diffs = {n: rel(a, b) for n, a, b in zip(["y"] + [f"d{k}" for k in inputs], values, base)}
            del values
            repeats = 5 if device == "cuda" else 1
            fwd, fwdbwd, step = fwd_and_fwdbwd(fn, inputs, device, repeats, budget_ms=args.budget_ms)
            if device == "cuda":
                row["peak_mb"] = cuda_peak_mb(step, leaves)
        except Exception as err:  # a variant that does not compile or launch is recorded, not fatal
            row["error"] = failure(err)
            out["rows"].append(row)
            save()
            continue
        row.update(
            fwd_ms=fwd,
            fwd_bwd_ms=fwdbwd,
            bwd_ms=fwdbwd - fwd,
            rel_diff_vs=base_label,
            rel_diffs=diffs,
            max_rel_diff=max(diffs.values()),
        )
        out["rows"].append(row)
        save()
        print(
            f"[{name}] {label:<24} fwd {fwd:9.3f} ms  fwd+bwd {fwdbwd:9.3f} ms  peak "
            f"{row.get('peak_mb', float('nan')):7.0f} MB  max diff vs {base_label} {row['max_rel_diff']:.1e}",
            flush=True,
        )
    if device == "cuda":
        del inputs, base
        torch.cuda.empty_cache()


def length_sweep(device, args, record, save, mamba):
    """Forward and forward+backward time against the sequence length (b = 1, the NYUD stage's channels)."""
    from pamm.ops import scan_orders
    from scan_common import STAGES, failure, fwd_and_fwdbwd, stage_inputs

    stage = dict(STAGES["nyud"], batch=1)
    series = {}
    for grid in SWEEP_GRIDS:
        L = grid[0] * grid[1]
        inputs = stage_inputs(1, stage["d_inner"], stage["tasks"], stage["state"], L, device)
        runs = scan_variants(args.variants, scan_orders(*grid, device=device), stage["tasks"], None, mamba)
        for label, fn in runs.items():
            try:
                fwd, fwdbwd, _ = fwd_and_fwdbwd(fn, inputs, device, budget_ms=100)
            except Exception as err:
                failure(err)
                continue
            series.setdefault(label, []).append(dict(L=L, fwd_ms=fwd, fwd_bwd_ms=fwdbwd))
        print(
            f"[length] L={L}: "
            + ", ".join(
                f"{k} {v[-1]['fwd_ms']:.2f}/{v[-1]['fwd_bwd_ms']:.2f} ms"
                for k, v in series.items()
                if v and v[-1]["L"] == L
            ),
            flush=True,
        )
        del inputs
        torch.cuda.empty_cache()
    record["length_sweep"] = dict(shape=dict(stage, K=4), series=series)
    save()


def summarize(record):
    """The summary table: per stage and variant, times and their ratios to the exp2 floor of the forward."""
    exp_rate, bw = record.get("exp2_per_s"), record.get("copy_bandwidth_gbs")
    print(
        f"\n{record['date']} {record['device']}  copy {bw or float('nan'):.0f} GB/s  exp2 {exp_rate or 0:.2e}/s  "
        f"torch {record['torch']} triton {record['triton']}"
    )
    for name, st in record["stages"].items():
        floor = st["exp2_count"] / exp_rate * 1e3 if exp_rate else float("nan")
        byte_floor = st["bytes_inputs_once"] / (bw * 1e9) * 1e3 if bw else float("nan")
        print(f"{name} ({st['dtype']}): {st['shape']}; floors: exp2 {floor:.3f} ms, bytes once {byte_floor:.3f} ms")
        print(
            f"  {'variant':<24}{'fwd ms':>9}{'f+b ms':>9}{'fwd/floor':>10}{'f+b/floor':>10}{'peak MB':>9}"
            f"{'max diff':>10}"
        )
        for r in st["rows"]:
            if "error" in r:
                print(f"  {r['variant']:<24} error: {r['error'][:90]}")
                continue
            print(
                f"  {r['variant']:<24}{r['fwd_ms']:>9.3f}{r['fwd_bwd_ms']:>9.3f}{r['fwd_ms'] / floor:>10.2f}"
                f"{r['fwd_bwd_ms'] / floor:>10.2f}{r.get('peak_mb', float('nan')):>9.0f}{r['max_rel_diff']:>10.1e}"
            )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for scan_suite.json")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="with --device cpu: the dry run (Triton's interpreter)")
    parser.add_argument("--stages", default="nyud,pascal")
    parser.add_argument(
        "--variants", default="triton,reference", help=f"comma-separated, of {list(VARIANTS)}, or 'all'"
    )
    parser.add_argument(
        "--configs",
        help="Triton launch configs to time beside the default: JSON (a file or inline)"
        ' {"nyud": {"label": {"tile": 16}}, ...}',
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--budget-ms", type=float, default=200.0, help="do_bench's time per measurement")
    parser.add_argument("--length-sweep", action="store_true")
    parser.add_argument("--mamba-build", metavar="DIR", help="where build_mamba.py built (or is building) mamba-ssm")
    parser.add_argument("--mamba-wait", type=float, default=300.0, help="seconds to wait for that build")
    args = parser.parse_args()
    if args.tiny != (args.device == "cpu"):
        parser.error("--tiny goes with --device cpu (the dry run), and only there")
    if args.tiny:
        os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton
    args.variants = list(VARIANTS) if args.variants == "all" else args.variants.split(",")
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; expected some of {list(VARIANTS)}")
    if args.configs:
        text = Path(args.configs).read_text() if Path(args.configs).is_file() else args.configs
        args.configs = json.loads(text)
    sys.path.insert(0, str(Path(__file__).parent))
    import triton

    from build_mamba import load
    from scan_common import STAGES

    stages = TINY_STAGES if args.tiny else STAGES
    props = torch.cuda.get_device_properties(0) if args.device == "cuda" else None
    record = dict(
        date=time.strftime("%Y-%m-%d"),
        device=props.name if props else "cpu (Triton interpreter)",
        sms=props.multi_processor_count if props else None,
        torch=torch.__version__,
        triton=triton.__version__,
        command=" ".join(sys.argv),
        stages={},
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def save():
        (out / "scan_suite.json").write_text(json.dumps(record, indent=1))

    if args.device == "cuda":
        record["copy_bandwidth_gbs"] = copy_bandwidth_gbs()
        record["exp2_per_s"] = exp2_rate()
        print(
            f"{record['device']}: copy {record['copy_bandwidth_gbs']:.0f} GB/s, exp2 {record['exp2_per_s']:.3e}/s",
            flush=True,
        )
        save()
    mamba = load(args.mamba_build, args.mamba_wait) if "authors-mamba" in args.variants else None
    record["mamba_ssm"] = "built" if mamba is not None else "not used"
    for name in args.stages.split(","):
        time_stage(name, stages[name], args.device, args, record, save, mamba)
    if args.length_sweep and args.device == "cuda":
        length_sweep(args.device, args, record, save, mamba)
    save()
    summarize(record)
    failed = [
        r["variant"]
        for st in record["stages"].values()
        for r in st["rows"]
        if "error" in r or not r["max_rel_diff"] <= (1e-2 if args.dtype == "bfloat16" else 1e-4)
    ]
    if failed:
        raise SystemExit(f"variants that failed or disagree with the first: {failed}")


if __name__ == "__main__":
    main()
