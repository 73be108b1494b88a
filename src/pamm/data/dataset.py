"""The machinery shared by the NYUD-v2 and PASCAL-Context loaders: file layouts, split files, seeding, collation.

A dataset is described by a :class:`Layout`: where each kind of file lives, which files each task needs, how one
file is decoded and checked (``decode``) and how the decoded files of one image become a *raw sample*
(``assemble``). The loaders and ``pamm data check`` use the same layout, so both accept and reject the same files.

Raw sample (before transforms), all tensors with the image's size H × W:
    ``image`` float32 (3, H, W) RGB in 0..255; ``semseg`` / ``human_parts`` / ``sal`` int64 (H, W) with 255 =
    ignore; ``depth`` float32 (1, H, W) metres, 0 = invalid; ``normals`` float32 (3, H, W) in [-1, 1], (0, 0, 0) =
    invalid; ``edge`` float32 (1, H, W) in {0, 1}; ``meta`` {"id": str, "size": (H, W), "valid": (0, 0, H, W)}.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pamm.data.io import DatasetError, fail
from pamm.data.transforms import build_transforms

ON_ERROR = ("raise", "skip")
"""What a dataset does with a sample whose files fail to load (``data.on_error``)."""

Transform = Callable[[dict, np.random.Generator], dict]
"""A transform maps a sample and a random generator to a new sample (see :mod:`pamm.data.transforms`)."""


@dataclass(frozen=True)
class FileSpec:
    """One kind of per-image file: ``<root>/<folder>/<id><suffix>``, looked up in ``folders`` in order."""

    folders: tuple[str, ...]
    suffix: str
    what: str

    def describe(self, root: Path, image_id: str) -> str:
        """The expected location(s) of this file for ``image_id``, for messages."""
        return " or ".join(str(root / folder / f"{image_id}{self.suffix}") for folder in self.folders)


@dataclass(frozen=True)
class Layout:
    """How a dataset is stored on disk and decoded.

    Attributes:
        name: dataset name (:data:`pamm.tasks.DATASETS` key or a manifest's ``name``).
        split_folder: folder of the ``<split>.txt`` files (one image id per line).
        split_files: split name -> its list file relative to the root, instead of ``split_folder`` (a manifest's
            ``splits``).
        source: the file that describes the layout (a manifest), for messages; None for built-in layouts.
        files: kind of file → where it lives.
        task_files: task → kinds of file it needs (the ``"image"`` kind is always needed); its keys are the dataset's
            tasks in canonical order.
        decode: ``decode(kind, path)`` reads and validates one file, returning a NumPy array (or ``None`` where the
            kind allows "no annotation"); raises :class:`DatasetError`.
        assemble: ``assemble(decoded, tasks)`` turns the decoded files of one image into the raw sample's task
            tensors (without ``meta``).
        probes: kinds whose ``decode`` checks need no pixel values → (probe kind, description) for
            :func:`pamm.data.probe.probe_image`, the fast integrity check used before training; other kinds are
            validated with ``decode``.
    """

    name: str
    split_folder: str
    files: dict[str, FileSpec]
    task_files: dict[str, tuple[str, ...]]
    decode: Callable[[str, Path], np.ndarray | None]
    assemble: Callable[[dict[str, np.ndarray | None], tuple[str, ...]], dict[str, torch.Tensor]]
    probes: dict[str, tuple[str, str]] = field(default_factory=dict)
    split_files: Mapping[str, str] | None = None
    source: str | None = None

    def split_path(self, root: Path, split: str) -> Path:
        """The list file of ``split``: ``split_files[split]`` when given, else ``<split_folder>/<split>.txt``."""
        if self.split_files is not None:
            return root / self.split_files[split]
        return root / self.split_folder / f"{split}.txt"

    def kinds_for(self, tasks: Sequence[str]) -> tuple[str, ...]:
        """The kinds of file needed for ``tasks``, image first, each once."""
        kinds = ["image"]
        for task in tasks:
            kinds += [kind for kind in self.task_files[task] if kind not in kinds]
        return tuple(kinds)


def resolve_tasks(layout: Layout, tasks: Sequence[str] | None) -> tuple[str, ...]:
    """Validate ``tasks`` against the dataset's tasks; ``None`` means all of them, in canonical order."""
    known = tuple(layout.task_files)
    if tasks is None:
        return known
    unknown = [task for task in tasks if task not in known]
    if unknown:
        raise ValueError(f"dataset {layout.name!r} has no task(s) {unknown}; expected a subset of {list(known)}")
    return tuple(tasks)


def read_split(layout: Layout, root: Path, split: str) -> list[str]:
    """Read the image ids of ``split`` (blank lines skipped); raise :class:`DatasetError` if the file is missing,
    unreadable, or lists no id."""
    if not root.is_dir():
        raise fail(root, f"dataset root is not a folder (expected the {layout.name} dataset root)")
    if layout.split_files is not None and split not in layout.split_files:
        raise fail(layout.source or root, f"no split {split!r}; its splits: {', '.join(layout.split_files)}")
    path = layout.split_path(root, split)
    if not path.is_file():
        what = "a folder" if path.is_dir() else "missing"
        if layout.split_files is not None:
            raise fail(path, f"{what} split file (expected one image id per line, as {layout.source} says)")
        folder = path.parent
        found = sorted(p.stem for p in folder.glob("*.txt")) if folder.is_dir() else []
        raise fail(path, f"{what} split file (expected one image id per line; splits found here: {found})")
    try:
        with open(path, encoding="utf-8") as handle:
            ids = [line.strip() for line in handle if line.strip()]
    except UnicodeDecodeError:
        raise fail(path, "split file is not UTF-8 text; expected one image id per line") from None
    if not ids:
        raise fail(path, "split file lists no image ids; expected one image id per line")
    return ids


@dataclass
class Located:
    """Result of :func:`locate_files`: per image, kind → path (``None`` when absent), and the problems found."""

    paths: list[dict[str, Path | None]]
    missing_folders: list[tuple[Path, str]] = field(default_factory=list)
    """(folder, what is wrong) for each kind of file none of whose folders exists."""
    missing_files: list[tuple[str, str, str]] = field(default_factory=list)
    """(image id, expected location, message) for each absent file whose folder exists."""


def locate_files(layout: Layout, root: Path, ids: Sequence[str], kinds: Sequence[str]) -> Located:
    """Find every needed file by listing each folder once (existence only, nothing is read)."""
    listings: dict[str, set[str]] = {}
    located = Located(paths=[{} for _ in ids])
    for kind in kinds:
        spec = layout.files[kind]
        present = [folder for folder in spec.folders if (root / folder).is_dir()]
        if not present:
            alternatives = "".join(f"; or in {root / folder}" for folder in spec.folders[1:])
            detail = f"missing folder (expected {spec.what} per image{alternatives})"
            located.missing_folders.append((root / spec.folders[0], detail))
        for folder in present:
            if folder not in listings:
                listings[folder] = set(os.listdir(root / folder))
        for image_id, paths in zip(ids, located.paths):
            name = f"{image_id}{spec.suffix}"
            found = next((folder for folder in present if name in listings[folder]), None)
            paths[kind] = None if found is None else root / found / name
            if found is None and present:
                message = f"missing file for id {image_id!r} (expected {spec.what})"
                located.missing_files.append((image_id, spec.describe(root, image_id), message))
    return located


def decoded_array(decoded: Mapping[str, np.ndarray | None], kind: str) -> np.ndarray:
    """``decoded[kind]`` for a kind that always decodes to an array (the image, every label but PASCAL's
    optional human parts)."""
    array = decoded[kind]
    if array is None:
        raise ValueError(f"no {kind} array was decoded")
    return array


def image_size_mismatches(decoded: Mapping[str, np.ndarray | None]) -> list[tuple[str, tuple[int, ...]]]:
    """Kinds whose decoded array's (H, W) differs from the image's, with their sizes."""
    height, width = decoded_array(decoded, "image").shape[:2]
    return [
        (kind, array.shape[:2])
        for kind, array in decoded.items()
        if kind != "image" and array is not None and array.shape[:2] != (height, width)
    ]


class MultiTaskDataset(Dataset):
    """A split of a multi-task dataset stored in its real layout.

    Construction reads the split file and checks, cheaply (folder listings only), that every file each requested
    task needs exists for every id; any gap raises :class:`DatasetError` naming the first missing paths. Files are
    read and validated in ``__getitem__``; a bad file raises :class:`DatasetError` naming it.

    Bad samples: with ``on_error="raise"`` (default) a sample whose files fail to load raises
    :class:`DatasetError`; with ``on_error="skip"`` it is replaced by the next sample that loads (in index order,
    wrapping around) and the replaced ids and messages are listed in the returned sample's ``meta["replaced"]``.
    :meth:`exclude` removes samples known to be bad beforehand (see :func:`pamm.data.check.validate_dataset`).

    Randomness: sample ``index`` of epoch ``e`` is transformed with
    ``numpy.random.default_rng([seed, e, index])``, so the result does not depend on worker count or order. Call
    :meth:`set_epoch` before each epoch (with non-persistent DataLoader workers, which re-copy the dataset).

    Subclasses set the class attribute ``layout`` (a :class:`Layout`).

    Args:
        root: dataset root folder.
        split: split name, read from ``<root>/<layout.split_folder>/<split>.txt``.
        tasks: tasks to load; ``None`` for all the dataset's tasks.
        transform: ``transform(sample, rng) -> sample``; ``None`` applies only ImageNet normalisation and the
            ignore-region conventions (see :func:`pamm.data.transforms.build_transforms`).
        seed: base seed of the per-sample generators.
        on_error: ``"raise"`` or ``"skip"`` (see above).
    """

    layout: Layout

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        tasks: Sequence[str] | None = None,
        transform: Transform | None = None,
        seed: int = 0,
        on_error: str = "raise",
    ):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.root = Path(root)
        self.split = split
        self.on_error = on_error
        self.tasks = resolve_tasks(self.layout, tasks)
        self.transform = transform if transform is not None else build_transforms(train=False, size=None, multiple=1)
        self.seed = int(seed)
        self.epoch = 0
        self.skipped: dict[str, str] = {}
        """ids removed by :meth:`exclude`, with what is wrong with each."""
        self.ids = read_split(self.layout, self.root, split)
        self.kinds = self.layout.kinds_for(self.tasks)
        located = locate_files(self.layout, self.root, self.ids, self.kinds)
        if located.missing_folders:
            path, detail = located.missing_folders[0]
            raise fail(path, detail)
        if located.missing_files:
            shown = "; ".join(f"{path}: {message}" for _, path, message in located.missing_files[:5])
            more = len(located.missing_files) - 5
            raise DatasetError(
                f"{len(located.missing_files)} file(s) listed by split {split!r} are missing: {shown}"
                + (f"; ... and {more} more (run `pamm data check` for the full list)" if more > 0 else ""),
                path=located.missing_files[0][1],
            )
        # every file was found (checked above): no None left
        self.paths: list[dict[str, Path]] = [
            {kind: path for kind, path in paths.items() if path is not None} for paths in located.paths
        ]

    def __len__(self) -> int:
        return len(self.ids)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random augmentations ``__getitem__`` draws."""
        self.epoch = int(epoch)

    def load_raw(self, index: int) -> dict:
        """Read, validate and assemble the files of sample ``index`` into a raw (untransformed) sample."""
        paths = self.paths[index]
        decoded = {kind: self.layout.decode(kind, paths[kind]) for kind in self.kinds}
        image = decoded_array(decoded, "image")
        mismatches = image_size_mismatches(decoded)
        if mismatches:
            kind, size = mismatches[0]
            raise fail(
                paths[kind],
                f"size {size[0]}x{size[1]} differs from its image {paths['image']} "
                f"({image.shape[0]}x{image.shape[1]}); expected the same height x width",
            )
        height, width = image.shape[:2]
        sample: dict[str, Any] = {"image": torch.from_numpy(image).permute(2, 0, 1).float()}
        sample.update(self.layout.assemble(decoded, self.tasks))
        sample["meta"] = {"id": self.ids[index], "size": (height, width), "valid": (0, 0, height, width)}
        return sample

    def exclude(self, bad: dict[str, str]) -> None:
        """Remove the samples whose ids are keys of ``bad`` (id → what is wrong). Raises :class:`DatasetError` if
        nothing would be left."""
        keep = [i for i, image_id in enumerate(self.ids) if image_id not in bad]
        if not keep:
            split_file = self.layout.split_path(self.root, self.split)
            first = next(iter(bad.values()), "")
            raise DatasetError(
                f"{split_file}: every one of its {len(self.ids)} samples is damaged (first: {first})", path=split_file
            )
        self.skipped.update({image_id: bad[image_id] for image_id in self.ids if image_id in bad})
        self.ids = [self.ids[i] for i in keep]
        self.paths = [self.paths[i] for i in keep]

    def __getitem__(self, index: int) -> dict:
        replaced = []
        for attempt in range(len(self.ids) if self.on_error == "skip" else 1):
            candidate = (index + attempt) % len(self.ids)
            try:
                raw = self.load_raw(candidate)
            except DatasetError as err:
                if self.on_error != "skip":
                    raise
                replaced.append((self.ids[candidate], str(err)))
                continue
            if replaced:
                raw["meta"]["replaced"] = replaced
            return self.transform(raw, np.random.default_rng([self.seed, self.epoch, candidate]))
        raise DatasetError(f"no sample of split {self.split!r} loads (first: {replaced[0][1]})", path=self.root)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, tasks={list(self.tasks)}, "
            f"n={len(self)})"
        )


@dataclass(frozen=True)
class FailedSample:
    """Stands for a sample that raised :class:`DatasetError` inside a DataLoader worker (see :class:`LoadGuard`):
    the error crosses the process boundary as data, and :meth:`reraise` raises it in the main process as the
    one-line error it was, not wrapped in the worker's traceback."""

    message: str
    path: str | None = None

    def reraise(self):
        raise DatasetError(self.message, path=self.path)


