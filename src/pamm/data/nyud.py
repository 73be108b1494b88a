"""NYUD-v2 in the ATRC layout (reference notes §5).

::

    NYUDv2/
      gt_sets/{train,val}.txt     image ids, one per line (795 / 654)
      images/<id>.png             RGB image
      segmentation/<id>.png       single channel: 0 = void, 1..40 = the 40 classes
      depth/<id>.npy              float depth in metres, 0 = invalid
      normals/<id>.png            RGB, normal = 2 · v / 255 − 1
      edge/<id>.png               single channel, 0 / 255 boundaries

Conversions: segmentation 0 → 255 (ignored) and 1..40 → 0..39; edge ÷ 255, binarised at 0.5; normals as above
(the pipeline's :class:`~pamm.data.transforms.AddIgnoreRegions` marks zero vectors invalid, as for PASCAL).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pamm.data.dataset import FileSpec, Layout, MultiTaskDataset, decoded_array
from pamm.data.io import check_range, read_depth_npy, read_label_png, read_rgb_image
from pamm.tasks import IGNORE_INDEX, dataset_spec

NUM_SEMSEG_CLASSES = dataset_spec("nyud").num_outputs["semseg"]


def decode_normals_png(values: np.ndarray) -> np.ndarray:
    """uint8 RGB normals (H, W, 3) → float32 (H, W, 3) in [-1, 1]: ``2 · v / 255 − 1``."""
    return (2.0 * values.astype(np.float32) / 255.0 - 1.0).astype(np.float32)


def _decode(kind: str, path: Path) -> np.ndarray:
    """Read and validate one NYUD file (see the module docstring for formats)."""
    if kind == "image":
        return read_rgb_image(path)
    if kind == "semseg":
        labels = read_label_png(path, "segmentation (0 = void, 1..40 = classes)")
        check_range(labels, path, f"0..{NUM_SEMSEG_CLASSES} (0 = void)", labels <= NUM_SEMSEG_CLASSES)
        return np.where(labels == 0, IGNORE_INDEX, labels.astype(np.int64) - 1)
    if kind == "depth":
        return read_depth_npy(path)
    if kind == "normals":
        return decode_normals_png(read_label_png(path, "surface normals (RGB = 255 · (n + 1) / 2)", channels=3))
    if kind == "edge":
        edges = read_label_png(path, "boundary map (0 / 255)")
        check_range(edges, path, "0..255", edges <= 255)
        return (edges.astype(np.float32) / 255.0 >= 0.5).astype(np.float32)
    raise KeyError(kind)


def _assemble(decoded: dict[str, np.ndarray | None], tasks: tuple[str, ...]) -> dict[str, torch.Tensor]:
    sample = {}
    for task in tasks:
        array = decoded_array(decoded, task)
        if task == "semseg":
            sample[task] = torch.from_numpy(array.astype(np.int64))
        elif task == "normals":
            sample[task] = torch.from_numpy(array).permute(2, 0, 1).contiguous()
        else:  # depth, edge: (H, W) float → (1, H, W)
            sample[task] = torch.from_numpy(array)[None]
    return sample


NYUD_LAYOUT = Layout(
    name="nyud",
    split_folder="gt_sets",
    files={
        "image": FileSpec(("images",), ".png", "an RGB image"),
        "semseg": FileSpec(("segmentation",), ".png", "a segmentation PNG"),
        "depth": FileSpec(("depth",), ".npy", "a depth .npy in metres"),
        "normals": FileSpec(("normals",), ".png", "a surface-normal PNG"),
        "edge": FileSpec(("edge",), ".png", "a boundary PNG"),
    },
    task_files={"semseg": ("semseg",), "depth": ("depth",), "normals": ("normals",), "edge": ("edge",)},
    decode=_decode,
    assemble=_assemble,
    probes={
        "image": ("rgb", "RGB input image"),
        "normals": ("label3", "surface normals (RGB = 255 · (n + 1) / 2)"),
        "edge": ("label", "boundary map (0 / 255)"),
    },
)


class NYUDv2(MultiTaskDataset):
    """NYUD-v2 split (tasks semseg, depth, normals, edge). See :class:`pamm.data.dataset.MultiTaskDataset`."""

    layout = NYUD_LAYOUT
