"""Palettes, colour maps, legends, scale bars and prediction panels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pamm.models.meta import ModelMeta
from pamm.tasks import DATASETS
from pamm.viz import (
    IGNORE_RGB,
    colorize_depth,
    colorize_labels,
    colorize_maps,
    colorize_normals,
    colorize_probability,
    depth_range,
    distinct_palette,
    legend,
    make_panel,
    palette_for,
    scale_bar,
    turbo,
    voc_palette,
)


def _min_distance(colours: np.ndarray) -> float:
    c = colours.astype(np.float64)
    d = np.linalg.norm(c[:, None] - c[None], axis=-1)
    return float(d[~np.eye(len(c), dtype=bool)].min())


@pytest.mark.parametrize(
    "dataset, task, classes", [("nyud", "semseg", 40), ("pascal", "semseg", 21), ("pascal", "human_parts", 7)]
)
def test_palettes_are_deterministic_distinct_and_avoid_the_ignore_colour(dataset, task, classes):
    palette = palette_for(dataset, task)
    assert palette.shape == (classes, 3) and palette.dtype == np.uint8
    assert np.array_equal(palette, palette_for(dataset, task))
    assert len({tuple(c) for c in palette}) == classes and _min_distance(palette) >= 40
    assert not any(tuple(c) == IGNORE_RGB for c in palette)


def test_voc_palette_matches_the_standard_colours():
    voc = voc_palette(21)
    assert tuple(voc[0]) == (0, 0, 0) and tuple(voc[1]) == (128, 0, 0) and tuple(voc[15]) == (192, 128, 128)


def test_distinct_palette_stays_away_from_white_and_ignore():
    colours = distinct_palette(40).astype(np.float64)
    for avoid in ((255, 255, 255), IGNORE_RGB):
        assert np.linalg.norm(colours - np.array(avoid), axis=1).min() > 30


def test_turbo_runs_from_dark_through_green_to_dark_red():
    ends = turbo(np.array([0.0, 0.5, 1.0]))
    assert ends.shape == (3, 3) and (ends >= 0).all() and (ends <= 1).all()
    assert ends[0].sum() < 0.5  # dark blue-violet
    assert ends[1, 1] > 0.9 and ends[1, 1] > ends[1, 0] > ends[1, 2]  # green-yellow middle
    assert ends[2, 0] > 0.5 > ends[2, 1] + ends[2, 2]  # dark red
    assert np.array_equal(turbo(np.array([-3.0, 7.0])), turbo(np.array([0.0, 1.0])))  # clipped


def test_colorize_labels_uses_the_palette_and_marks_ignore():
    palette = palette_for("pascal", "semseg")
    labels = np.array([[0, 1], [15, 255]])
    rgb = colorize_labels(labels, palette)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 1]) == tuple(palette[1]) and tuple(rgb[1, 0]) == tuple(palette[15])
    assert tuple(rgb[1, 1]) == IGNORE_RGB
    assert np.array_equal(colorize_labels(torch.tensor(labels)[None], palette), rgb)  # (1, H, W) tensors too


def test_colorize_depth_maps_the_range_and_marks_missing():
    depth = np.array([[1.0, 3.0], [0.0, np.nan]])
    rgb = colorize_depth(depth, 1.0, 3.0)
    assert tuple(rgb[0, 0]) == tuple(np.rint(turbo(np.array(0.0)) * 255).astype(np.uint8))
    assert tuple(rgb[0, 1]) == tuple(np.rint(turbo(np.array(1.0)) * 255).astype(np.uint8))
    assert tuple(rgb[1, 0]) == IGNORE_RGB and tuple(rgb[1, 1]) == IGNORE_RGB
    assert tuple(colorize_depth(depth, 0.0, 3.0, zero_is_missing=False)[1, 0]) != IGNORE_RGB  # a clamped prediction
    assert depth_range(np.array([[2.0, 2.0]])) == pytest.approx((2.0, 2.001))
    assert depth_range(np.full((2, 2), np.nan)) == (0.0, 1.0)


def test_colorize_normals_and_probabilities():
    normals = np.zeros((1, 4, 3), dtype=np.float32)
    normals[0, 0] = (0, 0, 1)
    normals[0, 1] = (-1, 1, 0)
    normals[0, 2] = (255, 255, 255)  # ignore value of the ground truth
    rgb = colorize_normals(normals)
    assert tuple(rgb[0, 0]) == (128, 128, 255) and tuple(rgb[0, 1]) == (0, 255, 128)
    assert tuple(rgb[0, 2]) == IGNORE_RGB and tuple(rgb[0, 3]) == IGNORE_RGB  # zero vector: invalid
    assert np.array_equal(colorize_normals(normals.transpose(2, 0, 1)), rgb)  # channel-first accepted
    prob = colorize_probability(np.array([[0.0, 1.0, 255.0]]))
    assert tuple(prob[0, 0]) == (0, 0, 0) and tuple(prob[0, 1]) == (255, 255, 255) and tuple(prob[0, 2]) == IGNORE_RGB


def test_legend_and_scale_bar():
    names = DATASETS["nyud"].class_names["semseg"]
    small = legend([0, 1], names, palette_for("nyud", "semseg"), width=200)
    large = legend(list(range(40)), names, palette_for("nyud", "semseg"), width=200)
    assert small.size[0] == 200 and large.size[0] == 200 and large.size[1] > small.size[1]
    assert legend([], names, palette_for("nyud", "semseg"), width=50).size == (50, 1)
    bar = scale_bar(0.5, 7.25, width=180)
    assert bar.size[0] == 180 and bar.mode == "RGB"
    pixels = np.asarray(bar)
    assert tuple(pixels[0, 0]) == tuple(np.rint(turbo(np.array(0.0)) * 255).astype(np.uint8))


def _maps(height, width, dataset, rng):
    spec = DATASETS[dataset]
    maps = {}
    for task in spec.tasks:
        if task in ("semseg", "human_parts"):
            maps[task] = rng.integers(0, 3, (height, width)).astype(np.uint8)
        elif task == "depth":
            maps[task] = rng.uniform(0.5, 6.0, (height, width)).astype(np.float32)
        elif task == "normals":
            n = rng.normal(size=(height, width, 3))
            maps[task] = (n / np.linalg.norm(n, axis=-1, keepdims=True)).astype(np.float32)
        else:
            maps[task] = rng.uniform(0, 1, (height, width)).astype(np.float32)
    return maps


@pytest.mark.parametrize("dataset", ["nyud", "pascal"])
def test_make_panel_draws_predictions_and_ground_truth(dataset):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    predictions = _maps(30, 50, dataset, rng)
    meta = ModelMeta(
        dataset=dataset,
        tasks=DATASETS[dataset].tasks,
        num_outputs=DATASETS[dataset].num_outputs,
        train_size=(32, 48),
        stride=16,
    )
    panel = make_panel(image, predictions, meta=meta, tile_size=100)
    assert isinstance(panel, Image.Image) and panel.mode == "RGB"
    columns = 1 + len(DATASETS[dataset].tasks)
    assert panel.size[0] >= columns * 100
    targets = _maps(30, 50, dataset, rng)
    targets["semseg"][0, :10] = 255
    if "depth" in targets:
        targets["depth"][:5] = 0.0  # missing ground truth
    with_gt = make_panel(image, predictions, targets, meta=dataset, tile_size=100)
    assert with_gt.size[0] == panel.size[0] and with_gt.size[1] > panel.size[1] + 60


def test_make_panel_accepts_training_tensors_and_checks_sizes():
    rng = np.random.default_rng(1)
    image = torch.rand(3, 16, 24)  # (3, H, W) in [0, 1]
    predictions = {"semseg": torch.randint(0, 40, (1, 16, 24)), "normals": torch.randn(3, 16, 24)}
    assert make_panel(image, predictions, meta="nyud").mode == "RGB"
    bad = {"depth": rng.uniform(1, 2, (8, 8))}
    with pytest.raises(ValueError, match=r"the depth map is \(8, 8\), the image is \(16, 24\)"):
        make_panel(image, bad, meta="nyud")
    tiny = make_panel(np.zeros((1, 1, 3), np.uint8), {"edge": np.ones((1, 1), np.float32)}, meta="nyud")
    assert tiny.size[1] > 100  # a 1x1 image is enlarged for display


def test_thin_boundaries_survive_shrinking_for_display():
    edge = np.zeros((400, 400), np.float32)
    edge[:, 201] = 0.2  # a one-pixel boundary, drawn in gray 51; sampling every 4th column would miss it
    panel = np.asarray(make_panel(np.zeros((400, 400, 3), np.uint8), {"edge": edge}, meta="nyud", tile_size=100))
    assert (panel == 51).all(-1).sum() >= 100  # a line the height of the tile


def test_colorize_maps_gives_one_picture_per_task():
    rng = np.random.default_rng(2)
    maps = _maps(6, 8, "pascal", rng)
    maps["depth"] = np.array([[0.0, 1.0, 2.0, 3.0]] * 6).repeat(2, axis=1).astype(np.float32)
    colours = colorize_maps(maps, "pascal")
    assert set(colours) == set(maps)
    for task, picture in colours.items():
        assert picture.shape == (6, 8, 3) and picture.dtype == np.uint8, task
    assert np.array_equal(
        colours["human_parts"], colorize_labels(maps["human_parts"], palette_for("pascal", "human_parts"))
    )
    assert np.array_equal(colours["normals"], colorize_normals(maps["normals"]))
    assert np.array_equal(colours["sal"], colorize_probability(maps["sal"]))
    assert (colours["depth"] != IGNORE_RGB).any(-1).all()  # a predicted 0 m is a depth, not a missing value
    fixed = colorize_maps({"depth": maps["depth"]}, "pascal", depth_limits=(0.0, 6.0))["depth"]
    assert np.array_equal(fixed, colorize_depth(maps["depth"], 0.0, 6.0, zero_is_missing=False))
    with pytest.raises(ValueError, match="unknown task 'flow'"):
        colorize_maps({"flow": maps["sal"]}, "pascal")


def test_a_fixed_depth_range_gives_panels_the_same_colours():
    image = np.zeros((20, 20, 3), np.uint8)

    def area(panel, depth, limits):  # pixels drawn in the colour of ``depth`` within ``limits``
        colour = np.rint(turbo(np.array((depth - limits[0]) / (limits[1] - limits[0]))) * 255).astype(np.uint8)
        return int((np.asarray(panel) == colour).all(-1).sum())

    for depth in (1.0, 5.0):
        flat = np.full((20, 20), depth, np.float32)
        free = make_panel(image, {"depth": flat}, meta="nyud", tile_size=40)
        fixed = make_panel(image, {"depth": flat}, meta="nyud", tile_size=40, depth_limits=(0.0, 6.0))
        assert area(free, 0.0, (0.0, 1.0)) >= 40 * 40  # its own range: the lowest colour, whatever the depth
        assert area(fixed, depth, (0.0, 6.0)) >= 40 * 40  # the shared range: the depth's own colour
