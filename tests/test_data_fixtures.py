"""Tiny NYUD-v2 / PASCAL-Context datasets written in the real file formats, for the data tests.

Images are 16 × 24. Every writer returns the arrays it wrote so tests can compare against them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

HEIGHT, WIDTH = 16, 24
NYUD_SPLITS = {"train": ["0001", "0002", "0003"], "val": ["0004", "0005"]}
PASCAL_SPLITS = {"train": ["2008_000001", "2008_000002", "2008_000003"], "val": ["2008_000004"]}
NORMALS_VALID_CLASS = 3  # "air conditioner": distilled normals trusted
NORMALS_INVALID_CLASS = 2  # "aeroplane": not trusted


def write_png(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path, format="PNG")


def write_split(path: Path, ids: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{image_id}\n" for image_id in ids))


def random_rgb(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)


def unit_normals_png(rng: np.random.Generator) -> np.ndarray:
    normals = rng.normal(size=(HEIGHT, WIDTH, 3))
    normals[..., 2] = np.abs(normals[..., 2]) + 0.5
    normals /= np.linalg.norm(normals, axis=2, keepdims=True)
    return np.rint((normals + 1.0) * 127.5).astype(np.uint8)


def write_nyud(root: Path, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """NYUD layout: images, segmentation (0..40), depth .npy (metres, some 0), normals, edge (0/255)."""
    rng = np.random.default_rng(seed)
    written = {}
    for split, ids in NYUD_SPLITS.items():
        write_split(root / "gt_sets" / f"{split}.txt", ids)
        for image_id in ids:
            segmentation = rng.integers(0, 41, (HEIGHT, WIDTH), dtype=np.uint8)
            segmentation[0, 0], segmentation[0, 1] = 0, 40
            depth = rng.uniform(0.5, 9.0, (HEIGHT, WIDTH)).astype(np.float32)
            depth[:3, :3] = 0.0
            edge = np.where(rng.random((HEIGHT, WIDTH)) < 0.2, 255, 0).astype(np.uint8)
            arrays = {"image": random_rgb(rng), "semseg": segmentation, "depth": depth,
                      "normals": unit_normals_png(rng), "edge": edge}  # fmt: skip
            write_png(root / "images" / f"{image_id}.png", arrays["image"])
            write_png(root / "segmentation" / f"{image_id}.png", segmentation)
            (root / "depth").mkdir(parents=True, exist_ok=True)
            np.save(root / "depth" / f"{image_id}.npy", depth)
            write_png(root / "normals" / f"{image_id}.png", arrays["normals"])
            write_png(root / "edge" / f"{image_id}.png", edge)
            written[image_id] = arrays
    return written


def part_annotation(objects: list[tuple[int, np.ndarray, list[tuple[str, np.ndarray]]]]) -> dict:
    """A PASCAL-Part ``anno`` struct: objects given as (class_ind, mask, [(part_name, mask), ...])."""
    object_dtype = [("class", "O"), ("class_ind", "O"), ("mask", "O"), ("parts", "O")]
    table = np.zeros((1, len(objects)), dtype=object_dtype)
    for index, (class_index, mask, parts) in enumerate(objects):
        part_table = np.zeros((1, len(parts)), dtype=[("part_name", "O"), ("mask", "O")])
        for part_index, (name, part_mask) in enumerate(parts):
            part_table[0, part_index] = (name, part_mask.astype(np.uint8))
        table[0, index] = ("person" if class_index == 15 else "dog", class_index, mask.astype(np.uint8),
                           part_table if parts else np.zeros((0, 0)))  # fmt: skip
    anno = np.zeros((1, 1), dtype=[("imname", "O"), ("objects", "O")])
    anno[0, 0] = ("image", table)
    return {"anno": anno}


def box(top: int, left: int, height: int, width: int) -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[top : top + height, left : left + width] = True
    return mask


def write_pascal(root: Path, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """PASCAL-Context layout. Image 1: person with parts (semseg in VOC12); image 2: person without parts
    (semseg in pascal-context); image 3: dog only; image 4: no objects. LabelMap: left half a normals-valid class,
    right half a normals-invalid class."""
    rng = np.random.default_rng(seed)
    annotations = {
        "2008_000001": [
            (15, box(2, 2, 12, 8), [("head", box(2, 2, 3, 8)), ("torso", box(5, 2, 4, 8)),
                                    ("llarm", box(9, 2, 2, 4)), ("rfoot", box(11, 2, 3, 8))]),
            (12, box(2, 14, 5, 5), []),
        ],
        "2008_000002": [(15, box(0, 0, 8, 8), [])],
        "2008_000003": [(12, box(4, 4, 4, 4), [])],
        "2008_000004": [],
    }  # fmt: skip
    written = {}
    for split, ids in PASCAL_SPLITS.items():
        write_split(root / "ImageSets" / "Context" / f"{split}.txt", ids)
        for number, image_id in enumerate(ids):
            image = random_rgb(rng)
            semseg = rng.integers(0, 21, (HEIGHT, WIDTH), dtype=np.uint8)
            semseg[0, :4] = 255
            label_map = np.full((HEIGHT, WIDTH), NORMALS_VALID_CLASS, dtype=np.uint16)
            label_map[:, WIDTH // 2 :] = NORMALS_INVALID_CLASS
            saliency = rng.integers(0, 256, (HEIGHT, WIDTH), dtype=np.uint8)
            saliency[0, 0], saliency[0, 1] = 127, 128
            normals = unit_normals_png(rng)
            (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
            semseg_folder = "VOC12" if number % 2 == 0 else "pascal-context"
            write_png(root / "semseg" / semseg_folder / f"{image_id}.png", semseg)
            (root / "pascal-context" / "trainval").mkdir(parents=True, exist_ok=True)
            scipy.io.savemat(root / "pascal-context" / "trainval" / f"{image_id}.mat", {"LabelMap": label_map})
            (root / "human_parts").mkdir(parents=True, exist_ok=True)
            scipy.io.savemat(root / "human_parts" / f"{image_id}.mat", part_annotation(annotations[image_id]))
            write_png(root / "normals_distill" / f"{image_id}.png", normals)
            write_png(root / "sal_distill" / f"{image_id}.png", saliency)
            written[image_id] = {"image": image, "semseg": semseg, "label_map": label_map, "sal": saliency,
                                 "normals": normals}  # fmt: skip
    return written


@pytest.fixture
def nyud_root(tmp_path: Path) -> Path:
    root = tmp_path / "NYUDv2"
    write_nyud(root)
    return root


@pytest.fixture
def pascal_root(tmp_path: Path) -> Path:
    root = tmp_path / "PASCALContext"
    write_pascal(root)
    return root