class LoadGuard(Dataset):
    """A view of ``dataset`` whose items are :class:`FailedSample` where loading raised :class:`DatasetError`.
    :func:`collate` passes a failed sample on as the batch; the consumer calls ``batch.reraise()``."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        try:
            return self.dataset[key]
        except DatasetError as err:
            return FailedSample(str(err), err.path)


def collate(samples: Sequence[dict]) -> dict:
    """Stack the tensors of ``samples`` along a new batch dimension; ``meta`` becomes a list of the samples' metas.

    All samples must have the same keys and, per key, the same tensor shape (pad to a common size first). If a
    sample is a :class:`FailedSample`, that failure is returned instead of a batch.
    """
    if not samples:
        raise ValueError("collate needs at least one sample")
    failed = next((sample for sample in samples if isinstance(sample, FailedSample)), None)
    if failed is not None:
        return failed
    keys = samples[0].keys()
    batch: dict[str, Any] = {}
    for key in keys:
        values = [sample[key] for sample in samples]
        if key == "meta":
            batch[key] = values
            continue
        shapes = {tuple(value.shape) for value in values}
        if len(shapes) > 1:
            ids = [sample["meta"]["id"] for sample in samples if "meta" in sample]
            raise ValueError(f"cannot batch {key!r}: shapes {sorted(shapes)} differ (samples {ids}); pad first")
        batch[key] = torch.stack(values)
    return batch
