"""PASCAL-Context (multi-task version of MTI-Net / ATRC) in its released layout (reference notes §5).

::

    PASCALContext/
      ImageSets/Context/{train,val}.txt     image ids (4998 / 5105)
      JPEGImages/<id>.jpg                   RGB image
      semseg/VOC12/<id>.png                 single channel 0..20, 255 = ignore ...
      semseg/pascal-context/<id>.png        ... or here when not in VOC12
      pascal-context/trainval/<id>.mat      variable ``LabelMap``: PASCAL-Context class of each pixel (0..459)
      human_parts/<id>.mat                  PASCAL-Part annotation ``anno`` (objects with part masks)
      normals_distill/<id>.png              RGB, normal = 2 · v / 255 − 1 (distilled; trusted on some classes only)
      sal_distill/<id>.png                  single channel 0..255 (distilled saliency)

Derived targets, as the authors' loader:

* edge: pixels where the 4-neighbour Laplacian of ``LabelMap`` (reflect-101 borders) is non-zero, thinned to one
  pixel (:func:`thin`);
* human_parts: union over person objects (class 15) that have parts, each part mapped to 6 groups (head, torso,
  upper arm, lower arm, upper leg, lower leg) by :data:`HUMAN_PART_GROUPS`, later parts overwriting earlier ones;
  0 = background. An image with no such person gives ``None``, i.e. an all-255 map;
* normals: decoded normals kept where ``LabelMap`` is one of :data:`NORMALS_VALID_CLASSES`, zero (invalid)
  elsewhere;
* sal: ``png / 255 > 0.5``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from pamm.data.dataset import FileSpec, Layout, MultiTaskDataset, decoded_array
from pamm.data.io import DatasetError, check_range, fail, read_label_png, read_mat, read_rgb_image
from pamm.data.nyud import decode_normals_png
from pamm.tasks import IGNORE_INDEX, dataset_spec

NUM_SEMSEG_CLASSES = dataset_spec("pascal").num_outputs["semseg"]

PERSON_CLASS = 15
"""PASCAL VOC class index of "person" in the PASCAL-Part annotations."""

_PART_NAMES_BY_GROUP = {
    1: ("hair", "head", "lear", "lebrow", "leye", "mouth", "nose", "rear", "rebrow", "reye"),
    2: ("neck", "torso"),
    3: ("luarm", "ruarm"),
    4: ("lhand", "llarm", "rhand", "rlarm"),
    5: ("luleg", "ruleg"),
    6: ("lfoot", "llleg", "rfoot", "rlleg"),
}
HUMAN_PART_GROUPS: dict[str, int] = {name: group for group, names in _PART_NAMES_BY_GROUP.items() for name in names}
"""PASCAL-Part person part name → human_parts label (1 head, 2 torso, 3 upper arm, 4 lower arm, 5 upper leg,
6 lower leg), the 6-part grouping of the benchmark."""

NORMALS_VALID_CLASSES = frozenset(
    [3, 4, 6, 9, 10, 11, 13, 15, 17, 18, 22, 23, 29, 30, 33, 34, 36, 37, 38, 39, 41, 43, 46, 49, 50, 51, 53, 55, 56,
     59, 61, 62, 65, 66, 68, 69, 72, 73, 78, 83, 84, 85, 87, 88, 95, 96, 101, 104, 105, 107, 111, 113, 115, 122,
     124, 135, 141, 142, 143, 146, 150, 154, 157, 158, 159, 165, 172, 174, 181, 183, 184, 191, 193, 195, 197, 199,
     202, 213, 215, 216, 219, 220, 223, 225, 228, 230, 232, 233, 238, 239, 242, 243, 246, 250, 251, 252, 255, 260,
     261, 263, 269, 272, 273, 275, 281, 283, 284, 285, 286, 287, 288, 290, 291, 292, 293, 295, 304, 307, 309, 310,
     314, 315, 319, 323, 329, 330, 331, 336, 342, 345, 349, 350, 351, 352, 355, 357, 368, 370, 371, 374, 379, 380,
     383, 384, 397, 401, 403, 405, 407, 408, 411, 412, 413, 414, 417, 419, 421, 423, 427, 429, 430, 432, 440, 441,
     442, 443, 444, 446, 454, 457]
)  # fmt: skip
"""PASCAL-Context classes (``LabelMap`` values) on which the distilled normals are trusted: the 170 classes whose
name also appears among the NYUD-v2 object names (``unknown`` excluded), plus ``tvmonitor`` (the authors' list,
derived from their ``db_info`` class tables)."""


def _neighbour_code_tables() -> tuple[np.ndarray, np.ndarray]:
    """Deletion tables of the two sub-iterations of Guo & Hall's thinning (algorithm A1 in Lam, Lee & Suen 1992).

    A pixel's 8 neighbours x1..x8 (east, then counter-clockwise: NE, N, NW, W, SW, S, SE) are packed into the
    bits 0..7 of a code; ``table[code]`` says whether a foreground pixel with that neighbourhood is deleted.
    """
    codes = np.arange(256)
    x = [(codes >> bit) & 1 == 1 for bit in range(8)]  # x[0] = x1 ... x[7] = x8

    def at(i: int) -> np.ndarray:  # x_i, 1-based and cyclic
        return x[(i - 1) % 8]

    crossing = sum((~at(2 * i - 1)) & (at(2 * i) | at(2 * i + 1)) for i in range(1, 5))
    n1 = sum(at(2 * k - 1) | at(2 * k) for k in range(1, 5))
    n2 = sum(at(2 * k) | at(2 * k + 1) for k in range(1, 5))
    keeps_topology = (crossing == 1) & (np.minimum(n1, n2) >= 2) & (np.minimum(n1, n2) <= 3)
    first = keeps_topology & ~((at(2) | at(3) | ~at(8)) & at(1))
    second = keeps_topology & ~((at(6) | at(7) | ~at(4)) & at(5))
    return first, second


_THINNING_TABLES = _neighbour_code_tables()
_NEIGHBOUR_WEIGHTS = np.array([[8, 4, 2], [16, 0, 1], [32, 64, 128]])  # bit of each neighbour, see above


def thin(mask: np.ndarray) -> np.ndarray:
    """Thin a binary mask (H, W) to one-pixel-wide, 8-connected curves (Guo & Hall; same as MATLAB
    ``bwmorph(mask, 'thin', Inf)`` and scikit-image's ``thin``). Pixels outside the image count as background."""
    skeleton = np.asarray(mask, dtype=bool).copy()
    while True:
        removed = 0
        for table in _THINNING_TABLES:
            codes = ndimage.correlate(skeleton.astype(np.uint8), _NEIGHBOUR_WEIGHTS, mode="constant", cval=0)
            delete = skeleton & table[codes]
            removed += int(delete.sum())
            skeleton[delete] = False
        if removed == 0:
            return skeleton


def label_boundaries(label_map: np.ndarray) -> np.ndarray:
    """Boundaries of a label map (H, W) → bool (H, W): non-zero 4-neighbour Laplacian (borders reflected without
    repeating the edge pixel), thinned by :func:`thin`."""
    padded = np.pad(label_map.astype(np.float64), 1, mode="reflect")
    laplacian = padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:] - 4.0 * padded[1:-1, 1:-1]
    return thin(laplacian != 0)


