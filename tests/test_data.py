"""Loaders of NYUD-v2 and PASCAL-Context on tiny datasets written in the real formats."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image
from torch.utils.data import DataLoader

from pamm.data import DatasetError, NYUDv2, PascalContext, build_dataset, build_transforms, collate
from pamm.data.pascal import HUMAN_PART_GROUPS, label_boundaries, thin
from pamm.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from pamm.tasks import IGNORE_INDEX, dataset_spec
from test_data_fixtures import (
    HEIGHT,
    WIDTH,
    box,
    part_annotation,
    write_nyud,
    write_pascal,
    write_png,
)

pytest_plugins = ["test_data_fixtures"]  # the nyud_root / pascal_root fixtures


def denormalise(image: torch.Tensor) -> np.ndarray:
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((image * std + mean) * 255).round().permute(1, 2, 0).numpy().astype(np.int64)


# --- NYUD ---------------------------------------------------------------------------------------------------------


def test_nyud_sample_matches_files_and_conventions(tmp_path):
    written = write_nyud(tmp_path)
    dataset = NYUDv2(tmp_path, "train")
    assert len(dataset) == 3 and dataset.tasks == dataset_spec("nyud").tasks
    sample = dataset[0]
    files = written["0001"]

    assert sample["image"].dtype == torch.float32 and sample["image"].shape == (3, HEIGHT, WIDTH)
    np.testing.assert_array_equal(denormalise(sample["image"]), files["image"])

    semseg = sample["semseg"]
    assert semseg.dtype == torch.int64 and semseg.shape == (HEIGHT, WIDTH)
    expected = np.where(files["semseg"] == 0, IGNORE_INDEX, files["semseg"].astype(np.int64) - 1)
    np.testing.assert_array_equal(semseg.numpy(), expected)
    assert semseg[0, 0] == IGNORE_INDEX and semseg[0, 1] == 39

    assert sample["depth"].shape == (1, HEIGHT, WIDTH) and sample["depth"].dtype == torch.float32
    np.testing.assert_array_equal(sample["depth"][0].numpy(), files["depth"])

    normals = sample["normals"]
    np.testing.assert_allclose(
        normals.permute(1, 2, 0).numpy(), 2 * files["normals"].astype(np.float64) / 255.0 - 1, atol=1e-6
    )
    assert torch.allclose(normals.norm(dim=0), torch.ones(HEIGHT, WIDTH), atol=0.02)

    np.testing.assert_array_equal(sample["edge"][0].numpy(), files["edge"] / 255.0)
    assert sample["meta"] == {"id": "0001", "size": (HEIGHT, WIDTH), "valid": (0, 0, HEIGHT, WIDTH)}


def test_task_subset_loads_and_requires_only_its_files(nyud_root):
    shutil.rmtree(nyud_root / "depth")
    with pytest.raises(DatasetError, match="depth"):
        NYUDv2(nyud_root, "val")
    sample = build_dataset("nyud", nyud_root, "val", tasks=["semseg", "edge"])[1]
    assert set(sample) == {"image", "semseg", "edge", "meta"}
    with pytest.raises(ValueError, match="human_parts"):
        NYUDv2(nyud_root, "val", tasks=["human_parts"])
    with pytest.raises(ValueError, match="unknown dataset"):
        build_dataset("cityscapes", nyud_root, "val")


# --- PASCAL -------------------------------------------------------------------------------------------------------


def test_pascal_sample_matches_files_and_conventions(tmp_path):
    written = write_pascal(tmp_path)
    dataset = PascalContext(tmp_path, "train")
    sample = dataset[0]
    files = written["2008_000001"]

    jpeg = np.asarray(Image.open(tmp_path / "JPEGImages" / "2008_000001.jpg"))
    np.testing.assert_array_equal(denormalise(sample["image"]), jpeg)
    np.testing.assert_array_equal(sample["semseg"].numpy(), files["semseg"])
    # Saliency binarised at 0.5 of png / 255: 127 → 0, 128 → 1.
    np.testing.assert_array_equal(sample["sal"].numpy(), (files["sal"] / 255.0 > 0.5).astype(np.int64))
    assert sample["sal"][0, 0] == 0 and sample["sal"][0, 1] == 1

    # Normals kept on the valid class (left half), invalid (255 in all channels) on the other.
    left, right = sample["normals"][:, :, : WIDTH // 2], sample["normals"][:, :, WIDTH // 2 :]
    decoded = torch.from_numpy(2 * files["normals"].astype(np.float64) / 255.0 - 1).permute(2, 0, 1).float()
    assert torch.allclose(left, decoded[:, :, : WIDTH // 2], atol=1e-6)
    assert (right == IGNORE_INDEX).all()

    # Edge: the class boundary between the halves, thinned to one column.
    edge = sample["edge"][0]
    assert set(edge.unique().tolist()) <= {0.0, 1.0}
    columns = edge.nonzero()[:, 1].unique().tolist()
    assert columns == [WIDTH // 2 - 1]
    assert edge.sum() >= HEIGHT - 2


def test_pascal_semseg_found_in_either_folder(pascal_root):
    dataset = PascalContext(pascal_root, "train", tasks=["semseg"])
    assert [path["semseg"].parent.name for path in dataset.paths] == ["VOC12", "pascal-context", "VOC12"]
    assert all(dataset[i]["semseg"].shape == (HEIGHT, WIDTH) for i in range(3))
    shutil.rmtree(pascal_root / "semseg" / "VOC12")
    with pytest.raises(DatasetError, match="VOC12/2008_000001.png or .*pascal-context/2008_000001.png: missing file"):
        PascalContext(pascal_root, "train", tasks=["semseg"])
    shutil.rmtree(pascal_root / "semseg")
    with pytest.raises(DatasetError, match=r"VOC12: missing folder .*; or in .*semseg/pascal-context\)"):
        PascalContext(pascal_root, "train", tasks=["semseg"])


def test_pascal_human_parts_six_part_mapping(pascal_root):
    dataset = PascalContext(pascal_root, "train", tasks=["human_parts"])
    parts = dataset[0]["human_parts"]
    expected = np.zeros((HEIGHT, WIDTH), dtype=np.int64)
    for name, (top, left, height, width) in [
        ("head", (2, 2, 3, 8)), ("torso", (5, 2, 4, 8)), ("llarm", (9, 2, 2, 4)), ("rfoot", (11, 2, 3, 8))
    ]:  # fmt: skip
        expected[top : top + height, left : left + width] = HUMAN_PART_GROUPS[name]
    np.testing.assert_array_equal(parts.numpy(), expected)
    assert HUMAN_PART_GROUPS["head"] == 1 and HUMAN_PART_GROUPS["llarm"] == 4 and HUMAN_PART_GROUPS["rfoot"] == 6
    # Person without parts, dog only: no human-part annotation → all ignored.
    assert (dataset[1]["human_parts"] == IGNORE_INDEX).all()
    assert (dataset[2]["human_parts"] == IGNORE_INDEX).all()
    # An image with no objects at all.
    assert (PascalContext(pascal_root, "val", tasks=["human_parts"])[0]["human_parts"] == IGNORE_INDEX).all()


def test_unknown_part_name_is_reported(pascal_root):
    path = pascal_root / "human_parts" / "2008_000001.mat"
    scipy.io.savemat(path, part_annotation([(15, box(0, 0, 4, 4), [("tail", box(0, 0, 2, 2))])]))
    with pytest.raises(DatasetError, match="unknown person part 'tail'") as err:
        PascalContext(pascal_root, "train", tasks=["human_parts"])[0]
    assert str(path) in str(err.value)


def test_thin_reduces_bars_to_single_pixel_lines():
    mask = np.zeros((12, 40), dtype=bool)
    mask[3:8, 2:38] = True  # a 5-pixel-thick horizontal bar
    skeleton = thin(mask)
    assert not (skeleton & ~mask).any()
    assert (skeleton[:, 8:32].sum(axis=0) == 1).all()
    np.testing.assert_array_equal(thin(skeleton), skeleton)
    lone = np.zeros((5, 5), dtype=bool)
    lone[2, 2] = True
    np.testing.assert_array_equal(thin(lone), lone)


def test_label_boundaries_are_non_zero_laplacian_thinned():
    labels = np.zeros((10, 10), dtype=np.uint16)
    labels[:, 5:] = 7
    boundaries = label_boundaries(labels)
    assert boundaries[:, 4].sum() >= 8 and boundaries.sum() == boundaries[:, 4].sum()
    # The Laplacian of 1, 2, 3 stripes vanishes on the middle stripe: only the outer steps are boundaries.
    ramp = np.repeat(np.array([[1, 1, 1, 2, 3, 3, 3]], dtype=np.uint16), 6, axis=0)
    assert not label_boundaries(ramp)[:, 3].any()
    assert not label_boundaries(np.full((6, 6), 4)).any()


# --- collate, workers, seeding --------------------------------------------------------------------------------------


def test_collate_stacks_tensors_and_lists_meta(nyud_root):
    dataset = NYUDv2(nyud_root, "train", transform=build_transforms(False, (16, 32)))
    batch = collate([dataset[0], dataset[1]])
    assert batch["image"].shape == (2, 3, 16, 32) and batch["semseg"].shape == (2, 16, 32)
    assert batch["depth"].shape == (2, 1, 16, 32) and batch["normals"].shape == (2, 3, 16, 32)
    assert [meta["id"] for meta in batch["meta"]] == ["0001", "0002"]
    assert batch["meta"][0]["valid"] == (0, 4, HEIGHT, WIDTH)
    with pytest.raises(ValueError, match="shapes"):
        collate([dataset[0], NYUDv2(nyud_root, "train")[1]])


def test_worker_error_keeps_type_and_message(nyud_root):
    bad = nyud_root / "images" / "0002.png"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated PNG
    batches = iter(DataLoader(NYUDv2(nyud_root, "train"), batch_size=1, num_workers=1, collate_fn=collate))
    try:
        with pytest.raises(DatasetError) as err:
            list(batches)
    finally:
        batches._shutdown_workers()  # else the worker is joined with a 5 s timeout when garbage-collected
    assert str(bad) in str(err.value) and "truncated" in str(err.value)


# --- errors ----------------------------------------------------------------------------------------------------------


def test_construction_errors_name_the_missing_path(nyud_root, tmp_path):
    with pytest.raises(DatasetError, match="dataset root"):
        NYUDv2(tmp_path / "nowhere", "train")
    with pytest.raises(DatasetError, match=r"test\.txt.*missing split file.*\['train', 'val'\]"):
        NYUDv2(nyud_root, "test")
    (nyud_root / "normals" / "0002.png").unlink()
    (nyud_root / "gt_sets" / "train.txt").write_text("0001\n0002\n\n0003\nghost\n")
    with pytest.raises(DatasetError) as err:
        NYUDv2(nyud_root, "train")
    message = str(err.value)
    assert str(nyud_root / "normals" / "0002.png") in message
    assert str(nyud_root / "images" / "ghost.png") in message and "'ghost'" in message
    assert message.startswith("6 file(s)")
    shutil.rmtree(nyud_root / "edge")
    with pytest.raises(DatasetError, match=r"edge: missing folder \(expected a boundary PNG per image\)"):
        NYUDv2(nyud_root, "val")


def jpeg_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("relative", "corrupt", "expected"),
    [
        ("images/0001.png", lambda p: p.write_bytes(b""), "empty"),
        ("images/0001.png", lambda p: p.write_bytes(p.read_bytes()[:80]), "truncated"),
        ("images/0001.png", lambda p: p.write_bytes(b"not an image at all"), "not a readable image"),
        ("segmentation/0001.png", lambda p: p.write_bytes(jpeg_bytes(np.zeros((HEIGHT, WIDTH), np.uint8))),
         "JPEG data; expected a lossless PNG"),
        ("segmentation/0001.png", lambda p: write_png(p, np.full((HEIGHT, WIDTH), 41, np.uint8)),
         r"label values 41 out of range; expected 0\.\.40"),
        ("segmentation/0001.png", lambda p: write_png(p, np.zeros((HEIGHT, WIDTH, 3), np.uint8)),
         "expected a single-channel"),
        ("segmentation/0001.png", lambda p: write_png(p, np.zeros((HEIGHT + 1, WIDTH), np.uint8)),
         "size 17x24 differs from its image"),
        ("normals/0001.png", lambda p: write_png(p, np.zeros((HEIGHT, WIDTH), np.uint8)), "expected an 8-bit RGB"),
        ("depth/0001.npy", lambda p: np.save(p, -np.ones((HEIGHT, WIDTH), np.float32)), "negative values"),
        ("depth/0001.npy", lambda p: np.save(p, np.full((HEIGHT, WIDTH), np.nan, np.float32)), "non-finite"),
        ("depth/0001.npy", lambda p: p.write_bytes(b"\x93NUMPY garbage"), "unreadable .npy"),
    ],
)  # fmt: skip
def test_bad_nyud_files_raise_dataset_error_naming_the_file(nyud_root, relative, corrupt, expected):
    path = nyud_root / relative
    corrupt(path)
    dataset = NYUDv2(nyud_root, "train")
    with pytest.raises(DatasetError, match=expected) as err:
        dataset[0]
    assert isinstance(err.value, ValueError) and err.value.path == str(path) and str(path) in str(err.value)
    dataset[1]  # the other samples still load


@pytest.mark.parametrize(
    ("relative", "corrupt", "expected"),
    [
        ("semseg/VOC12/2008_000001.png", lambda p: write_png(p, np.full((HEIGHT, WIDTH), 30, np.uint8)),
         r"label values 30 out of range; expected 0\.\.20 or 255"),
        ("pascal-context/trainval/2008_000001.mat", lambda p: scipy.io.savemat(p, {"Labels": np.zeros((2, 2))}),
         "no variable 'LabelMap'"),
        ("pascal-context/trainval/2008_000001.mat", lambda p: p.write_bytes(b"MATLAB 5.0 junk" * 3),
         "unreadable .mat"),
        ("human_parts/2008_000001.mat", lambda p: scipy.io.savemat(p, {"anno": np.zeros((1, 1))}),
         "unexpected annotation structure"),
        ("sal_distill/2008_000001.png", lambda p: write_png(p, np.zeros((HEIGHT, WIDTH + 2), np.uint8)),
         "size 16x26 differs"),
    ],
)  # fmt: skip
def test_bad_pascal_files_raise_dataset_error_naming_the_file(pascal_root, relative, corrupt, expected):
    path = pascal_root / relative
    corrupt(path)
    with pytest.raises(DatasetError, match=expected) as err:
        PascalContext(pascal_root, "train")[0]
    assert str(path) in str(err.value)


def test_image_modes_are_converted_to_rgb(nyud_root):
    path = nyud_root / "images" / "0001.png"
    gray = np.arange(HEIGHT * WIDTH, dtype=np.uint8).reshape(HEIGHT, WIDTH)
    rgb = np.stack([gray, 255 - gray, gray // 2], axis=2)
    dataset = NYUDv2(nyud_root, "train", tasks=["depth"])

    def loaded() -> np.ndarray:
        return denormalise(dataset[0]["image"])

    write_png(path, gray)  # grayscale → replicated
    np.testing.assert_array_equal(loaded(), np.repeat(gray[:, :, None], 3, axis=2))
    write_png(path, np.dstack([rgb, np.full((HEIGHT, WIDTH), 7, np.uint8)]))  # RGBA → composited over white
    np.testing.assert_array_equal(loaded(), np.rint(rgb * (7 / 255) + 255 * (1 - 7 / 255)).astype(np.uint8))
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=256).save(path)  # palette → colours
    palette_rgb = np.asarray(Image.open(path).convert("RGB"))
    np.testing.assert_array_equal(loaded(), palette_rgb)
    sixteen = (gray.astype(np.uint16) * 257).astype(np.uint16)
    Image.fromarray(sixteen).save(path)  # 16-bit grayscale → scaled to 8 bits
    assert Image.open(path).mode.startswith("I")
    np.testing.assert_array_equal(loaded(), np.repeat(gray[:, :, None], 3, axis=2))
    path.write_bytes(jpeg_bytes(rgb))  # a JPEG named .png: accepted, decoded as JPEG
    np.testing.assert_array_equal(loaded(), np.asarray(Image.open(io.BytesIO(jpeg_bytes(rgb)))))
