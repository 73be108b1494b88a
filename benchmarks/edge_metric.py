"""Time of scoring one boundary map by the SEISM protocol (`pamm.metrics.edges.edge_counts`), the metric that made
issue 15's final evaluation slow.

The map is a barely trained model's kind: uniform noise smoothed by a Gaussian of --smooth pixels, scaled to [0, 1]
(many weak maxima, so many edge pixels at the low thresholds), against three straight ground-truth boundaries. Two
ways of removing duplicate indices inside the thinning are timed side by side, interleaved, in one process:

- ``unique``: ``np.unique`` (the code before 2026-12-03; hash-based in numpy >= 2.3);
- ``sorted``: :func:`pamm.metrics.edges._distinct` (sort, then keep first occurrences; the current code).

Both give the same counts (checked)::

    python benchmarks/edge_metric.py --size 512 --smooth 2,6 --repeats 3 --out edge.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
from scipy import ndimage

from pamm.metrics import edges


def probability_map(size: int, smooth: float, seed: int = 0) -> np.ndarray:
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).random((size, size)), smooth)
    return (noise - noise.min()) / (noise.max() - noise.min())


def boundaries(size: int) -> np.ndarray:
    gt = np.zeros((size, size), bool)
    gt[size // 5, :] = True
    gt[:, size * 3 // 5] = True
    gt[size * 2 // 5 : size * 4 // 5, size // 10] = True
    return gt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--smooth", default="2,6", help="comma-separated Gaussian sigmas of the maps")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", help="write the record here as JSON")
    args = p.parse_args()

    protocol = edges.EdgeProtocol(0.0075)
    current = edges._distinct
    variants = {"unique": np.unique, "sorted": current}
    gt = boundaries(args.size)
    rows = []
    for smooth in (float(s) for s in args.smooth.split(",")):
        prob = probability_map(args.size, smooth)
        seconds: dict[str, list[float]] = {name: [] for name in variants}
        counts = {}
        for _ in range(args.repeats):
            for name, dedupe in variants.items():
                edges._distinct = dedupe
                try:
                    tic = time.perf_counter()
                    matched, predicted, gt_pixels = edges.edge_counts(prob, gt, protocol)
                    seconds[name].append(time.perf_counter() - tic)
                finally:
                    edges._distinct = current
                counts[name] = (matched.tolist(), predicted.tolist(), int(gt_pixels))
        assert counts["unique"] == counts["sorted"], "the two dedupes gave different counts"
        row = {"smooth": smooth, **{f"{name}_median_s": round(statistics.median(s), 3) for name, s in seconds.items()}}
        row["speedup"] = round(row["unique_median_s"] / row["sorted_median_s"], 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    record = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "numpy": np.__version__,
        "size": args.size,
        "repeats": args.repeats,
        "rows": rows,
    }
    if args.out:
        with open(args.out, "w") as f:
            f.write(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
