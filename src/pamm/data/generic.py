"""Datasets of your own: a folder described by a ``dataset.yaml`` manifest (:mod:`pamm.manifest`), any subset of the
six tasks, any class lists.

::

    ROOT/
      dataset.yaml                tasks, encodings, classes, splits (docs/dataset-format.md)
      splits/<split>.txt          image ids, one per line (paths as the manifest's ``splits`` say)
      images/<id>.png             input image (any format Pillow reads; folder and suffix from the manifest)
      semseg/<id>.png             class ids 0..K-1 (8- or 16-bit single channel), ``ignore`` = not annotated
      human_parts/<id>.png        as semseg
      depth/<id>.png | .npy       16-bit PNG (``scale`` units per metre, default mm) or float metres; 0 = none
      normals/<id>.png            RGB, n = 2 v / 255 - 1; (0, 0, 0) = not annotated
      edge/<id>.png               boundaries, 0 / 255
      sal/<id>.png                salient, 0 / 255

Decoded into the raw samples of :mod:`pamm.data.dataset` like the benchmarks (ignore 255, depth in metres with 0
invalid, normals in [-1, 1] with zero vectors invalid, boundaries {0, 1}), so transforms, losses and metrics see no
difference. :func:`encode_targets` is the inverse: it writes raw targets in a manifest's encodings (used by ``pamm
data convert`` and ``pamm data synth --layout generic``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch

from pamm.data.dataset import FileSpec, Layout, MultiTaskDataset, Transform, decoded_array
from pamm.data.formats import npy_bytes, png_bytes
from pamm.data.io import check_range, fail, read_depth_npy, read_label_png, read_rgb_image
from pamm.manifest import Manifest, read_manifest
from pamm.tasks import IGNORE_INDEX

__all__ = ["GenericDataset", "generic_layout", "describe_file", "encode_targets", "example_paths"]

_NORMALS_MISSING = (0, 0, 0)
"""RGB of a normals pixel without annotation (no unit vector encodes to it)."""


def describe_file(manifest: Manifest, task: str) -> str:
    """What a task's file must hold, for messages (e.g. ``"a 16-bit depth PNG (1000 units per metre)"``)."""
    store = manifest.storage[task]
    spec = manifest.spec
    if store.encoding == "labels":
        count = spec.num_outputs[task]
        return f"a {task} label PNG (class ids 0..{count - 1}, {store.ignore} = not annotated)"
    if store.encoding == "png16":
        return f"a 16-bit depth PNG ({store.scale:g} units per metre, 0 = no depth)"
    if store.encoding == "npy":
        return "a depth .npy in metres (0 = no depth)"
    if store.encoding == "normals":
        return "a surface-normal RGB PNG (n = 2 v / 255 - 1, (0, 0, 0) = not annotated)"
    return f"a {'boundary' if task == 'edge' else 'saliency'} PNG (0 / 255)"


def _decode(manifest: Manifest, kind: str, path: Path) -> np.ndarray:
    """Read and validate one file of ``kind`` (``"image"`` or a task) as the manifest says."""
    if kind == "image":
        return read_rgb_image(path)
    store = manifest.storage[kind]
    what = describe_file(manifest, kind)
    if store.encoding == "labels":
        labels = read_label_png(path, what)
        count = manifest.spec.num_outputs[kind]
        check_range(
            labels,
            path,
            f"0..{count - 1} or {store.ignore} (tasks.{kind}.ignore)",
            (labels < count) | (labels == store.ignore),
        )
        return np.where(labels == store.ignore, IGNORE_INDEX, labels).astype(np.int64)
    if store.encoding == "png16":
        values = read_label_png(path, what)
        if values.dtype == np.uint8:
            raise fail(path, f"8-bit PNG; expected {what} (tasks.depth.encoding: png16)")
        return (values.astype(np.float64) / store.scale).astype(np.float32)
    if store.encoding == "npy":
        return read_depth_npy(path, what)
    if store.encoding == "normals":
        rgb = read_label_png(path, what, channels=3)
        normals = 2.0 * rgb.astype(np.float32) / 255.0 - 1.0
        normals[(rgb == 0).all(axis=2)] = 0.0
        return normals.astype(np.float32)
    values = read_label_png(path, what)  # binary: edge, sal
    check_range(values, path, "0 or 255", (values == 0) | (values == 255))
    return (values == 255).astype(np.float32 if kind == "edge" else np.int64)


def _assemble(decoded: dict[str, np.ndarray | None], tasks: tuple[str, ...]) -> dict[str, torch.Tensor]:
    sample = {}
    for task in tasks:
        array = decoded_array(decoded, task)
        if task == "normals":
            sample[task] = torch.from_numpy(array).permute(2, 0, 1).contiguous()
        elif task in ("depth", "edge"):
            sample[task] = torch.from_numpy(array)[None]
        else:  # semseg, human_parts, sal: int64 (H, W)
            sample[task] = torch.from_numpy(array)
    return sample


