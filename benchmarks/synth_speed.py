"""Speed of the embedded dataset (`pamm data synth`): images per second of `synthesize` as shipped (the staged folder
made durable by one `syncfs` before it is moved into place), with an fsync per file instead, and with no flush; and
the MATLAB writer (`formats.mat_bytes`, zlib level 1 and a fixed header) against
`scipy.io.savemat(..., do_compression=True)` (level 6, the date in the header) on the PASCAL `.mat` files.

usage: PYTHONPATH=src python benchmarks/synth_speed.py [--images 48] [--size 96x128] [--repeats 3] [--dir /tmp]

Each timing is the fastest of ``--repeats`` runs (the machine may be shared). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _fsync_every_file(folder) -> None:
    for root, _, names in os.walk(folder):
        for name in names:
            with open(os.path.join(root, name), "rb+") as f:
                os.fsync(f.fileno())


FLUSHES = {"syncfs (as shipped)": None, "fsync per file": _fsync_every_file, "no flush": lambda folder: None}


def _synth_rate(layout: str, images: int, size: tuple[int, int], repeats: int, folder: Path, flush) -> float:
    from pamm.data.synth import synthesize

    def run():
        out = Path(tempfile.mkdtemp(dir=folder))
        try:
            if flush is None:
                synthesize(out, layout, images, 0, size, seed=0, progress=False)
            else:
                with mock.patch("pamm.fs._flush_file_system", flush):
                    synthesize(out, layout, images, 0, size, seed=0, progress=False)
        finally:
            shutil.rmtree(out)

    return images / _best(run, repeats)


def _mat_comparison(images: int, size: tuple[int, int], repeats: int) -> dict[str, tuple[float, int]]:
    """ms per image and bytes in all of encoding the two .mat files of each PASCAL example, both ways."""
    from scipy.io import loadmat, savemat

    from pamm.data.formats import mat_bytes
    from pamm.data.synth import render_scene, scene_rng
    from pamm.data.synth.layouts import parts_annotation

    variables = []
    for i in range(images):
        scene = render_scene(scene_rng(0, "pascal", "train", i), size, "pascal")
        variables += [("LabelMap", scene["label_map"]), ("anno", parts_annotation(scene, f"{i}.jpg")[0])]

    def ours():
        return [mat_bytes(name, value) for name, value in variables]

    def scipy_compressed():
        out = []
        for name, value in variables:
            buffer = io.BytesIO()
            savemat(buffer, {name: value}, do_compression=True, oned_as="row")
            out.append(buffer.getvalue())
        return out

    results = {}
    decoded = {}
    for label, fn in (("formats.mat_bytes (level 1, fixed header)", ours),
                      ("scipy savemat do_compression=True (level 6)", scipy_compressed)):  # fmt: skip
        seconds = _best(fn, repeats)
        files = fn()
        results[label] = (seconds / images * 1e3, sum(len(f) for f in files))
        decoded[label] = [loadmat(io.BytesIO(f)) for f in files]
    first, second = decoded.values()
    for a, b in zip(first, second):  # loadmat reads both the same
        for key in a:
            if not key.startswith("__"):
                assert repr(a[key]) == repr(b[key]), key
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=48)
    p.add_argument("--size", default="96x128")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dir", default=None, help="folder on the file system to measure (default: the temp folder)")
    args = p.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    folder = Path(args.dir or tempfile.gettempdir())
    print(
        f"machine: {platform.node()}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
        f"numpy {np.__version__}; {args.images} images of {args.size}, best of {args.repeats}, files in {folder}\n"
    )
    print("| layout | " + " | ".join(f"images/s, {name}" for name in FLUSHES) + " |")
    print("|---|" + "---:|" * len(FLUSHES))
    for layout in ("nyud", "pascal"):
        rates = [_synth_rate(layout, args.images, size, args.repeats, folder, flush) for flush in FLUSHES.values()]
        print(f"| {layout} | " + " | ".join(f"{rate:.1f}" for rate in rates) + " |")
    print("\n| PASCAL .mat writer | ms per image (2 files) | bytes (all files) |")
    print("|---|---:|---:|")
    for label, (ms, size_bytes) in _mat_comparison(args.images, size, args.repeats).items():
        print(f"| {label} | {ms:.2f} | {size_bytes:,} |")


if __name__ == "__main__":
    main()
