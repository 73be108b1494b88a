"""Validation of a dataset folder: every problem at once, before a long training run finds the first one.

Two passes share the loaders' rules:

* :func:`check_dataset` (``pamm data check --dataset nyud|pascal|generic --root DIR``) reads and fully decodes every
  file of every split, with a thread pool for the I/O; the checks are exactly those the loaders apply.
* :func:`validate_dataset` runs before training and evaluation on the samples of one split and the files its tasks
  need: label maps and depth are decoded (value ranges, shapes), images are checked for integrity from their
  headers and chunk checksums without a full decode (:mod:`pamm.data.probe`). Results are cached per sample, keyed
  on each file's path, size and modification time, in the user's cache folder (never in the dataset, which may be
  read-only), so a re-run checks only what changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pamm.data.dataset import (
    Layout,
    MultiTaskDataset,
    decoded_array,
    image_size_mismatches,
    locate_files,
    read_split,
)
from pamm.data.generic import generic_layout
from pamm.data.io import DatasetError
from pamm.data.nyud import NYUD_LAYOUT
from pamm.data.pascal import PASCAL_LAYOUT
from pamm.data.probe import probe_image
from pamm.fs import atomic_write_text
from pamm.manifest import ManifestError, read_manifest
from pamm.tasks import GENERIC, dataset_spec

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
    decoded: dict[str, np.ndarray | None] = {}
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
        image_height, image_width = decoded_array(decoded, "image").shape[:2]
        for kind, (height, width) in image_size_mismatches(decoded):
            problems.append(
                _problem(paths[kind], f"size {height}x{width} differs from the image's {image_height}x{image_width}")
            )
    return problems


def check_dataset(
    name: str,
    root: str | os.PathLike,
    splits: Sequence[str] | None = None,
    workers: int | None = None,
    progress: bool = False,
) -> list[Problem]:
    """List every problem of dataset ``name`` (``"nyud"``, ``"pascal"`` or ``"generic"``) stored at ``root``.

    Reported: missing root, split file, folder or file (an id with none of its files is reported once);
    unreadable, empty, truncated or wrongly encoded files; label values out of range; label maps whose size differs
    from their image; for a generic dataset, every problem of its ``dataset.yaml`` (then nothing else is checked).
    An empty list means the loaders will read every sample of ``splits`` for all tasks.

    Args:
        name: dataset key.
        root: dataset root folder.
        splits: split files to check (default: ``train`` and ``val``; a generic dataset's every split).
        workers: threads reading files (default: 2 × CPU count, at most 16).
        progress: show a tqdm progress bar.
    """
    root = Path(root)
    if name == GENERIC:
        if not root.is_dir():
            return [Problem(str(root), "dataset root is not a folder (expected a folder holding a dataset.yaml)")]
        try:
            manifest = read_manifest(root)
        except ManifestError as err:
            return [Problem(err.path, problem) for problem in err.problems]
        layout, tasks = generic_layout(manifest), manifest.spec.tasks
        splits = tuple(manifest.splits) if splits is None else splits
    else:
        tasks = dataset_spec(name).tasks
        layout = LAYOUTS[name]
        splits = DEFAULT_SPLITS if splits is None else splits
    if not root.is_dir():
        return [Problem(str(root), f"dataset root is not a folder (expected the {name} dataset root)")]

    kinds = layout.kinds_for(tasks)
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
        split_file = layout.split_path(root, split)
        any_folder = len(located.missing_folders) < len(kinds)  # else the missing folders say it all
        nothing_found = {
            image_id for image_id, paths in zip(ids, located.paths) if any_folder and not any(paths.values())
        }
        problems += [
            Problem(str(split_file), f"id {image_id!r} has no files at all") for image_id in sorted(nothing_found)
        ]
        problems += [
            Problem(path, f"{message}, listed in {split_file.name}")
            for image_id, path, message in located.missing_files
            if image_id not in nothing_found
        ]
        for image_id, paths in zip(ids, located.paths):
            if image_id not in nothing_found:
                to_read.setdefault(image_id, paths)

    workers = workers or min(16, 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results: Iterable[list[Problem]] = pool.map(lambda item: _check_image(layout, *item), to_read.items())
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(to_read), desc=f"checking {name}", unit="image")
        for image_problems in results:
            problems += image_problems
    return problems


# ----------------------------------------------------------------------------------------------------------
# The fast pass before training


VALIDATION_VERSION = 1
"""Bumped whenever the rules change, so that cached verdicts of older rules are not trusted."""


def default_cache_dir() -> Path:
    """Where validation verdicts are cached: ``$PAMM_CACHE_DIR``, else ``$XDG_CACHE_HOME/pamm``, else
    ``~/.cache/pamm``."""
    if os.environ.get("PAMM_CACHE_DIR"):
        return Path(os.environ["PAMM_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pamm"


@dataclass
class ValidationReport:
    """Outcome of :func:`validate_dataset`."""

    bad: dict[str, str] = field(default_factory=dict)
    """image id → what is wrong (one line naming the file)."""
    samples: int = 0
    """samples validated (cached verdicts included)."""
    cached: int = 0
    """samples whose verdict came from the cache."""
    seconds: float = 0.0


def _probe_sample(layout: Layout, paths: dict[str, Path]) -> str:
    """Validate one sample's files the fast way; returns "" when it loads, else the first problem."""
    sizes: dict[str, tuple[int, ...] | None] = {}
    try:
        for kind, path in paths.items():
            size: tuple[int, ...] | None = None
            if kind in layout.probes:
                probe_kind, what = layout.probes[kind]
                size = probe_image(path, probe_kind, what)
            if size is None:
                array = layout.decode(kind, path)
                size = None if array is None else tuple(array.shape[:2])
            sizes[kind] = size
    except DatasetError as err:
        return str(err)
    except Exception as err:  # noqa: BLE001 - an unforeseen reader failure is a bad file, named
        return f"{path}: unexpected error while reading ({type(err).__name__}: {err})"
    image_size = sizes["image"]
    assert image_size is not None  # an image always decodes to an array
    for kind, size in sizes.items():
        if kind != "image" and size is not None and size != image_size:
            return (
                f"{paths[kind]}: size {size[0]}x{size[1]} differs from its image {paths['image']} "
                f"({image_size[0]}x{image_size[1]}); expected the same height x width"
            )
    return ""


def _signature(layout: Layout, paths: dict[str, Path]) -> str | None:
    """Cache key of one sample: its files' paths, sizes and modification times (None if a file vanished)."""
    parts = [layout.name, VALIDATION_VERSION]
    if layout.source is not None:  # a generic dataset's rules come from its manifest: a changed one re-validates
        try:
            stat = os.stat(layout.source)
        except OSError:
            return None
        parts.append([layout.source, stat.st_size, stat.st_mtime_ns])
    for kind in sorted(paths):
        try:
            stat = os.stat(paths[kind])
        except OSError:
            return None
        parts.append([kind, os.path.abspath(paths[kind]), stat.st_size, stat.st_mtime_ns])
    return hashlib.sha1(json.dumps(parts).encode()).hexdigest()


def _cache_file(cache_dir: Path, dataset: MultiTaskDataset) -> Path:
    key = hashlib.sha1(f"{dataset.layout.name}:{dataset.root.resolve()}".encode()).hexdigest()[:16]
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in dataset.layout.name)  # a manifest's name
    return cache_dir / f"validated-{name}-{key}.json"


