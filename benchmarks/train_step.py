"""Whole-model speed and memory of the paper presets: training step, inference, and where the time goes.

For each preset (ViT-L; NYUD 448x576, PASCAL 512x512; batch 6, random weights and synthetic targets) and mode:

- ``bf16``: our fused execution, bf16 autocast (scan state and reductions fp32), channels-last.
- ``tf32``: our fused execution in fp32 with TF32 matrix units.
- ``bf16-authors-scan``: ``bf16`` with only the scan swapped for the authors' pattern (one scan call per task and
  direction on permuted copies, un-permuted and summed): the same model run with the authors' scan pattern.
- ``authors``: the released code's execution pattern run on our model's weights (``pamm.models.reference``:
  per-expert convolutions, per-task loops, top-k masks written sample by sample, one scan per task and direction on
  permuted copies), in fp32 with PyTorch's default math settings.

it measures the median training-step time (forward, multi-task loss, backward, grad clip, Adam), images/s, peak
device memory, the share of the step's device time spent in selective-scan kernels and the top kernels (torch
profiler), and bf16 inference images/s at batch 1 and 16. Results are appended to ``OUT/train_step.jsonl`` as each
measurement finishes, so an interrupted run keeps what it measured.

  PYTHONPATH=src python3 benchmarks/train_step.py --out OUT                      # the full table (CUDA)
  PYTHONPATH=src python3 benchmarks/train_step.py --tiny --device cpu --steps 2  # smoke test of the script
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from pathlib import Path

import torch

import pamm
import pamm.models.pame as pame_module
from pamm.losses import MultiTaskLoss
from pamm.models.reference import forward_reference
from pamm.ops import inverse_orders, selective_scan
from pamm.tasks import dataset_spec

TINY = {
    "model.backbone.name": "vit_tiny_patch16_224",
    "model.backbone.taps": [2, 5, 8, 11],
    "model.dim": 64,
    "model.d_state": 8,
    "data.train_size": [64, 96],
    "data.test_size": [64, 96],
}


def authors_scan_pattern(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, orders=None, backend="auto"):
    """``selective_scan`` over tasks (B/C groups) x directions executed as the released code does: one call per task
    and direction on permuted copies of x, delta, B, C, each result un-permuted, the directions summed."""
    groups = B.shape[1]
    d = u.shape[1] // groups
    inverse = inverse_orders(orders)
    outs = []
    for g in range(groups):
        sl = slice(g * d, (g + 1) * d)
        y = 0
        for order, inv in zip(orders, inverse):
            yk = selective_scan(
                u[:, sl][..., order],
                delta[:, sl][..., order],
                A[sl],
                B[:, g][..., order],
                C[:, g][..., order],
                None if D is None else D[sl],
                None if delta_bias is None else delta_bias[sl],
                delta_softplus,
                backend=backend,
            )
            y = y + yk[..., inv]
        outs.append(y)
    return torch.cat(outs, dim=1)


def synthetic_batch(tasks, num_outputs, b, h, w, device, generator):
    """Random images and valid targets of every task (ignore pixels included)."""

    def rand(*shape):
        return torch.rand(*shape, generator=generator, device="cpu").to(device)

    batch = {"image": torch.randn(b, 3, h, w, generator=generator).to(device)}
    for t in tasks:
        k = num_outputs[t]
        if t in ("semseg", "human_parts", "sal"):
            lab = (rand(b, h, w) * k).long().clamp_max(k - 1)
            lab[rand(b, h, w) < 0.05] = 255
            batch[t] = lab
        elif t == "depth":
            batch[t] = rand(b, 1, h, w) * 9 + 0.5
        elif t == "normals":
            batch[t] = torch.nn.functional.normalize(rand(b, 3, h, w) - 0.5, dim=1)
        elif t == "edge":
            batch[t] = (rand(b, 1, h, w) < 0.05).float()
    return batch


def cuda_time(fn, device) -> float:
    if device.type != "cuda":
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end)


def measure_training(model, forward, cfg, mode, args, device, log):
    tasks = cfg.data.task_list
    spec = dataset_spec(cfg.data.dataset)
    h, w = cfg.data.train_size
    gen = torch.Generator().manual_seed(0)
    batch = synthetic_batch(tasks, model.meta.num_outputs, args.batch, h, w, device, gen)
    images = batch["image"]
    if device.type == "cuda" and mode != "authors":
        images = images.contiguous(memory_format=torch.channels_last)
    loss_fn = MultiTaskLoss(tasks, cfg.train.loss_weights, spec.edge_pos_weight, cfg.train.load_balancing)
    opt = torch.optim.Adam(model.parameters(), lr=1e-6, weight_decay=1e-6)
    amp = mode.startswith("bf16") and device.type == "cuda"
    model.train()

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out, routing = forward(images, return_routing=True)
        total, _ = loss_fn({k: v.float() for k, v in out.items()}, batch, routing)
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = [cuda_time(step, device) for _ in range(args.steps if mode != "authors" else max(2, args.steps // 2))]
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    ms = statistics.median(times)
    row = {
        "kind": "train",
        "preset": cfg.name,
        "mode": mode,
        "batch": args.batch,
        "step_ms": ms,
        "images_per_s": args.batch / ms * 1e3,
        "peak_gib": peak,
        "times_ms": times,
    }
    if args.profile and device.type == "cuda":
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            step()
            torch.cuda.synchronize()
        kernels = {}
        for ev in prof.key_averages():
            if ev.device_type.name == "CUDA" or getattr(ev, "self_device_time_total", 0):
                kernels[ev.key] = kernels.get(ev.key, 0.0) + ev.self_device_time_total / 1e3
        total = sum(kernels.values())
        scan = sum(v for k, v in kernels.items() if "scan" in k.lower())
        row.update(
            device_ms=total,
            scan_ms=scan,
            scan_share=scan / max(total, 1e-9),
            top_kernels=sorted(kernels.items(), key=lambda kv: -kv[1])[:12],
        )
    log(row)
    return row


@torch.inference_mode()
def measure_inference(model, cfg, batch, args, device, log):
    h, w = cfg.data.train_size
    model.eval()
    x = torch.randn(batch, 3, h, w, device=device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)

    def run():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            model(x)

    for _ in range(2):
        run()
    times = [cuda_time(run, device) for _ in range(args.steps)]
    ms = statistics.median(times)
    row = {
        "kind": "infer",
        "preset": cfg.name,
        "mode": "bf16",
        "batch": batch,
        "ms": ms,
        "images_per_s": batch / ms * 1e3,
    }
    log(row)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="nyud-vitl,pascal-vitl")
    p.add_argument("--modes", default="bf16,bf16-authors-scan,authors,tf32")
    p.add_argument(
        "--checkpointing",
        default="",
        help="bf16 runs with activation checkpointing, ';'-separated sets of places, e.g. "
        "'backbone;backbone:selective,stages:selective' (each measured as mode bf16+PLACES)",
    )
    p.add_argument("--batch", type=int, default=6)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--infer-batches", default="1,16")
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="small model (vit_tiny, d=64) to test the script")
    p.add_argument("--no-profile", dest="profile", action="store_false")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True  # fixed shapes, as in training (pamm.engine.trainer)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = out / "train_step.jsonl"
    env = {
        "kind": "env",
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "date": time.strftime("%Y-%m-%d"),
        "args": vars(args),
    }
    rows = []

    def log(row):
        rows.append(row)
        with open(record, "a") as f:
            f.write(json.dumps(row) + "\n")
        short = {
            k: (round(v, 2) if isinstance(v, float) else v)
            for k, v in row.items()
            if k not in ("times_ms", "top_kernels")
        }
        print(json.dumps(short), flush=True)

    log(env)
    for preset in args.presets.split(","):
        overrides = {"model.backbone.pretrained": False, **(TINY if args.tiny else {})}
        cfg = pamm.load_config(preset, overrides)
        t0 = time.time()
        with torch.device(device):
            model = pamm.build_model(cfg)
        if device.type == "cuda":
            model.to(memory_format=torch.channels_last)
        print(f"{preset}: built in {time.time() - t0:.1f} s", flush=True)
        modes = [m for m in args.modes.split(",") if m]
        modes += [f"bf16+{places}" for places in args.checkpointing.split(";") if places]
        for mode in modes:
            model.set_grad_checkpointing(mode.split("+", 1)[1].split(",") if "+" in mode else False)
            forward = functools.partial(forward_reference, model) if mode == "authors" else model
            pame_module.selective_scan = authors_scan_pattern if mode == "bf16-authors-scan" else selective_scan
            torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
            torch.backends.cudnn.allow_tf32 = mode in ("tf32", "authors")  # PyTorch's defaults for "authors"
            try:
                measure_training(model, forward, cfg, mode, args, device, log)
            except torch.OutOfMemoryError as e:
                log({"kind": "train", "preset": preset, "mode": mode, "error": f"OOM: {e}"[:300]})
            if device.type == "cuda":
                torch.cuda.empty_cache()
        pame_module.selective_scan = selective_scan
        model.set_grad_checkpointing(False)
        for b in (int(v) for v in args.infer_batches.split(",") if v):
            measure_inference(model, cfg, b, args, device, log)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print("\npreset        mode                                      step ms   img/s   peak GiB  scan share")
    for r in rows:
        if r.get("kind") == "train" and "step_ms" in r:
            print(
                f"{r['preset']:13s} {r['mode']:40s} {r['step_ms']:8.1f} {r['images_per_s']:7.2f} "
                f"{r['peak_gib']:9.2f}  {r.get('scan_share', float('nan')):.3f}"
            )
    for r in rows:
        if r.get("kind") == "infer":
            print(f"{r['preset']:13s} infer b={r['batch']:<3d} {r['ms']:8.1f} {r['images_per_s']:7.2f}")


if __name__ == "__main__":
    main()
