"""Invariants of the training / test transforms (reference notes §3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pamm.data import NYUDv2, PascalContext, build_transforms, collate
from pamm.data.transforms import (
    AddIgnoreRegions,
    Normalize,
    PadCentered,
    PhotometricDistortion,
    RandomCrop,
    RandomHorizontalFlip,
    RandomScale,
    hsv_to_rgb,
    rgb_to_hsv,
)
from pamm.tasks import IGNORE_INDEX

pytest_plugins = ["test_data_fixtures"]  # the nyud_root / pascal_root fixtures


def raw_sample(height: int = 20, width: int = 30, seed: int = 0) -> dict:
    """A raw sample with every target kind, unit normals and distinct values."""
    gen = torch.Generator().manual_seed(seed)
    normals = torch.randn(3, height, width, generator=gen)
    normals = normals / normals.norm(dim=0, keepdim=True)
    return {
        "image": torch.randint(0, 256, (3, height, width), generator=gen).float(),
        "semseg": torch.randint(0, 21, (height, width), generator=gen),
        "human_parts": torch.randint(0, 7, (height, width), generator=gen),
        "sal": torch.randint(0, 2, (height, width), generator=gen),
        "depth": torch.rand(1, height, width, generator=gen) * 5 + 0.5,
        "normals": normals,
        "edge": (torch.rand(1, height, width, generator=gen) < 0.3).float(),
        "meta": {"id": "x", "size": (height, width), "valid": (0, 0, height, width)},
    }


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_flip_mirrors_everything_and_negates_normals_x():
    sample = raw_sample()
    flipped = RandomHorizontalFlip(p=1.0)(sample, rng())
    for key in ("image", "semseg", "human_parts", "sal", "depth", "edge"):
        assert torch.equal(flipped[key], sample[key].flip(-1))
    assert torch.equal(flipped["normals"][0], -sample["normals"][0].flip(-1))
    assert torch.equal(flipped["normals"][1:], sample["normals"][1:].flip(-1))
    assert RandomHorizontalFlip(p=0.0)(sample, rng()) is sample
    outcomes = [RandomHorizontalFlip(0.5)(sample, rng(seed)) is sample for seed in range(200)]
    assert 60 < sum(outcomes) < 140


def test_scale_divides_depth_by_the_factor_and_keeps_labels_integral():
    sample = raw_sample(20, 30)
    sample["depth"] = torch.full((1, 20, 30), 2.0)
    for seed in range(5):
        scale = rng(seed).uniform(0.5, 2.0)
        scaled = RandomScale((0.5, 2.0))(sample, rng(seed))
        size = (int(20 * scale), int(30 * scale))
        assert scaled["image"].shape == (3, *size) and scaled["semseg"].shape == size
        assert scaled["depth"].shape == (1, *size) and scaled["meta"]["valid"] == (0, 0, *size)
        assert torch.allclose(scaled["depth"], torch.full_like(scaled["depth"], 2.0 / scale))
        for key in ("semseg", "human_parts", "sal"):  # nearest: only existing values, integer dtype
            assert scaled[key].dtype == torch.int64
            assert set(scaled[key].unique().tolist()) <= set(sample[key].unique().tolist())
        assert set(scaled["edge"].unique().tolist()) <= {0.0, 1.0}
        assert torch.allclose(scaled["normals"].norm(dim=0), torch.ones(size), atol=1e-5)


def test_scale_image_is_bilinear():
    sample = raw_sample(4, 4)
    sample["image"] = torch.arange(4.0).repeat(3, 4, 1)  # horizontal ramp 0..3
    scaled = RandomScale((2.0, 2.0))(sample, rng())
    row = scaled["image"][0, 0]
    assert torch.allclose(row, torch.tensor([0.0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.0]))


def two_class_sample() -> dict:
    sample = raw_sample(40, 100)
    sample["semseg"] = torch.zeros(40, 100, dtype=torch.int64)
    sample["semseg"][:, 50:] = 1
    return sample


def class_ratio(semseg: torch.Tensor) -> float:
    _, counts = semseg[semseg != IGNORE_INDEX].unique(return_counts=True)
    return 1.0 if counts.numel() < 2 else (counts.max() / counts.sum()).item()


def test_crop_respects_cat_max_ratio_when_possible():
    sample = two_class_sample()
    with_ratio = [RandomCrop((40, 60), cat_max_ratio=0.75)(sample, rng(seed)) for seed in range(50)]
    without = [RandomCrop((40, 60), cat_max_ratio=1.0)(sample, rng(seed)) for seed in range(50)]
    assert all(crop["image"].shape == (3, 40, 60) for crop in with_ratio)
    assert all(class_ratio(crop["semseg"]) < 0.75 for crop in with_ratio)
    assert any(class_ratio(crop["semseg"]) >= 0.75 for crop in without)
    # Crops are consistent across keys: the semseg crop matches the image crop's position.
    crop = with_ratio[0]
    left = int((crop["semseg"] == 0).sum(dim=1)[0])  # columns of class 0 in the crop
    assert torch.equal(crop["image"][:, :, :left], sample["image"][:, :, 50 - left : 50])


def test_crop_gives_up_after_retries_and_keeps_small_sides():
    sample = raw_sample(10, 12)
    sample["semseg"].zero_()  # one class: no window is acceptable
    crop = RandomCrop((8, 20), cat_max_ratio=0.75)(sample, rng())
    assert crop["image"].shape == (3, 8, 12) and crop["meta"]["valid"] == (0, 0, 8, 12)


def test_pad_values_per_target_centered():
    sample = raw_sample(5, 7)
    padded = PadCentered((10, 12))(sample, rng())
    top, left = (10 - 5) // 2, (12 - 7) // 2
    assert padded["meta"]["valid"] == (top, left, 5, 7)
    inside = (slice(top, top + 5), slice(left, left + 7))
    border = torch.ones(10, 12, dtype=torch.bool)
    border[inside] = False
    expected_fill = {"image": 0, "semseg": 255, "human_parts": 255, "sal": 255, "edge": 255, "depth": 0, "normals": 0}
    for key, fill in expected_fill.items():
        value = padded[key]
        assert value.shape[-2:] == (10, 12) and value.dtype == sample[key].dtype
        assert torch.equal(value[..., inside[0], inside[1]], sample[key])
        assert (value[..., border] == fill).all(), key
    ignored = AddIgnoreRegions()(padded)  # zero normals in the padding become ignored
    assert (ignored["normals"][:, border] == IGNORE_INDEX).all()
    assert torch.equal(ignored["normals"][:, inside[0], inside[1]], sample["normals"])


def test_test_pipeline_pads_to_size_and_multiple():
    sample = raw_sample(16, 24)
    out = build_transforms(False, None, multiple=16)(sample, rng())
    assert out["image"].shape == (3, 16, 32) and out["meta"]["valid"] == (0, 4, 16, 24)
    out = build_transforms(False, (20, 30), multiple=16)(raw_sample(16, 24), rng())
    assert out["image"].shape == (3, 32, 32) and out["meta"]["valid"] == (8, 4, 16, 24)
    top, left, height, width = out["meta"]["valid"]
    expected = Normalize()(raw_sample(16, 24))["image"]
    assert torch.allclose(out["image"][:, top : top + height, left : left + width], expected)
    with pytest.raises(ValueError, match="multiple of 16"):
        build_transforms(True, (20, 30))


def test_train_pipeline_scale_range_is_configurable():
    """scale_range (1, 1) keeps every label where it was (only crop/pad/flip move pixels); the default rescales."""
    sample = raw_sample(32, 48)
    for seed in range(6):
        out = build_transforms(True, (32, 48), multiple=16, scale_range=(1.0, 1.0))(dict(sample), rng(seed))
        flipped = not torch.equal(out["semseg"], sample["semseg"])
        assert torch.equal(out["semseg"], sample["semseg"].flip(-1) if flipped else sample["semseg"])
        assert torch.equal(out["depth"], sample["depth"].flip(-1) if flipped else sample["depth"])
    assert "RandomScale((0.5, 2.0))" in repr(build_transforms(True, (32, 48)))


def test_normalize_uses_imagenet_statistics():
    sample = raw_sample(2, 2)
    sample["image"] = torch.full((3, 2, 2), 255.0)
    image = Normalize()(sample)["image"][:, 0, 0]
    assert torch.allclose(image, torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225]))


def test_add_ignore_regions():
    sample = raw_sample(4, 4)
    sample["normals"][:, 0, 0] = 0.0
    sample["human_parts"] = torch.zeros(4, 4, dtype=torch.int64)
    sample["human_parts"][0, 0] = IGNORE_INDEX
    out = AddIgnoreRegions()(sample)
    assert (out["normals"][:, 0, 0] == IGNORE_INDEX).all() and (out["normals"][:, 1:] != IGNORE_INDEX).all()
    assert (out["human_parts"] == IGNORE_INDEX).all()
    sample["human_parts"][1, 1] = 3
    assert torch.equal(AddIgnoreRegions()(sample)["human_parts"], sample["human_parts"])


def test_hsv_conversion_matches_opencv_convention():
    colours = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [128, 128, 128], [0, 0, 0], [255, 255, 0]]], np.uint8)
    expected = np.array([[[0, 255, 255], [60, 255, 255], [120, 255, 255], [0, 0, 128], [0, 0, 0], [30, 255, 255]]])
    np.testing.assert_array_equal(rgb_to_hsv(colours), expected)
    np.testing.assert_array_equal(hsv_to_rgb(expected.astype(np.uint8)), colours)
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    # Hue is stored in 2-degree steps: a channel moves by up to 255 · (1 / 60) = 4.25 levels, plus rounding.
    assert np.abs(hsv_to_rgb(rgb_to_hsv(image)).astype(int) - image).max() <= 5


def test_photometric_distortion_changes_only_the_image():
    sample = raw_sample(8, 8)
    changed = 0
    for seed in range(20):
        out = PhotometricDistortion()(sample, rng(seed))
        image = out["image"]
        assert image.shape == (3, 8, 8) and image.dtype == torch.float32
        assert image.min() >= 0 and image.max() <= 255 and torch.equal(image, image.round())
        assert all(torch.equal(out[key], sample[key]) for key in ("semseg", "depth", "normals"))
        assert torch.equal(image, PhotometricDistortion()(sample, rng(seed))["image"])
        changed += not torch.equal(image, sample["image"])
    assert changed >= 15  # all four steps skipped only with probability 1/16


def test_train_pipeline_shapes_and_label_integrity(pascal_root):
    dataset = PascalContext(pascal_root, "train", transform=build_transforms(True, (32, 48)), seed=3)
    for epoch in range(3):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            sample = dataset[index]
            raw = dataset.load_raw(index)
            assert sample["image"].shape == (3, 32, 48) and sample["normals"].shape == (3, 32, 48)
            for key in ("semseg", "human_parts", "sal"):
                assert sample[key].dtype == torch.int64 and sample[key].shape == (32, 48)
                assert set(sample[key].unique().tolist()) <= set(raw[key].unique().tolist()) | {IGNORE_INDEX}
            assert set(sample["edge"].unique().tolist()) <= {0.0, 1.0, 255.0}
            normals = sample["normals"]
            valid = (normals != IGNORE_INDEX).all(dim=0)
            assert ((normals == IGNORE_INDEX).all(dim=0) | valid).all()
            assert torch.allclose(normals[:, valid].norm(dim=0), torch.ones(int(valid.sum())), atol=0.02)
            top, left, height, width = sample["meta"]["valid"]
            outside = torch.ones(32, 48, dtype=torch.bool)
            outside[top : top + height, left : left + width] = False
            assert (sample["semseg"][outside] == IGNORE_INDEX).all()


def test_determinism_and_epochs(nyud_root):
    def epoch_batch(seed: int, epoch: int) -> torch.Tensor:
        dataset = NYUDv2(nyud_root, "train", transform=build_transforms(True, (16, 16)), seed=seed)
        dataset.set_epoch(epoch)
        return torch.stack([dataset[i]["image"] for i in range(len(dataset))])

    assert torch.equal(epoch_batch(0, 0), epoch_batch(0, 0))
    assert not torch.equal(epoch_batch(0, 0), epoch_batch(0, 1))
    assert not torch.equal(epoch_batch(0, 0), epoch_batch(1, 0))


def test_independent_of_worker_count(nyud_root):
    dataset = NYUDv2(nyud_root, "train", transform=build_transforms(True, (16, 16)), seed=7)
    dataset.set_epoch(2)

    def load(workers: int) -> list[dict]:
        return list(DataLoader(dataset, batch_size=2, num_workers=workers, collate_fn=collate))

    serial, parallel = load(0), load(2)
    assert len(serial) == len(parallel) == 2
    for a, b in zip(serial, parallel):
        assert a["meta"] == b["meta"]
        for key in ("image", "semseg", "depth", "normals", "edge"):
            assert torch.equal(a[key], b[key]), key
