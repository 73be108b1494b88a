"""Procedural dataset generator: ground-truth consistency, determinism, on-disk formats, argument checks, and the
safety of writing a dataset (refusals, replacement, interruption, a full disk)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import loadmat

import pamm.fs
from pamm import errors
from pamm.data import synth
from pamm.data.synth import (
    DATASET_FOLDERS,
    FINE_PART_NAMES,
    HUMAN_PART_GROUP,
    MARKER_FILE,
    NYUD_KINDS,
    contact_sheet,
    image_id,
    parse_size,
    render_scene,
    scene_rng,
    synthesize,
)
from pamm.data.synth import dataset as synth_dataset
from pamm.data.synth.render import boundaries
from pamm.tasks import NYUD_CLASSES, PASCAL_CLASSES

SIZE = (48, 64)
VOC_TO_CONTEXT = {"background": 0, "bottle": 34, "chair": 72, "diningtable": 397, "person": 284, "pottedplant": 308,
                  "sofa": 368, "tvmonitor": 427}  # fmt: skip


def _scene(layout: str, index: int, seed: int = 0, size=SIZE, **kw) -> dict:
    return render_scene(scene_rng(seed, layout, "train", index), size, layout, **kw)


@pytest.fixture(scope="module")
def nyud_scenes():
    return [_scene("nyud", i, size=(72, 96)) for i in range(6)]


@pytest.fixture(scope="module")
def pascal_scenes():
    return [_scene("pascal", i, size=(72, 96)) for i in range(6)]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------- render_scene


@pytest.mark.parametrize("layout", ["nyud", "pascal"])
def test_render_scene_arrays(layout):
    s = _scene(layout, 0)
    h, w = SIZE
    assert s["image"].dtype == np.uint8 and s["image"].shape == (h, w, 3)
    assert s["depth"].dtype == np.float32 and s["depth"].shape == (h, w)
    assert s["normals"].dtype == np.float32 and s["normals"].shape == (h, w, 3)
    assert s["semseg"].shape == (h, w) and np.issubdtype(s["semseg"].dtype, np.integer)
    assert s["boundaries"].dtype == np.uint8 and set(np.unique(s["boundaries"])) <= {0, 1}
    assert s["instances"].shape == (h, w)
    pascal_only = {"saliency", "human_parts", "fine_parts", "label_map"}
    assert pascal_only <= s.keys() if layout == "pascal" else not pascal_only & s.keys()
    if layout == "pascal":
        assert set(np.unique(s["saliency"])) <= {0, 1}
        assert s["label_map"].dtype == np.uint16
        assert s["human_parts"].max() <= 6
    assert s["image"].std() > 10  # not a blank picture


@pytest.mark.parametrize("layout", ["nyud", "pascal"])
def test_render_is_deterministic_per_seed(layout):
    a, b = _scene(layout, 3), _scene(layout, 3)
    for key in ("image", "depth", "normals", "semseg", "boundaries"):
        np.testing.assert_array_equal(a[key], b[key])
    c = _scene(layout, 3, seed=1)
    assert not np.array_equal(a["image"], c["image"])
    assert not np.array_equal(a["depth"], c["depth"])


def _camera_rays(scene: dict) -> np.ndarray:
    """OpenGL camera-frame rays (H, W, 3) (x right, y up, z = -1) from the returned intrinsics."""
    k = scene["meta"]["camera"]["K"]
    h, w = scene["depth"].shape
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    return np.stack([(u - k[0, 2]) / k[0, 0], -(v - k[1, 2]) / k[1, 1], -np.ones_like(u)], -1)


Y_DOWN = np.array([1.0, -1.0, 1.0])  # normals use the NYU colouring frame: the camera frame with y negated


def test_floor_depth_matches_the_analytic_plane(nyud_scenes, pascal_scenes):
    for s in nyud_scenes + pascal_scenes:
        floor = s["instances"] == 4
        assert floor.sum() > 50
        cam = s["meta"]["camera"]
        rays_world = _camera_rays(s) @ cam["rotation"].T
        expected = -cam["position"][1] / rays_world[..., 1]  # ray parameter at y = 0 = z-depth (ray z = -1)
        np.testing.assert_allclose(s["depth"][floor], expected[floor], rtol=2e-5)
        # the floor normal is the world "up" seen from the camera
        up = cam["rotation"][1] * Y_DOWN  # R^T (0, 1, 0), then y flipped
        np.testing.assert_allclose(s["normals"][floor], np.broadcast_to(up, (floor.sum(), 3)), atol=1e-5)


def test_depth_and_normals_are_valid(nyud_scenes, pascal_scenes):
    for s in nyud_scenes + pascal_scenes:
        depth, normals = s["depth"], s["normals"]
        assert np.isfinite(depth).all() and (depth > 0).all()
        assert depth.max() < np.linalg.norm(s["meta"]["room"])
        np.testing.assert_allclose(np.linalg.norm(normals, axis=-1), 1.0, atol=1e-5)
        facing = (normals * _camera_rays(s) * Y_DOWN).sum(-1)
        assert (facing < 1e-6).all(), "normals must face the camera"
        assert (facing < -1e-3).mean() > 0.99


def test_boundaries_are_thin_and_on_discontinuities(nyud_scenes, pascal_scenes):
    for s in nyud_scenes + pascal_scenes:
        inst, depth, edge = s["instances"], s["depth"].astype(np.float64), s["boundaries"].astype(bool)
        assert 0.005 < edge.mean() < 0.2
        step = np.zeros_like(edge)
        for axis in (0, 1):
            a = [slice(None)] * 2
            b = [slice(None)] * 2
            a[axis], b[axis] = slice(None, -1), slice(1, None)
            a, b = tuple(a), tuple(b)
            differ = (inst[a] != inst[b]) | (np.abs(depth[a] - depth[b]) > 0.1 * np.minimum(depth[a], depth[b]))
            step[a] |= differ
            step[b] |= differ
            # every instance change is marked on one side or the other
            assert (edge[a] | edge[b])[inst[a] != inst[b]].all()
        assert not (edge & ~step).any(), "boundary pixels must touch a label or depth discontinuity"
        blocks = edge[:-1, :-1] & edge[1:, :-1] & edge[:-1, 1:] & edge[1:, 1:]
        assert blocks.sum() <= 0.12 * edge.sum(), "boundaries should be one pixel wide (except on thin parts)"


def test_boundaries_mark_only_the_occluding_side():
    instances = np.zeros((20, 24), dtype=np.int32)
    instances[5:15, 6:18] = 1
    depth = np.where(instances == 1, 2.0, 5.0).astype(np.float32)
    edge = boundaries(instances, depth).astype(bool)
    outline = np.zeros_like(edge)
    outline[5:15, 6:18] = True
    outline[6:14, 7:17] = False
    np.testing.assert_array_equal(edge, outline)
    depth[:, 12:] *= 1.5  # a depth step inside the background: one line on its nearer side
    depth[instances == 1] = 2.0
    edge = boundaries(instances, depth).astype(bool)
    extra = edge & ~outline
    assert extra[:, 11].sum() == 10 and extra.sum() == 10  # rows outside the box, column left of the step


def test_nyud_classes_are_a_small_learnable_set(nyud_scenes):
    used = set()
    for s in nyud_scenes:
        used |= set(np.unique(s["semseg"]).tolist())
    allowed = {synth.KINDS[name].nyud for name in NYUD_KINDS}
    assert used <= allowed and len(allowed) == 12
    assert {NYUD_CLASSES[c] for c in allowed} == {"wall", "floor", "ceiling", "cabinet", "bed", "chair", "sofa",
                                                   "table", "door", "window", "picture", "lamp"}  # fmt: skip
    assert {0, 1} <= used


def test_pascal_labels_are_consistent(pascal_scenes):
    for s in pascal_scenes:
        semseg, label_map = s["semseg"], s["label_map"]
        assert set(np.unique(semseg).tolist()) <= {PASCAL_CLASSES.index(n) for n in VOC_TO_CONTEXT}
        for name, context in VOC_TO_CONTEXT.items():
            if name != "background":
                np.testing.assert_array_equal(label_map == context, semseg == PASCAL_CLASSES.index(name))
        assert (label_map > 0).all()  # room surfaces have context labels too (wall, floor, ceiling, ...)
        person = semseg == PASCAL_CLASSES.index("person")
        np.testing.assert_array_equal(s["human_parts"] > 0, person)  # every person pixel belongs to a part
        assert not (s["saliency"].astype(bool) ^ (s["saliency"] > 0)).any()
        assert s["saliency"][semseg > 0].all()  # VOC objects are salient
        assert not s["saliency"][np.isin(s["instances"], [0, 1, 2, 3, 4, 5])].any()  # room surfaces are not


def test_people_and_no_people():
    with_people = _scene("pascal", 0, num_people=3)
    assert with_people["meta"]["num_people"] >= 1
    parts = set(np.unique(with_people["human_parts"]).tolist())
    assert {0, 1, 2} <= parts and parts <= set(range(7))
    names = {FINE_PART_NAMES[c] for c in np.unique(with_people["fine_parts"]) if c}
    assert {n for n in names if n in HUMAN_PART_GROUP}
    alone = _scene("pascal", 0, num_people=0)
    assert alone["meta"]["num_people"] == 0 and not alone["human_parts"].any()
    assert not (alone["semseg"] == PASCAL_CLASSES.index("person")).any()
    with pytest.raises(ValueError, match="num_people"):
        _scene("nyud", 0, num_people=1)


def test_contact_sheet():
    sheet = contact_sheet([_scene("pascal", 0), _scene("pascal", 1)], "pascal", thumb_height=24)
    assert sheet.size[1] > 2 * 24 and sheet.size[0] > 7 * 32


REFERENCE = Path(__file__).parent / "data" / "synth_reference.npz"
"""Scenes rendered by the single-module generator of commit 0481667, before it became a package: for each style and
index 0, 1, the maps of ``render_scene(scene_rng(7, style, "train", index), (32, 40), style)`` saved with
``np.savez_compressed`` as ``<style><index>_<map>``. The package must draw the same rooms."""


def _matches_reference(scene: dict, reference, prefix: str) -> dict[str, float]:
    """Share of matching pixels per map: exact for labels, within 2 levels for the image and 1e-4 for depth and
    normals (other platforms' maths libraries may differ in the last bit; a changed random draw moves far more)."""
    shares = {}
    for key in ("image", "depth", "normals", "semseg", "instances", "boundaries", "saliency", "human_parts",
                "label_map"):  # fmt: skip
        if f"{prefix}_{key}" not in reference:
            continue
        expected, actual = reference[f"{prefix}_{key}"], scene[key]
        assert actual.dtype == expected.dtype and actual.shape == expected.shape, key
        if key == "image":
            same = np.abs(actual.astype(int) - expected) <= 2
        elif key in ("depth", "normals"):
            same = np.isclose(actual, expected, rtol=1e-4, atol=1e-4)
        else:
            same = actual == expected
        shares[key] = float(same.mean())
    return shares


@pytest.mark.parametrize("style", ["nyud", "pascal"])
def test_renders_match_the_pinned_reference(style):
    reference = np.load(REFERENCE)
    scenes = [render_scene(scene_rng(7, style, "train", i), (32, 40), style) for i in (0, 1)]
    for index, scene in enumerate(scenes):
        shares = _matches_reference(scene, reference, f"{style}{index}")
        assert len(shares) == (9 if style == "pascal" else 6)
        assert min(shares.values()) >= 0.995, shares
    swapped = _matches_reference(scenes[1], reference, f"{style}0")  # the comparison does tell scenes apart
    assert min(swapped.values()) < 0.9


# ------------------------------------------------------------------------------------------------ synthesize


def test_synthesize_nyud_layout(tmp_path):
    summary = synthesize(tmp_path, "nyud", 3, 2, SIZE, seed=5, progress=False)
    root = tmp_path / "NYUDv2"
    assert summary["root"] == str(root) and summary["images"] == 5 and summary["counts"] == {"train": 3, "val": 2}
    train = (root / "gt_sets/train.txt").read_text().split()
    val = (root / "gt_sets/val.txt").read_text().split()
    assert train == ["0001", "0003", "0005"] and val == ["0002", "0004"]
    for i, iid in enumerate(train):
        scene = render_scene(scene_rng(5, "nyud", "train", i), SIZE, "nyud")
        image = Image.open(root / "images" / f"{iid}.png")
        assert image.mode == "RGB" and image.size == (SIZE[1], SIZE[0])
        np.testing.assert_array_equal(np.array(image), scene["image"])
        depth = np.load(root / "depth" / f"{iid}.npy")
        assert depth.dtype == np.float32 and depth.shape == SIZE
        np.testing.assert_array_equal(depth, scene["depth"])
        seg = Image.open(root / "segmentation" / f"{iid}.png")
        assert seg.mode == "L"
        np.testing.assert_array_equal(np.array(seg).astype(int) - 1, scene["semseg"])
        normals = Image.open(root / "normals" / f"{iid}.png")
        assert normals.mode == "RGB"
        decoded = 2 * np.array(normals, dtype=np.float32) / 255 - 1
        assert np.abs(decoded - scene["normals"]).max() <= 1 / 255 + 1e-6
        edge = Image.open(root / "edge" / f"{iid}.png")
        assert edge.mode == "L" and set(np.unique(np.array(edge))) <= {0, 255}
        np.testing.assert_array_equal(np.array(edge) // 255, scene["boundaries"])
    marker = json.loads((root / MARKER_FILE).read_text())
    assert marker["complete"] and marker["layout"] == "nyud"


def test_nyud_output_passes_the_project_loader(tmp_path):
    from pamm.data import NYUDv2, check_dataset

    synthesize(tmp_path, "nyud", 2, 1, SIZE, seed=0, progress=False)
    root = tmp_path / DATASET_FOLDERS["nyud"]
    assert check_dataset("nyud", root) == []
    sample = NYUDv2(root, "train").load_raw(0)
    scene = render_scene(scene_rng(0, "nyud", "train", 0), SIZE, "nyud")
    np.testing.assert_array_equal(sample["semseg"].numpy(), scene["semseg"])
    np.testing.assert_array_equal(sample["depth"][0].numpy(), scene["depth"])


def test_synthesize_pascal_layout(tmp_path):
    n = 8
    summary = synthesize(tmp_path, "pascal", n, 1, SIZE, seed=2, progress=False)
    root = tmp_path / "PASCALContext"
    ids = (root / "ImageSets/Context/train.txt").read_text().split()
    assert ids == [f"2008_{i:06d}" for i in range(1, n + 1)]
    assert (root / "ImageSets/Context/val.txt").read_text().split() == ["2009_000001"]
    parts_list = json.loads((root / "ImageSets/Parts/train.txt").read_text())
    assert list(parts_list) == ids
    assert set(json.loads((root / "ImageSets/Parts/trainval.txt").read_text())) == set(ids) | {"2009_000001"}
    people = [iid for iid in ids if 15 in parts_list[iid]]
    assert summary["with_people"] == len(people)
    assert 0 < len(people) < n, "both the people and the no-people case must occur"
    for i, iid in enumerate(ids):
        scene = render_scene(scene_rng(2, "pascal", "train", i), SIZE, "pascal")
        image = Image.open(root / "JPEGImages" / f"{iid}.jpg")
        assert image.format == "JPEG" and image.mode == "RGB" and image.size == (SIZE[1], SIZE[0])
        assert np.abs(np.array(image).astype(int) - scene["image"]).mean() < 8
        seg = Image.open(root / "semseg/pascal-context" / f"{iid}.png")
        assert seg.mode == "L"
        np.testing.assert_array_equal(np.array(seg), scene["semseg"])
        label_map = loadmat(root / "pascal-context/trainval" / f"{iid}.mat")["LabelMap"]
        assert label_map.dtype == np.uint16
        np.testing.assert_array_equal(label_map, scene["label_map"])
        sal = np.array(Image.open(root / "sal_distill" / f"{iid}.png"))
        np.testing.assert_array_equal(sal / 255 > 0.5, scene["saliency"] > 0)
        normals = np.array(Image.open(root / "normals_distill" / f"{iid}.png"), dtype=np.float32)
        assert np.abs(2 * normals / 255 - 1 - scene["normals"]).max() <= 1 / 255 + 1e-6
        # PASCAL-Part structure: anno(imname, objects(class, class_ind, mask, parts(part_name, mask)))
        anno = loadmat(root / "human_parts" / f"{iid}.mat")["anno"]
        assert anno.dtype.names == ("imname", "objects")
        assert str(anno[0, 0]["imname"][0]) == f"{iid}.jpg"
        objects = anno[0][0][1][0]
        assert [int(o[1][0][0]) for o in objects] == parts_list[iid]
        target = np.zeros(SIZE, dtype=np.int64)
        for obj in objects:
            assert obj[2].dtype == np.uint8 and obj[2].shape == SIZE and obj[2].any()
            assert PASCAL_CLASSES[int(obj[1][0][0])] == str(obj[0][0])
            if obj[1][0][0] == 15:
                assert len(obj[3]) != 0
                for part in obj[3][0]:
                    target[part[1].astype(bool)] = HUMAN_PART_GROUP[str(part[0][0])]
        np.testing.assert_array_equal(target, scene["human_parts"])
        if iid not in people:
            assert not scene["human_parts"].any()


def test_pascal_output_passes_the_project_loader(tmp_path):
    from pamm.data import PascalContext, check_dataset

    synthesize(tmp_path, "pascal", 3, 1, SIZE, seed=4, progress=False)
    root = tmp_path / DATASET_FOLDERS["pascal"]
    assert check_dataset("pascal", root) == []
    data = PascalContext(root, "train")
    for i in range(len(data)):
        sample = data.load_raw(i)
        scene = render_scene(scene_rng(4, "pascal", "train", i), SIZE, "pascal")
        np.testing.assert_array_equal(sample["semseg"].numpy(), scene["semseg"])
        expected_parts = scene["human_parts"] if scene["meta"]["num_people"] else np.full(SIZE, 255)
        np.testing.assert_array_equal(sample["human_parts"].numpy(), expected_parts)
        assert sample["edge"].sum() > 0
        valid = sample["normals"].abs().sum(0) > 0  # distilled normals are kept on NYUD-like classes only
        assert valid.float().mean() > 0.5


def test_files_are_reproducible_and_prefix_stable(tmp_path):
    synthesize(tmp_path / "a", "pascal", 2, 1, SIZE, seed=9, progress=False)
    synthesize(tmp_path / "b", "pascal", 2, 1, SIZE, seed=9, progress=False)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert a == b
    synthesize(tmp_path / "c", "pascal", 3, 2, SIZE, seed=9, progress=False)
    c = _files(tmp_path / "c")
    for name, data in a.items():
        if name.startswith("PASCALContext/ImageSets") or name.endswith(MARKER_FILE):
            continue
        assert c[name] == data, name
    synthesize(tmp_path / "d", "pascal", 2, 1, SIZE, seed=10, progress=False)
    d = _files(tmp_path / "d")
    assert d["PASCALContext/JPEGImages/2008_000001.jpg"] != a["PASCALContext/JPEGImages/2008_000001.jpg"]


def test_workers_give_the_same_files(tmp_path):
    synthesize(tmp_path / "one", "nyud", 3, 1, SIZE, seed=1, progress=False)
    synthesize(tmp_path / "two", "nyud", 3, 1, SIZE, seed=1, progress=False, workers=2)
    assert _files(tmp_path / "one") == _files(tmp_path / "two")


def test_preview(tmp_path):
    preview = tmp_path / "sheet.png"
    summary = synthesize(tmp_path, "nyud", 2, 1, SIZE, seed=0, preview=preview, progress=False)
    assert summary["preview"] == str(preview)
    image = Image.open(preview)
    assert image.format == "PNG" and image.size[0] > image.size[1]
    assert preview.stat().st_size < 300_000


# ------------------------------------------------------------------------------------ arguments and safety


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"layout": "coco"}, "layout"),
        ({"n_train": -1}, "n_train"),
        ({"n_val": 1.5}, "n_val"),
        ({"n_train": 0, "n_val": 0}, "at least 1"),
        ({"size": (16, 64)}, "size"),
        ({"size": (48,)}, "size"),
        ({"size": (48.0, 64)}, "size"),
        ({"seed": -3}, "seed"),
        ({"seed": "1"}, "seed"),
        ({"workers": 0}, "workers"),
        ({"preview": "sheet.jpg"}, "preview"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    args = {"layout": "nyud", "n_train": 1, "n_val": 0, "size": SIZE, "seed": 0, "progress": False, **kwargs}
    with pytest.raises(ValueError, match=match) as info:
        synthesize(tmp_path / "data", **args)
    assert errors.exit_code(info.value) == errors.EXIT_INPUT and "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []  # nothing created


def test_parse_size():
    assert parse_size("192x256") == (192, 256)
    for bad in ("192", "axb", "8x8", "192x256x3"):
        with pytest.raises(ValueError, match="size"):
            parse_size(bad)


def test_out_must_be_a_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="out"):
        synthesize(tmp_path / "file", "nyud", 1, 0, SIZE, 0, progress=False)


