"""Files of a prediction (what ``pamm predict`` writes for an image), encoded in memory and written all or nothing.

Per image ``<stem>`` and task:

- ``<stem>_<task>.npy``: the map as the predictor returns it (:class:`pamm.inference.Prediction`): semseg /
  human_parts uint8 class ids (H, W); depth float32 metres (H, W); normals float32 unit vectors (H, W, 3); edge /
  sal float32 probabilities (H, W).
- ``<stem>_<task>.png``: semseg / human_parts an 8-bit palette PNG whose pixel values are the class ids and whose
  palette gives the classes' colours (:func:`pamm.viz.palette_for`; 255, ignore, in :data:`pamm.viz.IGNORE_RGB`);
  depth a 16-bit grayscale PNG in millimetres (rounded, 0 = 0 m, saturating at 65,535 mm); normals an RGB PNG
  (n + 1) / 2 · 255; edge / sal an 8-bit grayscale PNG, probability · 255.
- ``<stem>_panel.png`` (unless ``panel=False``): the input beside every map (:func:`pamm.viz.make_panel`).

:func:`write_files` writes one image's files through :class:`pamm.fs.AtomicGroup`: all of them or, if anything
fails (disk full), none, with the error naming the file.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .fs import AtomicGroup
from .tasks import DatasetSpec
from .viz import IGNORE_RGB, colorize_normals, label_space, make_panel, palette_for

__all__ = ["output_names", "encode_prediction", "write_files", "png_bytes", "DEPTH_PNG_SCALE"]

DEPTH_PNG_SCALE = 1000.0
"""Depth PNG values per metre (millimetres)."""


def output_names(stem: str, tasks: Sequence[str], panel: bool = True) -> list[str]:
    """The file names :func:`encode_prediction` gives an image's outputs."""
    names = [f"{stem}_{task}.{kind}" for task in tasks for kind in ("npy", "png")]
    return names + ([f"{stem}_panel.png"] if panel else [])


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def task_png(task: str, value: np.ndarray, dataset: str | DatasetSpec) -> Image.Image:
    """The PNG picture of one map (formats in the module docstring); ``dataset`` (a name or the model's
    ``meta.spec``) gives the class palettes."""
    if task in ("semseg", "human_parts"):
        palette = np.zeros((256, 3), dtype=np.uint8)
        colours = palette_for(dataset, task)
        palette[: len(colours)] = colours
        palette[255] = IGNORE_RGB
        image = Image.fromarray(np.asarray(value, dtype=np.uint8))
        image.putpalette(palette.ravel().tolist())  # an "L" image with a palette becomes a "P" image
        return image
    if task == "depth":
        millimetres = np.clip(np.rint(np.nan_to_num(value) * DEPTH_PNG_SCALE), 0, 65535).astype(np.uint16)
        return Image.fromarray(millimetres)
    if task == "normals":
        return Image.fromarray(colorize_normals(value))
    if task in ("edge", "sal"):
        return Image.fromarray(np.rint(np.clip(np.nan_to_num(value), 0, 1) * 255).astype(np.uint8))
    raise ValueError(f"unknown task {task!r}")


def encode_prediction(
    stem: str, prediction: Mapping[str, np.ndarray], image: np.ndarray, meta: Any, panel: bool = True
) -> dict[str, bytes]:
    """An image's output files in memory: file name -> content (module docstring).

    Args:
        stem: name prefix of the files.
        prediction: task -> map at the image's size.
        image: the RGB uint8 (H, W, 3) input, for the panel.
        meta: the model's :class:`~pamm.models.meta.ModelMeta` (palettes, task order).
        panel: also the panel.
    """
    files = {}
    for task, value in prediction.items():
        files[f"{stem}_{task}.npy"] = _npy_bytes(value)
        files[f"{stem}_{task}.png"] = png_bytes(task_png(task, value, label_space(meta)))
    if panel:
        files[f"{stem}_panel.png"] = png_bytes(make_panel(image, prediction, meta=meta))
    return files


def write_files(folder: str | Path, files: Mapping[str, bytes]) -> list[Path]:
    """Write ``files`` (name -> content) into ``folder``, all or none (:class:`pamm.fs.AtomicGroup`)."""
    folder = Path(folder)
    paths = [folder / name for name in files]
    with AtomicGroup() as group:
        for path, data in zip(paths, files.values()):
            group.write_bytes(path, data)
    return paths
