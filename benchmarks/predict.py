"""Speed and memory of inference on photos: ``pamm.load(...)(photo)`` end to end, per photo size, mode and batch.

Each configuration runs in a fresh process so that its peak memory is its own: host memory as the growth of the
process's peak resident set over what it held after building the model (``getrusage``), device memory as
``torch.cuda.max_memory_allocated``. The model is a preset with random weights (speed does not depend on training);
the photos are smooth synthetic RGB images of the given sizes, already in memory (file decoding is not timed). The
time is the median of ``--repeats`` calls after two warm-up calls, from the uint8 array in to every task's NumPy map
at the photo's size out (resize, normalise, pad, forward, crop, resample back, post-process, copies to the host).

  PYTHONPATH=src python benchmarks/predict.py --preset demo --device cpu                       # CPU, the demo model
  PYTHONPATH=src python3 benchmarks/predict.py --preset nyud-vitl --device cuda --batch 1,8    # a GPU, ViT-L
  PYTHONPATH=src python benchmarks/predict.py --preset demo --device cpu --sizes 96x128 --repeats 1  # smoke test

Each result is printed as a JSON line and appended to ``--out`` when given.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _photo(height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (max(height // 64, 2), max(width // 64, 2), 3)).astype(np.uint8)
    from PIL import Image

    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC))


def measure(
    preset: str,
    device: str,
    size: tuple[int, int],
    mode: str,
    scale: float | None,
    batch: int,
    repeats: int,
    threads: int | None,
) -> dict:
    """One configuration, in this process."""
    import torch

    import pamm
    from pamm.engine.predictor import Predictor
    from pamm.inference import ImagePredictor

    if threads:
        torch.set_num_threads(threads)
    cfg = pamm.load_config(preset)
    model = pamm.build_model(cfg, load_backbone_weights=False)
    predictor = ImagePredictor(Predictor(model, model.meta, device, mode=mode, scale=scale, batch_size=batch))
    photos = [_photo(*size)] * batch
    cuda = predictor.device.type == "cuda"

    def call():
        predictor(photos if batch > 1 else photos[0])
        if cuda:
            torch.cuda.synchronize()

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(2):
        call()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {
        "preset": preset,
        "device": str(predictor.device),
        "size": f"{size[0]}x{size[1]}",
        "mode": mode,
        "scale": "auto" if scale is None else scale,
        "batch": batch,
        "threads": torch.get_num_threads(),
        "seconds_per_call": round(median, 4),
        "images_per_s": round(batch / median, 2),
        "host_peak_growth_mb": round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline) / 1024, 1),
        "device_peak_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
        "gpu": torch.cuda.get_device_name() if cuda else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", default="480x640,1536x2048,3024x4032", help="photo sizes HxW, comma-separated")
    parser.add_argument("--modes", default="whole", help="whole, slide (at --slide-scale), comma-separated")
    parser.add_argument("--slide-scale", type=float, default=1.0, help="scale of slide mode (1 = full resolution)")
    parser.add_argument("--batch", default="1", help="batch sizes, comma-separated")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="append JSON lines here")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child process: one configuration
    args = parser.parse_args()
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    if args.one:
        mode, batch = args.modes, int(args.batch)
        result = measure(
            args.preset,
            args.device,
            sizes[0],
            mode,
            args.slide_scale if mode == "slide" else None,
            batch,
            args.repeats,
            args.threads,
        )
        print(json.dumps(result))
        return
    for mode in args.modes.split(","):
        for batch in (int(b) for b in args.batch.split(",")):
            for size in sizes:
                command = [
                    sys.executable,
                    __file__,
                    "--one",
                    "--preset",
                    args.preset,
                    "--device",
                    args.device,
                    "--sizes",
                    f"{size[0]}x{size[1]}",
                    "--modes",
                    mode,
                    "--slide-scale",
                    str(args.slide_scale),
                    "--batch",
                    str(batch),
                    "--repeats",
                    str(args.repeats),
                ]
                if args.threads:
                    command += ["--threads", str(args.threads)]
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode:
                    print(f"{mode} batch {batch} {size}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
                    continue
                line = done.stdout.strip().splitlines()[-1]
                print(line, flush=True)
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(line + "\n")


if __name__ == "__main__":
    main()