def generic_layout(manifest: Manifest) -> Layout:
    """The :class:`~pamm.data.dataset.Layout` of a manifest's folder (files, splits, decoding)."""
    files = {"image": FileSpec((manifest.images.folder,), manifest.images.suffix, "an RGB image")}
    for task, store in manifest.storage.items():
        files[task] = FileSpec((store.folder,), store.suffix, describe_file(manifest, task))
    return Layout(
        name=manifest.spec.name,
        split_folder="",
        files=files,
        task_files={task: (task,) for task in manifest.spec.tasks},
        decode=partial(_decode, manifest),
        assemble=_assemble,
        split_files=dict(manifest.splits),
        source=str(manifest.path),
        probes={"image": ("rgb", "an RGB image"), "normals": ("label3", describe_file(manifest, "normals"))}
        if "normals" in manifest.storage
        else {"image": ("rgb", "an RGB image")},
    )


class GenericDataset(MultiTaskDataset):
    """A split of a dataset folder described by its ``dataset.yaml`` (module docstring).

    ``tasks`` must be among the manifest's (None: all of them, in the manifest's order); ``split`` one of its
    ``splits``. ``spec`` is the manifest's :class:`~pamm.tasks.DatasetSpec`. The rest as
    :class:`~pamm.data.dataset.MultiTaskDataset`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        tasks: Sequence[str] | None = None,
        transform: Transform | None = None,
        seed: int = 0,
        on_error: str = "raise",
    ):
        self.manifest = read_manifest(root)
        self.spec = self.manifest.spec
        self.layout = generic_layout(self.manifest)
        super().__init__(
            root, split, self.spec.select(tasks, f"tasks for {self.manifest.path}"), transform, seed, on_error
        )


# ----------------------------------------------------------------------------------------------------------
# writing


def example_paths(manifest: Manifest, image_id: str) -> dict[str, str]:
    """``"image"`` and each task -> the relative path of image ``image_id``'s file."""
    paths = {"image": f"{manifest.images.folder}/{image_id}{manifest.images.suffix}"}
    paths.update({task: f"{s.folder}/{image_id}{s.suffix}" for task, s in manifest.storage.items()})
    return paths


def _as_numpy(value) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def encode_targets(
    manifest: Manifest, image_id: str, targets: Mapping[str, np.ndarray | torch.Tensor]
) -> dict[str, bytes]:
    """The files of image ``image_id``'s targets in the manifest's encodings: relative path -> bytes.

    ``targets`` holds every task of the manifest as a raw sample does (NumPy or torch): ``semseg`` /
    ``human_parts`` / ``sal`` integer (H, W) with 255 = not annotated (sal: none allowed); ``depth`` (H, W) or
    (1, H, W) metres, 0 = none; ``normals`` (3, H, W) or (H, W, 3), zero vectors = not annotated; ``edge`` (H, W) or
    (1, H, W) in {0, 1}. A value the encoding cannot hold is a ValueError naming the image.
    """
    files = {}
    paths = example_paths(manifest, image_id)
    for task, store in manifest.storage.items():
        if task not in targets:
            raise ValueError(f"image {image_id!r}: no {task} target to write")
        value = _as_numpy(targets[task])
        if task == "normals" and value.ndim == 3 and value.shape[0] == 3 and value.shape[-1] != 3:
            value = np.moveaxis(value, 0, -1)  # (3, H, W) -> (H, W, 3)
        elif task != "normals" and value.ndim == 3 and value.shape[0] == 1:
            value = value[0]
        if store.encoding == "labels":
            count = manifest.spec.num_outputs[task]
            labels = value.astype(np.int64)
            bad = ~((labels >= 0) & (labels < count) | (labels == IGNORE_INDEX))
            if bad.any():
                raise ValueError(f"image {image_id!r}: {task} label {int(labels[bad][0])} outside 0..{count - 1}")
            ignore = store.ignore
            assert ignore is not None  # the manifest gives every labels task one (default 255)
            stored = np.where(labels == IGNORE_INDEX, ignore, labels)
            data = png_bytes(stored.astype(np.uint8 if ignore <= 255 else np.uint16))
        elif store.encoding == "png16":
            units = np.rint(value.astype(np.float64) * store.scale)
            if not np.isfinite(units).all() or units.min() < 0 or units.max() > 65535:
                raise ValueError(
                    f"image {image_id!r}: depth outside 0..{65535 / store.scale:g} m cannot be stored "
                    f"in a 16-bit PNG of {store.scale:g} units per metre"
                )
            data = png_bytes(units.astype(np.uint16))
        elif store.encoding == "npy":
            data = npy_bytes(value.astype(np.float32))
        elif store.encoding == "normals":
            missing = ~np.any(value != 0, axis=-1)
            rgb = np.clip(np.rint((value.astype(np.float64) + 1.0) * 127.5), 0, 255).astype(np.uint8)
            rgb[missing] = _NORMALS_MISSING
            rgb[~missing & (rgb == 0).all(axis=-1)] = (1, 1, 1)  # (-1, -1, -1): not a unit vector, never missing
            data = png_bytes(rgb)
        else:  # binary
            flags = value.astype(np.int64)
            if not np.isin(flags, (0, 1)).all():
                raise ValueError(
                    f"image {image_id!r}: {task} values {np.unique(flags[~np.isin(flags, (0, 1))])[:4]} "
                    "cannot be stored; expected 0 or 1 (no ignore value in a 0 / 255 PNG)"
                )
            data = png_bytes((flags * 255).astype(np.uint8))
        files[paths[task]] = data
    return files