def read_human_parts(path: Path) -> np.ndarray | None:
    """Parse a PASCAL-Part annotation into human_parts labels int64 (H, W), or ``None`` if no person has parts.

    Structure, as scipy loads it (struct fields read by position, in stored order): ``anno[0, 0]`` = (imname,
    objects); ``objects[0, i]`` = (class, class_ind, mask, parts); ``parts[0, j]`` = (part_name, mask).
    """
    anno = read_mat(path, "anno", "PASCAL-Part annotation")
    try:
        objects = anno[0, 0][1]
        objects = objects[0] if objects.size else []
        target = None
        for obj in objects:
            class_index = int(np.asarray(obj[1]).reshape(-1)[0])
            parts = obj[3]
            if class_index != PERSON_CLASS or parts.size == 0:
                continue
            object_mask = np.asarray(obj[2])
            if target is None:
                target = np.zeros(object_mask.shape, dtype=np.int64)
            for part in parts[0]:
                name = str(np.asarray(part[0]).reshape(-1)[0])
                if name not in HUMAN_PART_GROUPS:
                    raise fail(path, f"unknown person part {name!r}; expected one of {sorted(HUMAN_PART_GROUPS)}")
                part_mask = np.asarray(part[1]).astype(bool)
                if part_mask.shape != target.shape:
                    raise fail(path, f"part mask of size {part_mask.shape} in an annotation of size {target.shape}")
                target[part_mask] = HUMAN_PART_GROUPS[name]
    except DatasetError:
        raise
    except (IndexError, TypeError, ValueError, KeyError) as err:
        raise fail(
            path,
            f"unexpected annotation structure ({type(err).__name__}: {err}); expected PASCAL-Part "
            "anno(imname, objects(class, class_ind, mask, parts(part_name, mask)))",
        ) from None
    return target


