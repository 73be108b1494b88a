"""Time and peak memory of writing one training checkpoint with its `best` copy (the end-of-run write of issue 15).

Two implementations on the same synthetic model state (float32 weights of --params values plus Adam's two moments):

- ``previous``: the code before 2026-12-03 (`pamm` 0481667): the step's weights file, the training state built as
  ``torch.save`` → ``BytesIO.getvalue()`` → header + payload concatenated (three copies of the state in memory),
  then ``best.safetensors`` serialised and hashed a second time; the digest hashed ``tensor.numpy().tobytes()``.
- ``current``: :func:`pamm.engine.checkpoint.save_checkpoint` (weights + state all or nothing, the state written
  from ``torch.save``'s buffer, tensors hashed in place) and ``best`` as a hard link
  (:func:`pamm.engine.checkpoint.link_or_copy`).

Each variant runs in its own process (so its peak resident memory is its own), writing into --dir (put it on the
disk the runs go to)::

    python benchmarks/checkpoint_write.py --params 150e6 --dir /tmp/ckpt-bench --out ckpt.json
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch


def _state(params: int):
    """A model state dict of ``params`` float32 values in 4 M-value tensors, and an Adam-like optimizer state."""
    g = torch.Generator().manual_seed(0)
    sizes = [4_000_000] * (params // 4_000_000) + ([params % 4_000_000] if params % 4_000_000 else [])
    weights = {f"layer{i}.weight": torch.randn(n, generator=g) for i, n in enumerate(sizes)}
    optimizer = {
        "state": {
            i: {
                "step": torch.tensor(20.0),
                "exp_avg": torch.randn(n, generator=g) * 1e-3,
                "exp_avg_sq": torch.rand(n, generator=g) * 1e-6,
            }
            for i, n in enumerate(sizes)
        },
        "param_groups": [{"lr": 2e-5, "params": list(range(len(sizes)))}],
    }
    state = {
        "optimizer": optimizer,
        "scheduler": {"last_epoch": 20},
        "rng": [{"torch": torch.get_rng_state()}],
        "step": 20,
        "nonfinite": 0,
        "best_score": 0.0,
        "reference": "",
        "metrics": "",
        "pending_eval": False,
    }
    return weights, state


def _previous(folder: Path, weights: dict, state: dict, cfg) -> None:
    import yaml
    from safetensors.torch import save_file

    from pamm.config import config_to_dict
    from pamm.fs import atomic_write, atomic_write_bytes

    def digest(tensors):
        h = hashlib.sha256()
        for k in sorted(tensors):
            t = tensors[k].detach().cpu().contiguous()
            h.update(k.encode())
            h.update(str(t.dtype).encode())
            h.update(str(tuple(t.shape)).encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()

    def save_weights(path):
        tensors = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
        assert all(torch.isfinite(v).all() for v in tensors.values())
        meta = {
            "format": "pamm-checkpoint-1",
            "config": yaml.safe_dump(config_to_dict(cfg), sort_keys=False),
            "sha256": digest(tensors),
            "extra": json.dumps({"step": 20}),
        }
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))

    save_weights(folder / "step-0000020.safetensors")
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    header = json.dumps(
        {"format": "pamm-checkpoint-1", "sha256": hashlib.sha256(payload).hexdigest(), "size": len(payload)}
    ).encode()
    atomic_write_bytes(folder / "step-0000020.state.pt", len(header).to_bytes(4, "little") + header + payload)
    save_weights(folder / "best.safetensors")


def _current(folder: Path, weights: dict, state: dict, cfg) -> None:
    from pamm.engine.checkpoint import link_or_copy, save_checkpoint

    step = folder / "step-0000020.safetensors"
    save_checkpoint(step, folder / "step-0000020.state.pt", weights, cfg, {"step": 20}, state)
    link_or_copy(step, folder / "best.safetensors")


def child(variant: str, params: int, folder: Path) -> dict:
    from pamm.config import load_config

    cfg = load_config("pascal-vitl")
    weights, state = _state(params)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    folder.mkdir(parents=True, exist_ok=True)
    tic = time.perf_counter()
    (_previous if variant == "previous" else _current)(folder, weights, state, cfg)
    seconds = time.perf_counter() - tic
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    written = sum(p.stat().st_size for p in folder.iterdir())
    distinct = sum(p.stat().st_size for p in {p.stat().st_ino: p for p in folder.iterdir()}.values())
    return {
        "variant": variant,
        "seconds": round(seconds, 2),
        "extra_peak_rss_gb": round((peak - base) / 2**20, 2),
        "files_gb": round(written / 2**30, 2),
        "bytes_on_disk_gb": round(distinct / 2**30, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", type=float, default=150e6, help="model parameters (PASCAL preset: 999e6)")
    p.add_argument("--dir", default="/tmp/pamm-checkpoint-bench")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", help="write the records here as JSON")
    p.add_argument("--child", choices=["previous", "current"], help=argparse.SUPPRESS)
    args = p.parse_args()
    params = int(args.params)
    if args.child:
        print(json.dumps(child(args.child, params, Path(args.dir))))
        return
    records = []
    for repeat in range(args.repeats):
        for variant in ("previous", "current"):
            folder = Path(args.dir) / f"{variant}-{repeat}"
            shutil.rmtree(folder, ignore_errors=True)
            done = subprocess.run(
                [sys.executable, __file__, "--child", variant, "--params", str(params), "--dir", str(folder)],
                capture_output=True,
                text=True,
                check=True,
            )
            record = json.loads(done.stdout.strip().splitlines()[-1])
            shutil.rmtree(folder, ignore_errors=True)
            records.append(record)
            print(
                f"{variant:8s} {record['seconds']:7.2f} s  extra peak RSS {record['extra_peak_rss_gb']:5.2f} GB  "
                f"files {record['files_gb']:.2f} GB ({record['bytes_on_disk_gb']:.2f} GB on disk)",
                flush=True,
            )
    if args.out:
        Path(args.out).write_text(json.dumps({"params": params, "records": records}, indent=1) + "\n")


if __name__ == "__main__":
    main()
