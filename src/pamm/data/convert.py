"""``pamm data convert``: a NYUD-v2 or PASCAL-Context folder rewritten as a generic dataset (``dataset.yaml`` format).

Every sample is read through the benchmark's own loader (:meth:`~pamm.data.dataset.MultiTaskDataset.load_raw`, so
its conventions apply: NYUD labels shifted to 0..39, PASCAL boundaries derived from ``LabelMap`` and thinned, human
parts grouped, distilled normals masked to trusted classes, saliency thresholded) and written in the manifest's
encodings (:func:`pamm.data.generic.encode_targets`): labels as PNG with 255 = not annotated, depth as float ``.npy``
in metres (bit-exact), normals as RGB PNG ((0, 0, 0) where not annotated), boundaries and saliency as 0 / 255
PNG. Input images are copied byte for byte. The manifest keeps the benchmark's classes, palettes, edge tolerance,
edge loss weight and boundary convention, so a model trained on the copy sees the same targets and is scored the same.

The output is written into a hidden folder beside it and moved into place when complete
(:class:`pamm.fs.StagedFolder`): an error, a full disk or Ctrl-C leaves nothing behind and an older output intact.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pamm.errors import InputError, ResourceError
from pamm.fs import StagedFolder, folder_has_contents, unexpected_files
from pamm.manifest import MANIFEST_FILE, ManifestError, manifest_yaml, parse_manifest, read_manifest
from pamm.tasks import DATASETS, dataset_spec

__all__ = ["ConvertOutputExistsError", "convert_dataset", "generic_files"]

DEFAULT_SPLITS = ("train", "val")


class ConvertOutputExistsError(InputError, FileExistsError):
    """The output folder exists and may not be replaced (no ``overwrite``, or it holds files that are not a
    dataset's)."""


def generic_files(root: Path) -> tuple[set[str], list[str]]:
    """The files of the generic dataset in ``root`` that its manifest accounts for (relative paths: the manifest,
    its split lists and every file of every listed id), and the other files found there (sorted). Raises
    ManifestError when ``root`` holds no valid manifest."""
    from pamm.data.generic import example_paths

    manifest = read_manifest(root)
    owned = {MANIFEST_FILE, *manifest.splits.values()}
    for relative in manifest.splits.values():
        try:
            ids = [line.strip() for line in (root / relative).read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError):
            continue
        for image_id in ids:
            owned.update(example_paths(manifest, image_id).values())
    return owned, unexpected_files(root, owned)


def _may_replace(out: Path, root: Path, overwrite: bool) -> bool:
    """Whether ``out`` holds a dataset to replace (False: nothing there yet); raises when it may not be written."""
    resolved_out, resolved_root = out.resolve(), root.resolve()
    if resolved_out == resolved_root or resolved_root in resolved_out.parents or resolved_out in resolved_root.parents:
        raise InputError(f"out: {str(out)!r} overlaps the source dataset {str(root)!r}; choose a folder outside it")
    if not folder_has_contents(out):
        return False
    if not overwrite:
        raise ConvertOutputExistsError(
            f"out: {str(out)!r} already exists and is not empty; pass --overwrite "
            "(overwrite=True) to replace the dataset in it, or choose another folder"
        )
    try:
        _, others = generic_files(out)
    except ManifestError as e:
        raise ConvertOutputExistsError(
            f"out: {str(out)!r} is not a generic dataset folder ({e}); it is never "
            "overwritten. Choose another folder, or move it away first"
        ) from None
    if others:
        raise ConvertOutputExistsError(
            f"out: {str(out)!r} holds {len(others)} file(s) that its dataset.yaml does "
            f"not account for (e.g. {others[0]!r}); it is not replaced so that they are "
            "not lost. Move them out, or choose another folder"
        )
    return True


def _bounded_map(function: Callable, items: Sequence, workers: int) -> Iterator:
    """``map(function, items)`` in ``workers`` threads, in order, with at most ``4 * workers`` results pending."""
    if workers <= 1:
        yield from map(function, items)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = []
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) >= 4 * workers:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()