def _read_label_map(path: Path) -> np.ndarray:
    label_map = read_mat(path, "LabelMap", "PASCAL-Context label map")
    if label_map.ndim != 2 or not np.issubdtype(label_map.dtype, np.number):
        raise fail(path, f"LabelMap of shape {label_map.shape} and dtype {label_map.dtype}; expected a 2-D class map")
    if not np.array_equal(label_map, np.round(label_map)) or (label_map < 0).any():
        raise fail(path, "LabelMap holds negative or fractional values; expected class indices ≥ 0")
    return label_map.astype(np.int64)


def _decode(kind: str, path: Path) -> np.ndarray | None:
    """Read and validate one PASCAL-Context file (see the module docstring for formats)."""
    if kind == "image":
        return read_rgb_image(path)
    if kind == "semseg":
        labels = read_label_png(path, "segmentation (0..20, 255 = ignore)")
        valid = (labels < NUM_SEMSEG_CLASSES) | (labels == IGNORE_INDEX)
        check_range(labels, path, f"0..{NUM_SEMSEG_CLASSES - 1} or {IGNORE_INDEX}", valid)
        return labels.astype(np.int64)
    if kind == "label_map":
        return _read_label_map(path)
    if kind == "human_parts":
        return read_human_parts(path)
    if kind == "normals":
        return decode_normals_png(read_label_png(path, "distilled surface normals", channels=3))
    if kind == "sal":
        saliency = read_label_png(path, "distilled saliency (0..255)")
        check_range(saliency, path, "0..255", saliency <= 255)
        return (saliency.astype(np.float32) / 255.0 > 0.5).astype(np.int64)
    raise KeyError(kind)


def _assemble(decoded: dict[str, np.ndarray | None], tasks: tuple[str, ...]) -> dict[str, torch.Tensor]:
    height, width = decoded_array(decoded, "image").shape[:2]
    sample = {}
    for task in tasks:
        if task == "edge":
            label_map = decoded_array(decoded, "label_map")
            sample[task] = torch.from_numpy(label_boundaries(label_map).astype(np.float32))[None]
        elif task == "normals":
            valid = np.isin(decoded_array(decoded, "label_map"), list(NORMALS_VALID_CLASSES))
            normals = np.where(valid[:, :, None], decoded_array(decoded, "normals"), 0.0).astype(np.float32)
            sample[task] = torch.from_numpy(normals).permute(2, 0, 1).contiguous()
        elif task == "human_parts" and decoded["human_parts"] is None:
            sample[task] = torch.full((height, width), IGNORE_INDEX, dtype=torch.int64)
        else:  # semseg, human_parts, sal: int64 (H, W)
            sample[task] = torch.from_numpy(decoded_array(decoded, task))
    return sample


PASCAL_LAYOUT = Layout(
    name="pascal",
    split_folder="ImageSets/Context",
    files={
        "image": FileSpec(("JPEGImages",), ".jpg", "an RGB image"),
        "semseg": FileSpec(("semseg/VOC12", "semseg/pascal-context"), ".png", "a segmentation PNG"),
        "label_map": FileSpec(("pascal-context/trainval",), ".mat", "a .mat with the PASCAL-Context LabelMap"),
        "human_parts": FileSpec(("human_parts",), ".mat", "a PASCAL-Part annotation .mat"),
        "normals": FileSpec(("normals_distill",), ".png", "a distilled surface-normal PNG"),
        "sal": FileSpec(("sal_distill",), ".png", "a distilled saliency PNG"),
    },
    task_files={
        "semseg": ("semseg",),
        "human_parts": ("human_parts",),
        "sal": ("sal",),
        "normals": ("normals", "label_map"),
        "edge": ("label_map",),
    },
    decode=_decode,
    assemble=_assemble,
    probes={
        "image": ("rgb", "RGB input image"),
        "normals": ("label3", "distilled surface normals"),
        "sal": ("label", "distilled saliency (0..255)"),
    },
)


class PascalContext(MultiTaskDataset):
    """PASCAL-Context split (tasks semseg, human_parts, sal, normals, edge).

    See :class:`pamm.data.dataset.MultiTaskDataset`.
    """

    layout = PASCAL_LAYOUT