def _read_cache(path: Path) -> dict[str, str]:
    try:
        doc = json.loads(path.read_text())
        return dict(doc["entries"]) if doc.get("version") == VALIDATION_VERSION else {}
    except (OSError, ValueError, KeyError, TypeError):
        return {}  # absent, unreadable or damaged: validate again


def _write_cache(path: Path, dataset: MultiTaskDataset, entries: dict[str, str]) -> None:
    doc = {"version": VALIDATION_VERSION, "root": str(dataset.root.resolve()), "entries": entries}
    try:
        atomic_write_text(path, json.dumps(doc))
    except OSError:
        pass  # a cache that cannot be written only costs time on the next run


def validate_dataset(
    dataset: MultiTaskDataset,
    cache_dir: str | os.PathLike | None = None,
    cache: bool = True,
    workers: int | None = None,
    progress: bool = False,
) -> ValidationReport:
    """Validate every sample of ``dataset`` (its split, the files its tasks need) before it is used.

    The checks (module docstring) find what loading would: missing, empty, truncated or corrupt files, label maps
    that are not PNGs or hold values out of range, depth maps of the wrong shape or with invalid values, files whose
    size differs from their image. With ``cache``, verdicts are kept in ``cache_dir`` (default
    :func:`default_cache_dir`) keyed on each file's path, size and modification time.

    Returns:
        a :class:`ValidationReport`; ``report.bad`` maps each bad sample's id to one line naming the file.
    """
    tic = time.perf_counter()
    layout = dataset.layout
    cache_path = _cache_file(Path(cache_dir or default_cache_dir()), dataset) if cache else None
    known = _read_cache(cache_path) if cache_path is not None else {}
    signatures = [_signature(layout, paths) for paths in dataset.paths]
    todo = [i for i, sig in enumerate(signatures) if sig is None or sig not in known]
    report = ValidationReport(samples=len(dataset.ids), cached=len(dataset.ids) - len(todo))
    verdicts = {i: known[sig] for i, sig in enumerate(signatures) if sig is not None and sig in known}
    if todo:
        workers = workers or min(16, 2 * (os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results: Iterable[str] = pool.map(lambda i: _probe_sample(layout, dataset.paths[i]), todo)
            if progress:
                from tqdm import tqdm

                results = tqdm(results, total=len(todo), desc=f"validating {dataset.split}", unit="sample", leave=False)
            for i, verdict in zip(todo, results):
                verdicts[i] = verdict
        if cache_path is not None:
            fresh = {sig: verdicts[i] for i in todo if (sig := signatures[i]) is not None}
            _write_cache(cache_path, dataset, {**known, **fresh} if len(known) < 200_000 else fresh)
    report.bad = {dataset.ids[i]: verdicts[i] for i in sorted(verdicts) if verdicts[i]}
    report.seconds = time.perf_counter() - tic
    return report
