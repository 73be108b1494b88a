"""Plot scan time against sequence length (log-log) from one or more suite JSONs (their length sweeps merged, a
later file's series replacing an earlier one's of the same name)::

    python benchmarks/plot_scan.py benchmarks/results/scan_vs_length.png RUN1.json [RUN2.json ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def plot(record: dict, path: Path) -> None:
    """One line per backend for forward (solid) and forward+backward (dashed), with a slope-1 guide."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = record["length_sweep"]
    shape = sweep["shape"]
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for i, (label, points) in enumerate(sweep["series"].items()):
        lengths = [p["L"] for p in points]
        color = f"C{i}"
        ax.plot(lengths, [p["fwd_ms"] for p in points], "o-", color=color, label=f"{label}, forward")
        ax.plot(lengths, [p["fwd_bwd_ms"] for p in points], "s--", color=color, label=f"{label}, fwd+bwd")
    first = min(points[0]["fwd_ms"] for points in sweep["series"].values())
    lo, hi = 256, max(p["L"] for points in sweep["series"].values() for p in points)
    ax.plot([lo, hi], [first * 0.5, first * 0.5 * hi / lo], ":", color="grey", label="slope 1 (linear in L)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length L (Hilbert scan of an h x w grid)")
    ax.set_ylabel("time per call (ms, median)")
    ax.set_title(
        f"selective scan, b={shape['batch']}, {shape['tasks']} tasks x {shape['d_inner']} ch, "
        f"N={shape['state']}, {shape['K']} directions\n{record['device']}, {record['date']}",
        fontsize=10,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def merge(records: list[dict]) -> dict:
    """The first record with every record's length-sweep series."""
    merged = dict(records[0], length_sweep=dict(records[0]["length_sweep"], series={}))
    for record in records:
        merged["length_sweep"]["series"].update(record["length_sweep"]["series"])
    return merged


if __name__ == "__main__":
    plot(merge([json.loads(Path(p).read_text()) for p in sys.argv[2:]]), Path(sys.argv[1]))