def convert_dataset(
    source: str,
    root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    tasks: Sequence[str] | None = None,
    splits: Iterable[str] | None = None,
    name: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    workers: int | None = None,
) -> dict:
    """Write the benchmark dataset ``source`` (``"nyud"`` / ``"pascal"``) stored at ``root`` as a generic dataset
    in the folder ``out`` (module docstring).

    Args:
        source: the benchmark layout of ``root``.
        root: its dataset folder (``.../NYUDv2`` or ``.../PASCALContext``).
        out: the generic dataset folder to create (``out/dataset.yaml``, ``out/images/``, ...).
        tasks: tasks to keep (default: all of the benchmark's).
        splits: splits to convert (default: train and val); each becomes ``splits/<split>.txt``.
        name: the manifest's ``name`` (default: ``source``).
        overwrite: replace an existing ``out`` — only a generic dataset folder holding nothing but the files its
            ``dataset.yaml`` accounts for; any other folder is never touched.
        progress: show a tqdm progress bar.
        workers: threads reading the source (default: the CPU count, at most 8).

    Returns a summary: ``root`` (out), ``source``, ``tasks``, ``counts`` ({split: images}), ``images``, ``files``,
    ``seconds``, ``replaced``.

    Raises:
        InputError (a ValueError): a bad argument, a missing or invalid source file (named; nothing is written),
        an ``out`` that may not be written (:class:`ConvertOutputExistsError`). ResourceError (an OSError): the
        disk filled up or the folder is not writable (the file is named; nothing is left behind).
    """
    from tqdm import tqdm

    from pamm.data import DATASET_CLASSES, build_dataset
    from pamm.data.generic import encode_targets, example_paths

    if source not in DATASETS:
        raise InputError(f"source must be one of {list(DATASETS)} (a benchmark layout), got {source!r}")
    spec = dataset_spec(source)
    tasks = spec.select(tasks, "tasks")
    splits = list(DEFAULT_SPLITS if splits is None else splits)
    if not splits or len(set(splits)) != len(splits):
        raise InputError(f"splits must name distinct splits, got {splits}")
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise InputError(f"root: {str(root)!r} is not a folder (expected the {source} dataset root)")
    replacing = _may_replace(out, root, overwrite)
    datasets = {split: build_dataset(source, root, split, tasks) for split in splits}  # every file located first

    entries = {}
    for task in tasks:
        if task in ("semseg", "human_parts"):
            entries[task] = {
                "classes": list(spec.class_names[task]),
                "ignore": 255,
                "colors": spec.palettes.get(task, "voc"),
            }
        elif task == "depth":
            entries[task] = {"encoding": "npy", "max_depth": spec.max_depth}
        elif task == "edge":
            entries[task] = {
                "tolerance": spec.edge_max_dist,
                "pos_weight": spec.edge_pos_weight,
                "gt_boundary": spec.edge_gt,
            }
        else:
            entries[task] = {}
    image_suffix = DATASET_CLASSES[source].layout.files["image"].suffix
    manifest = parse_manifest({"version": 1, "name": name or source,
                               "images": {"folder": "images", "suffix": image_suffix},
                               "splits": {split: f"splits/{split}.txt" for split in splits},
                               "tasks": entries}, out)  # fmt: skip

    jobs = []
    seen: set[str] = set()
    for dataset in datasets.values():
        for index, image_id in enumerate(dataset.ids):
            if image_id not in seen:
                seen.add(image_id)
                jobs.append((dataset, index, image_id))

    def encode(job) -> dict[str, bytes]:
        dataset, index, image_id = job
        raw = dataset.load_raw(index)
        image_path = dataset.paths[index]["image"]
        try:
            image = image_path.read_bytes()
        except OSError as e:
            raise InputError(f"{image_path}: cannot be read ({e.strerror or e})") from None
        files = {example_paths(manifest, image_id)["image"]: image}
        files.update(encode_targets(manifest, image_id, {task: raw[task] for task in tasks}))
        return files

    workers = workers or min(8, os.cpu_count() or 1)
    start = time.perf_counter()
    count = 0
    try:
        with (
            StagedFolder(out, replace=replacing) as stage,
            tqdm(total=len(jobs), desc=f"convert {source}", unit="img", disable=not progress) as bar,
        ):
            for files in _bounded_map(encode, jobs, workers):
                for relative, data in files.items():
                    stage.write_bytes(relative, data)
                count += len(files)
                bar.update()
            for split, dataset in datasets.items():
                stage.write_bytes(manifest.splits[split], "".join(f"{i}\n" for i in dataset.ids).encode())
            stage.write_bytes(MANIFEST_FILE, manifest_yaml(manifest).encode())
            count += len(datasets) + 1
    except ResourceError as e:
        kept = f", and the dataset already in {str(out)!r} is unchanged" if replacing else ""
        raise ResourceError(f"{e}; the partial dataset was removed{kept}", e.errno) from e
    return {
        "root": str(out),
        "source": source,
        "tasks": list(tasks),
        "counts": {split: len(dataset) for split, dataset in datasets.items()},
        "images": len(jobs),
        "files": count,
        "seconds": round(time.perf_counter() - start, 3),
        "replaced": replacing,
    }
