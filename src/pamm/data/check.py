"""Validation of a dataset folder: every problem at once, before a long training run finds the first one.

Used by ``pamm data check --dataset nyud|pascal --root DIR``. Each file is read (and fully decoded) once, with a
thread pool for the I/O; the checks are exactly those the loaders apply when reading a sample.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pamm.data.dataset import Layout, image_size_mismatches, locate_files, read_split
from pamm.data.io import DatasetError
from pamm.data.nyud import NYUD_LAYOUT
from pamm.data.pascal import PASCAL_LAYOUT
from pamm.tasks import dataset_spec

LAYOUTS: dict[str, Layout] = {"nyud": NYUD_LAYOUT, "pascal": PASCAL_LAYOUT}
DEFAULT_SPLITS = ("train", "val")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset: the path concerned and what is wrong with it."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def _problem(path, message: str) -> Problem:
    path = str(path)
    prefix = f"{path}: "
    return Problem(path, message[len(prefix) :] if message.startswith(prefix) else message)


def _check_image(layout: Layout, image_id: str, paths: dict[str, Path | None]) -> list[Problem]:
    """Decode every present file of one image and compare their sizes with the image's."""
    problems = []
    decoded = {}
    for kind, path in paths.items():
        if path is None:
            continue
        try:
            decoded[kind] = layout.decode(kind, path)
        except DatasetError as err:
            problems.append(_problem(path, str(err)))
        except Exception as err:  # an unforeseen failure must not stop the scan of the other files
            problems.append(_problem(path, f"unexpected error while reading ({type(err).__name__}: {err})"))
    if "image" in decoded:
        image_height, image_width = decoded["image"].shape[:2]
        for kind, (height, width) in image_size_mismatches(decoded):
            problems.append(
                _problem(paths[kind], f"size {height}x{width} differs from the image's {image_height}x{image_width}")
            )
    return problems


def check_dataset(
    name: str,
    root: str | os.PathLike,
    splits: Sequence[str] = DEFAULT_SPLITS,
    workers: int | None = None,
    progress: bool = False,
) -> list[Problem]:
    """List every problem of dataset ``name`` (``"nyud"`` or ``"pascal"``) stored at ``root``.

    Reported: missing root, split file, folder or file (an id with none of its files is reported once);
    unreadable, empty, truncated or wrongly encoded files; label values out of range; label maps whose size differs
    from their image. An empty list means the loaders will read every sample of ``splits`` for all tasks.

    Args:
        name: dataset key.
        root: dataset root folder.
        splits: split files to check.
        workers: threads reading files (default: 2 × CPU count, at most 16).
        progress: show a tqdm progress bar.
    """
    dataset_spec(name)
    layout = LAYOUTS[name]
    root = Path(root)
    if not root.is_dir():
        return [Problem(str(root), f"dataset root is not a folder (expected the {name} dataset root)")]

    kinds = layout.kinds_for(dataset_spec(name).tasks)
    problems: list[Problem] = []
    to_read: dict[str, dict[str, Path | None]] = {}
    for split in splits:
        try:
            ids = read_split(layout, root, split)
        except DatasetError as err:
            problems.append(_problem(err.path, str(err)))
            continue
        located = locate_files(layout, root, ids, kinds)
        problems += [Problem(str(path), message) for path, message in located.missing_folders]
        split_file = root / layout.split_folder / f"{split}.txt"
        any_folder = len(located.missing_folders) < len(kinds)  # else the missing folders say it all
        nothing_found = {
            image_id for image_id, paths in zip(ids, located.paths) if any_folder and not any(paths.values())
        }
        problems += [
            Problem(str(split_file), f"id {image_id!r} has no files at all") for image_id in sorted(nothing_found)
        ]
        problems += [
            Problem(path, f"{message}, listed in {split}.txt")
            for image_id, path, message in located.missing_files
            if image_id not in nothing_found
        ]
        for image_id, paths in zip(ids, located.paths):
            if image_id not in nothing_found:
                to_read.setdefault(image_id, paths)

    workers = workers or min(16, 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda item: _check_image(layout, *item), to_read.items())
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(to_read), desc=f"checking {name}", unit="image")
        for image_problems in results:
            problems += image_problems
    return problems
