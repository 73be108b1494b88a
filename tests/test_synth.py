"""Procedural dataset generator: ground-truth consistency, determinism, on-disk formats and argument checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import loadmat

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
    edge = synth._boundaries(instances, depth).astype(bool)
    outline = np.zeros_like(edge)
    outline[5:15, 6:18] = True
    outline[6:14, 7:17] = False
    np.testing.assert_array_equal(edge, outline)
    depth[:, 12:] *= 1.5  # a depth step inside the background: one line on its nearer side
    depth[instances == 1] = 2.0
    edge = synth._boundaries(instances, depth).astype(bool)
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
    with pytest.raises(ValueError, match=match):
        synthesize(tmp_path, **args)
    assert not (tmp_path / "NYUDv2").exists()


def test_parse_size():
    assert parse_size("192x256") == (192, 256)
    for bad in ("192", "axb", "8x8", "192x256x3"):
        with pytest.raises(ValueError, match="size"):
            parse_size(bad)


def test_out_must_be_a_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="out"):
        synthesize(tmp_path / "file", "nyud", 1, 0, SIZE, 0, progress=False)


def test_refuses_foreign_folders_and_regenerates_its_own(tmp_path):
    foreign = tmp_path / "NYUDv2"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("real data")
    with pytest.raises(FileExistsError, match="overwrite"):
        synthesize(tmp_path, "nyud", 1, 0, SIZE, 0, progress=False)
    with pytest.raises(ValueError, match="overwrite"):  # also a ValueError, for the CLI
        synthesize(tmp_path, "nyud", 1, 0, SIZE, 0, progress=False)
    synthesize(tmp_path, "nyud", 1, 0, SIZE, 0, progress=False, overwrite=True)
    assert (foreign / "notes.txt").exists() and (foreign / "images/0001.png").exists()
    with pytest.raises(FileExistsError):  # still not ours: a later run must not delete the user's files
        synthesize(tmp_path, "nyud", 1, 0, SIZE, 0, progress=False)
    synthesize(tmp_path, "nyud", 1, 0, SIZE, 0, progress=False, overwrite=True)
    assert (foreign / "notes.txt").exists()

    own = tmp_path / "own"
    synthesize(own, "nyud", 3, 0, SIZE, 0, progress=False)
    synthesize(own, "nyud", 1, 0, SIZE, 0, progress=False)  # its own output: replaced, stale files removed
    assert sorted(p.name for p in (own / "NYUDv2/images").iterdir()) == ["0001.png"]
    with pytest.raises(ValueError, match="parent"):
        synthesize(own / "NYUDv2", "nyud", 1, 0, SIZE, 0, progress=False)


def test_interrupted_run_lists_no_missing_files(tmp_path, monkeypatch):
    real = synth._write_example
    calls = []

    def flaky(job):
        calls.append(job)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(synth, "_write_example", flaky)
    with pytest.raises(KeyboardInterrupt):
        synthesize(tmp_path, "pascal", 4, 1, SIZE, 0, progress=False)
    root = tmp_path / "PASCALContext"
    assert not list((root / "ImageSets").rglob("*.txt"))
    assert json.loads((root / MARKER_FILE).read_text())["complete"] is False
    monkeypatch.setattr(synth, "_write_example", real)
    synthesize(tmp_path, "pascal", 4, 1, SIZE, 0, progress=False)  # a rerun may replace the partial output
    assert len((root / "ImageSets/Context/train.txt").read_text().split()) == 4


def test_image_ids_are_stable():
    assert image_id("nyud", "train", 0) == "0001" and image_id("nyud", "val", 0) == "0002"
    assert image_id("pascal", "val", 41) == "2009_000042"
    with pytest.raises(ValueError, match="split"):
        image_id("nyud", "test", 0)
