"""CPU latency of the demo model: ONNX Runtime (the file `pamm export --format onnx` writes) next to PyTorch (with
the scan backend it uses on a CPU, Numba, and with the pure-PyTorch reference scan that the export runs through).

One invocation, side by side, same input (one 96x128 image, batch 1), same thread count; after warm-up runs, each
engine is timed --repeats times in interleaved rounds and the medians are reported::

    python benchmarks/export_latency.py --threads 2 --repeats 30 [--checkpoint runs/demo] [--out result.json]

Without --checkpoint the demo preset is built with random weights (latency does not depend on the values).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="a model source (weights file, run folder, pretrained folder)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", help="write the numbers here as JSON")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import onnxruntime as ort
    import torch

    import pamm
    from pamm.interop.export import OnnxGraph, export_onnx

    torch.set_num_threads(args.threads)
    if args.checkpoint:
        from pamm.interop.hub import load_trained

        model = load_trained(args.checkpoint).model
    else:
        cfg = pamm.load_config("demo", {"model.backbone.weights": None})
        model = pamm.build_model(cfg, load_backbone_weights=False).eval()
    size = tuple(model.meta.test_size if getattr(model.meta, "test_size", None) else model.meta.train_size)
    image = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        report = export_onnx(model, Path(tmp) / "demo.onnx")
        export_seconds = time.perf_counter() - started
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(report.path), options, providers=["CPUExecutionProvider"])
        engines = {}
        for backend in ("cpu", "reference"):
            graph = OnnxGraph(model).eval()
            model.set_runtime(dataclasses.replace(model.runtime, scan_backend=backend))
            engines[f"pytorch ({backend} scan)"] = lambda g=graph, b=backend: _torch_call(model, g, b, image)
        feed = {"image": image.numpy()}
        engines["onnxruntime"] = lambda: session.run(None, feed)
        times: dict[str, list[float]] = {name: [] for name in engines}
        with torch.inference_mode():
            for run in engines.values():
                for _ in range(args.warmup):
                    run()
            for _ in range(args.repeats):  # interleaved rounds: drifts of the machine hit every engine alike
                for name, run in engines.items():
                    t0 = time.perf_counter()
                    run()
                    times[name].append(time.perf_counter() - t0)
    result = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "threads": args.threads, "repeats": args.repeats, "input": [1, 3, *size], "torch": torch.__version__,
        "onnxruntime": ort.__version__, "export_seconds": round(export_seconds, 1),
        "max_relative_difference": report.max_relative_difference,
        "median_ms": {name: round(1000 * statistics.median(v), 1) for name, v in times.items()},
        "min_ms": {name: round(1000 * min(v), 1) for name, v in times.items()},
    }  # fmt: skip
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


def _torch_call(model, graph, backend, image):
    import dataclasses as dc

    if model.runtime.scan_backend != backend:
        model.set_runtime(dc.replace(model.runtime, scan_backend=backend))
    return graph(image)


if __name__ == "__main__":
    main()
