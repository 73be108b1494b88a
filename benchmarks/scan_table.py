"""Selective scan, one shape, any device: median forward and forward+backward time, peak memory and what autograd
keeps, for each backend::

    python benchmarks/scan_table.py --device cpu --threads 2 --shape 2,1536,16,1008 --backends reference,cpu
    python benchmarks/scan_table.py --device cuda --shape 6,6144,16,1008 --directions 4 --backends reference,triton

On the CPU every backend runs in a fresh process, so that its peak memory (the process's high-water mark) is its
own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch

from pamm.ops import SCAN_BACKENDS, selective_scan
from scan_common import cuda_peak_mb, fwd_and_fwdbwd


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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--shape", default="2,1536,16,1008", help="b,d,N,L")
    parser.add_argument("--backends", default="reference,cpu", help=f"comma-separated, of {list(SCAN_BACKENDS)}")
    parser.add_argument("--directions", type=int, default=0, help="random scan orders (0: natural order only)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = tuple(int(x) for x in args.shape.split(","))
    if args.child:
        print(json.dumps(measure_backend(args.child, shape, args.device, args.directions, args.repeats)))
        return
    rows = []
    for backend in args.backends.split(","):
        if args.device == "cpu":
            cmd = [
                sys.executable,
                __file__,
                "--device",
                "cpu",
                "--shape",
                args.shape,
                "--child",
                backend,
                "--directions",
                str(args.directions),
                "--repeats",
                str(args.repeats),
            ]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
        else:
            rows.append(measure_backend(backend, shape, args.device, args.directions, args.repeats))
    title = (
        f"selective scan, (b, d, N, L) = {shape}, fp32, softplus + bias, {args.directions or 1} direction(s), "
        f"{args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats}"
    )
    print(title)
    print(f"{'backend':<12}{'fwd ms':>10}{'fwd+bwd ms':>12}{'peak MB':>10}{'saved MB':>10}")
    for r in rows:
        print(
            f"{r['backend']:<12}{r['fwd_ms']:>10.1f}{r['fwd_bwd_ms']:>12.1f}{r['peak_mb']:>10.1f}"
            f"{r['saved_for_backward_mb']:>10.1f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(dict(title=title, rows=rows), indent=1))


if __name__ == "__main__":
    main()