def test_image_ids_are_stable():
    assert image_id("nyud", "train", 0) == "0001" and image_id("nyud", "val", 0) == "0002"
    assert image_id("pascal", "val", 41) == "2009_000042"
    with pytest.raises(ValueError, match="split"):
        image_id("nyud", "test", 0)


# ------------------------------------------------------------------------------ refusing, replacing, failing

PAMM = [sys.executable, "-m", "pamm"]
DISK_FULL = Path(__file__).parent / "helpers" / "pamm_disk_full.py"


def _hashes(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root`` (hidden ones included)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip


def _synth_cli(out: Path, *args: str, runner: list[str] = PAMM) -> subprocess.CompletedProcess:
    command = [*runner, "data", "synth", "--out", str(out), "--size", "32x40", "--quiet", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("pamm data synth: error: ") and "Traceback" not in result.stderr
    return lines[0]


def _no_hidden_folders(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_cli_refuses_an_existing_dataset_without_overwrite(tmp_path):
    """Issue 12.1: an existing dataset is never deleted or regenerated without --overwrite."""
    synthesize(tmp_path, "nyud", 5, 2, (32, 40), seed=0, progress=False)
    before = _hashes(tmp_path)
    result = _synth_cli(tmp_path, "--train", "2", "--val", "1")
    assert result.returncode == 2
    line = _one_line_error(result)
    assert str(tmp_path / "NYUDv2") in line and "--overwrite" in line and "5 train + 2 val" in line
    assert _hashes(tmp_path) == before


def test_cli_overwrite_replaces_its_own_dataset(tmp_path):
    preview = tmp_path / "sheet.png"
    synthesize(tmp_path, "nyud", 5, 2, (32, 40), seed=0, preview=preview, progress=False)
    old_preview = preview.read_bytes()
    result = _synth_cli(tmp_path, "--train", "2", "--val", "1", "--seed", "3", "--overwrite", "--preview", str(preview))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"replaced the dataset in {tmp_path / 'NYUDv2'}: 2 train + 1 val")
    root = tmp_path / "NYUDv2"
    assert sorted(p.name for p in (root / "images").iterdir()) == ["0001.png", "0002.png", "0003.png"]
    assert json.loads((root / MARKER_FILE).read_text())["seed"] == 3
    assert preview.read_bytes() != old_preview
    assert sorted(p.name for p in tmp_path.iterdir()) == ["NYUDv2", "sheet.png"]  # the old one is gone, no leftovers
    fresh = tmp_path / "fresh"
    synthesize(fresh, "nyud", 2, 1, (32, 40), seed=3, progress=False)
    assert _hashes(root) == _hashes(fresh / "NYUDv2")  # exactly what a first run writes


def test_cli_never_touches_a_folder_it_did_not_write(tmp_path):
    foreign = tmp_path / "NYUDv2"
    (foreign / "images").mkdir(parents=True)
    (foreign / "images" / "0001.png").write_bytes(b"the user's real image")
    (foreign / "notes.txt").write_text("real data")
    before = _hashes(tmp_path)
    with pytest.raises(synth.SynthOutputExistsError, match="never overwritten"):
        synthesize(tmp_path, "nyud", 1, 0, SIZE, 0, progress=False)
    result = _synth_cli(tmp_path, "--train", "1", "--val", "0", "--overwrite")  # not even with --overwrite
    assert result.returncode == 2
    line = _one_line_error(result)
    assert str(foreign) in line and MARKER_FILE in line and "never overwritten" in line
    assert _hashes(tmp_path) == before
    _no_hidden_folders(tmp_path)


def test_overwrite_keeps_files_the_user_added_to_a_synthetic_dataset(tmp_path):
    synthesize(tmp_path, "nyud", 2, 1, SIZE, 0, progress=False)
    (tmp_path / "NYUDv2" / "images" / "my_photo.jpg").write_bytes(b"not regenerable")
    before = _hashes(tmp_path)
    with pytest.raises(synth.SynthOutputExistsError) as info:
        synthesize(tmp_path, "nyud", 1, 1, SIZE, 0, progress=False, overwrite=True)
    assert "images/my_photo.jpg" in str(info.value) and "not replaced" in str(info.value)
    assert errors.exit_code(info.value) == errors.EXIT_INPUT
    assert _hashes(tmp_path) == before


def test_markers_that_do_not_own_the_folder_are_foreign(tmp_path):
    """An older version with overwrite=True wrote into other people's folders and marked them owns_folder: false;
    a folder whose marker is damaged or from another tool is foreign too."""
    root = tmp_path / "NYUDv2"
    ours = {"generator": "pamm.data.synth", "owns_folder": True, "layout": "nyud", "counts": {"train": 1, "val": 0}}
    for marker in ({**ours, "owns_folder": False}, {**ours, "generator": "x"}, {**ours, "layout": "coco"},
                   {**ours, "counts": {"train": -1, "val": 0}}, {**ours, "counts": {"train": 10**12, "val": 0}},
                   {**ours, "counts": {"train": 1.5, "val": 0}}, [ours], "not json"):  # fmt: skip
        root.mkdir(exist_ok=True)
        (root / MARKER_FILE).write_text(marker if isinstance(marker, str) else json.dumps(marker))
        with pytest.raises(synth.SynthOutputExistsError, match="never overwritten"):
            synthesize(tmp_path, "nyud", 1, 0, SIZE, 0, progress=False, overwrite=True)
        assert [p.name for p in root.iterdir()] == [MARKER_FILE]


def test_an_empty_dataset_folder_is_filled(tmp_path):
    (tmp_path / "NYUDv2").mkdir()
    summary = synthesize(tmp_path, "nyud", 1, 1, SIZE, 0, progress=False)
    assert summary["replaced"] is False and (tmp_path / "NYUDv2/gt_sets/val.txt").read_text() == "0002\n"


def test_out_inside_a_dataset_folder_and_symlinked_roots_are_refused(tmp_path):
    synthesize(tmp_path / "own", "nyud", 1, 0, SIZE, 0, progress=False)
    with pytest.raises(ValueError, match="parent"):
        synthesize(tmp_path / "own" / "NYUDv2", "nyud", 1, 0, SIZE, 0, progress=False)
    (tmp_path / "link").mkdir()
    (tmp_path / "link" / "NYUDv2").symlink_to(tmp_path / "own" / "NYUDv2")
    before = _hashes(tmp_path / "own")
    with pytest.raises(ValueError, match="symbolic link") as info:
        synthesize(tmp_path / "link", "nyud", 1, 0, SIZE, 0, progress=False, overwrite=True)
    assert errors.exit_code(info.value) == errors.EXIT_INPUT
    assert _hashes(tmp_path / "own") == before


def test_preview_is_refused_when_it_would_destroy_something(tmp_path):
    preview = tmp_path / "sheet.png"
    preview.write_bytes(b"an earlier sheet")
    with pytest.raises(synth.SynthOutputExistsError, match="preview.*overwrite"):
        synthesize(tmp_path, "nyud", 1, 0, SIZE, 0, preview=preview, progress=False)
    assert preview.read_bytes() == b"an earlier sheet" and not (tmp_path / "NYUDv2").exists()
    with pytest.raises(ValueError, match="inside the dataset folder"):
        synthesize(tmp_path, "nyud", 1, 0, SIZE, 0, preview=tmp_path / "NYUDv2" / "sheet.png", progress=False)
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(ValueError, match="is a folder"):
        synthesize(tmp_path, "nyud", 1, 0, SIZE, 0, preview=tmp_path / "dir.png", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.png", "sheet.png"]


def test_an_interrupted_first_run_leaves_nothing(tmp_path, monkeypatch):
    real, calls = synth_dataset._render_example, []

    def interrupted(job):
        calls.append(job)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(synth_dataset, "_render_example", interrupted)
    with pytest.raises(KeyboardInterrupt):
        synthesize(tmp_path / "data" / "synthetic", "pascal", 4, 1, SIZE, 0, progress=False)
    assert list(tmp_path.iterdir()) == []  # not even the folders created for --out


_RENDER_EXAMPLE = synth_dataset._render_example


def _render_failing_at_index_5(job):  # module level: worker processes receive it by name
    if job[3] == 5:
        raise RuntimeError("a render failed")
    return _RENDER_EXAMPLE(job)


@pytest.mark.parametrize("workers", [1, 2])
def test_an_interrupted_replacement_keeps_the_old_dataset(tmp_path, monkeypatch, workers):
    synthesize(tmp_path, "nyud", 3, 1, SIZE, 0, progress=False)
    before = _hashes(tmp_path)
    monkeypatch.setattr(synth_dataset, "_render_example", _render_failing_at_index_5)
    with pytest.raises(RuntimeError, match="a render failed"):
        synthesize(tmp_path, "nyud", 8, 2, SIZE, 5, progress=False, overwrite=True, workers=workers)
    assert _hashes(tmp_path) == before
    _no_hidden_folders(tmp_path)


def _disk_full_open(budget: int):
    spec = importlib.util.spec_from_file_location("pamm_disk_full", DISK_FULL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.fill_after(budget)


@pytest.mark.parametrize("existing", [False, True])
def test_disk_full_names_the_file_and_leaves_no_partial_dataset(tmp_path, monkeypatch, existing):
    """Issue 12.5: one line naming the file and "no space left", exit status 3, no half-written dataset, and an
    existing dataset being replaced stays as it was."""
    full = synthesize(tmp_path / "full", "pascal", 6, 2, SIZE, 1, progress=False)
    needed = sum(p.stat().st_size for p in Path(full["root"]).rglob("*") if p.is_file())
    if existing:
        synthesize(tmp_path, "pascal", 2, 1, SIZE, 0, progress=False)
    before = _hashes(tmp_path)
    monkeypatch.setattr(pamm.fs, "open", _disk_full_open(needed // 2), raising=False)  # full half-way
    with pytest.raises(errors.ResourceError) as info:
        synthesize(tmp_path, "pascal", 6, 2, SIZE, 1, progress=False, overwrite=True)
    message = str(info.value)
    assert "\n" not in message and "no space left" in message and "Errno" not in message
    named = message.split("could not write ", 1)[1].split(":", 1)[0]
    assert named.startswith(str(tmp_path / "PASCALContext") + os.sep)  # the dataset file that did not fit
    assert errors.exit_code(info.value) == errors.EXIT_RESOURCE
    assert ("unchanged" in message) == existing
    assert _hashes(tmp_path) == before
    _no_hidden_folders(tmp_path)


def test_cli_disk_full_exits_3_with_one_line(tmp_path):
    result = _synth_cli(tmp_path / "data", "--train", "6", "--val", "1", runner=[sys.executable, str(DISK_FULL),
                                                                                    "20000"])  # fmt: skip
    assert result.returncode == 3, result.stderr
    line = _one_line_error(result)
    assert "no space left on the device" in line and str(tmp_path / "data" / "NYUDv2") in line
    assert list(tmp_path.iterdir()) == []


def test_a_preview_that_does_not_fit_keeps_everything_as_it_was(tmp_path, monkeypatch):
    synthesize(tmp_path, "nyud", 2, 1, SIZE, 0, progress=False, preview=tmp_path / "sheet.png")
    before = _hashes(tmp_path)

    def no_room(path, data):
        raise errors.ResourceError(f"could not write {path}: no space left on the device")

    monkeypatch.setattr(synth_dataset, "atomic_write_bytes", no_room)
    with pytest.raises(errors.ResourceError, match="sheet.png: no space left.*unchanged"):
        synthesize(tmp_path, "nyud", 4, 1, SIZE, 2, progress=False, overwrite=True, preview=tmp_path / "sheet.png")
    assert _hashes(tmp_path) == before


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 300 kB tmpfs (needs mount rights, e.g. root in a container); skipped elsewhere."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:  # fmt: skip
        pytest.skip("cannot mount a tmpfs here; the ENOSPC injection tests cover the same path")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_really_full_disk(small_tmpfs):
    """The same as the injected ENOSPC on a real small file system (the original report: numpy's "12288
    requested and 9184 written")."""
    result = _synth_cli(small_tmpfs / "data", "--train", "60", "--val", "5")
    assert result.returncode == 3
    assert "no space left on the device" in _one_line_error(result)
    assert list(small_tmpfs.iterdir()) == []


def test_a_killed_run_leaves_a_hidden_folder_that_the_next_run_removes(tmp_path):
    out = tmp_path / "data"
    process = subprocess.Popen([*PAMM, "data", "synth", "--out", str(out), "--size", "32x40", "--quiet", "--train",
                                "100000", "--val", "0"], stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            staged = [p for p in out.glob(".NYUDv2.staged-*") if (p / "images").exists()] if out.exists() else []
            if staged and len(list((staged[0] / "images").iterdir())) >= 3:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the synth process did not start writing")
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate()
    assert not (out / "NYUDv2").exists()  # never a half-written dataset under the real name
    assert len(list(out.glob(".NYUDv2.staged-*"))) == 1
    synthesize(out, "nyud", 1, 0, SIZE, 0, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["NYUDv2"]


def test_synth_help_says_what_overwrite_does():
    text = subprocess.run([*PAMM, "data", "synth", "--help"], capture_output=True, text=True).stdout
    assert "Without it an existing dataset is refused" in " ".join(text.split())
    assert "never touched" in text
