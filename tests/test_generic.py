"""Generic datasets (``dataset.yaml``): the manifest, the loader, ``data check`` / ``convert`` / ``synth --layout
generic``, and a two-task dataset with 5 classes through train, evaluate, predict and resume."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import pamm
from pamm.data import GenericDataset, NYUDv2, PascalContext, check_dataset
from pamm.data.convert import ConvertOutputExistsError, convert_dataset
from pamm.data.generic import encode_targets
from pamm.data.io import DatasetError
from pamm.errors import InputError
from pamm.manifest import ManifestError, manifest_yaml, parse_manifest, read_manifest
from pamm.metrics import build_meters
from pamm.tasks import DATASETS, DatasetSpec, dataset_spec
from test_data_fixtures import HEIGHT, WIDTH, write_png, write_split

pytest_plugins = ["test_data_fixtures"]  # nyud_root / pascal_root

CLASSES = ["sky", "road", "car", "person", "tree"]
IDS = {"train": ["a1", "a2", "a3", "a4"], "val": ["b1", "b2"]}
IGNORE = 250
SCALE = 256


def write_manifest(root: Path, data: dict | str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "dataset.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def two_task_manifest() -> dict:
    return {"name": "streets", "images": {"suffix": ".jpg"},
            "splits": {"train": "lists/train.txt", "val": "lists/val.txt"},
            "tasks": {"semseg": {"classes": list(CLASSES), "ignore": IGNORE, "colors": [[10 * i, 0, 0] for i in
                                                                                         range(5)]},
                      "depth": {"encoding": "png16", "scale": SCALE}}}  # fmt: skip


def write_two_task(root: Path, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Hand-written files (not through encode_targets): semseg ids 0..4 with IGNORE where not annotated, depth as
    16-bit PNG of 1/256 m with 0 = none."""
    rng = np.random.default_rng(seed)
    write_manifest(root, two_task_manifest())
    written = {}
    for split, ids in IDS.items():
        write_split(root / "lists" / f"{split}.txt", ids)
        for image_id in ids:
            image = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
            labels = rng.integers(0, 5, (HEIGHT, WIDTH), dtype=np.uint8)
            labels[0, :3] = IGNORE
            depth = rng.integers(1, 4000, (HEIGHT, WIDTH)).astype(np.uint16)
            depth[-1, -2:] = 0
            (root / "images").mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / "images" / f"{image_id}.jpg", quality=95)
            write_png(root / "semseg" / f"{image_id}.png", labels)
            write_png(root / "depth" / f"{image_id}.png", depth)
            written[image_id] = {"semseg": labels, "depth": depth}
    return written


@pytest.fixture
def two_task_root(tmp_path: Path) -> Path:
    root = tmp_path / "streets"
    write_two_task(root)
    return root


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# the manifest


def test_manifest_gives_the_label_space_with_defaults(two_task_root):
    manifest = read_manifest(two_task_root)
    spec = manifest.spec
    assert spec.name == "streets" and spec.tasks == ("semseg", "depth")
    assert spec.num_outputs == {"semseg": 5, "depth": 1} and spec.class_names == {"semseg": tuple(CLASSES)}
    assert spec.palettes["semseg"] == tuple((10 * i, 0, 0) for i in range(5))
    assert (spec.edge_max_dist, spec.edge_pos_weight, spec.edge_gt, spec.max_depth) == (0.0075, 0.95, "thin", 80.0)
    assert manifest.images.folder == "images" and manifest.images.suffix == ".jpg"
    assert manifest.storage["depth"].encoding == "png16" and manifest.storage["depth"].scale == SCALE
    assert manifest.splits == {"train": "lists/train.txt", "val": "lists/val.txt"}
    with pytest.raises(InputError, match="the generic dataset's label space is in the dataset.yaml of its folder"):
        dataset_spec("generic")
    cfg = pamm.load_config("generic-demo", {"data.root": str(two_task_root), "data.tasks": ["semseg", "depth"]})
    assert cfg.data.spec == spec
    # the text the writers produce reads back to the same manifest, and the spec survives a JSON round trip
    again = parse_manifest(yaml.safe_load(manifest_yaml(manifest)), two_task_root)
    assert again == manifest
    assert DatasetSpec.from_dict(spec.to_dict()) == spec
    for name in DATASETS:
        assert DatasetSpec.from_dict(DATASETS[name].to_dict()) == DATASETS[name]


def test_every_task_and_option_is_read():
    data = {"version": 1, "name": "all", "splits": {"train": "train.txt"},
            "tasks": {"human_parts": {"classes": ["bg", "head"], "colors": "distinct", "folder": "parts"},
                      "sal": None, "normals": {}, "edge": {"tolerance": 0.011, "pos_weight": 0.88,
                                                           "gt_boundary": "seg2bmap"},
                      "depth": {"encoding": "npy", "max_depth": 10}}}  # fmt: skip
    manifest = parse_manifest(data, Path("somewhere"))
    spec = manifest.spec
    assert spec.tasks == ("human_parts", "sal", "normals", "edge", "depth")  # the manifest's order
    assert spec.num_outputs == {"human_parts": 2, "sal": 2, "normals": 3, "edge": 1, "depth": 1}
    assert spec.class_names["sal"] == ("background", "salient") and spec.palettes == {"human_parts": "distinct"}
    assert (spec.edge_max_dist, spec.edge_pos_weight, spec.edge_gt, spec.max_depth) == (0.011, 0.88, "seg2bmap", 10)
    assert manifest.storage["human_parts"].folder == "parts" and manifest.storage["depth"].suffix == ".npy"
    assert manifest.storage["human_parts"].ignore == 255


@pytest.mark.parametrize(("change", "expected"), [
    (lambda d: d["tasks"].update(optical_flow={}), "tasks.optical_flow: unknown task"),
    (lambda d: d["tasks"]["semseg"].pop("classes"), "tasks.semseg.classes: missing"),
    (lambda d: d["tasks"]["depth"].update(encoding="exr"), "tasks.depth.encoding: got 'exr'; expected png16"),
    (lambda d: d["tasks"]["depth"].pop("encoding"), "tasks.depth.encoding: missing"),
    (lambda d: d["tasks"]["semseg"].update(clases=["x"]), "tasks.semseg.clases: unknown key"),
    (lambda d: d["tasks"]["semseg"].update(ignore=3), "tasks.semseg.ignore: 3 is the id of class 3"),
    (lambda d: d["tasks"]["semseg"].update(classes=["a", "a"]), "duplicate class name(s) ['a']"),
    (lambda d: d["tasks"]["semseg"].update(colors=[[1, 2, 3]]), "1 colours for 5 classes"),
    (lambda d: d["splits"].update(test="../elsewhere.txt"), "splits.test: '../elsewhere.txt' leaves the dataset"),
    (lambda d: d.pop("splits"), "splits: missing"),
    (lambda d: d.update(version=2), "version: this pamm reads format version 1"),
    (lambda d: d["tasks"]["depth"].update(folder="semseg"), "'semseg' is also the folder of semseg"),
])  # fmt: skip
def test_a_malformed_manifest_is_one_line_naming_the_file_and_key(tmp_path, change, expected):
    data = two_task_manifest()
    change(data)
    path = write_manifest(tmp_path / "d", data)
    with pytest.raises(ManifestError) as info:
        read_manifest(tmp_path / "d")
    message = str(info.value)
    assert message.startswith(f"{path}: ") and expected in message and "\n" not in message
    assert isinstance(info.value, InputError) and info.value.problems


def test_every_manifest_problem_is_listed_at_once(tmp_path):
    data = two_task_manifest()
    data["tasks"].update(optical_flow={}, edge={"tolerance": 2})
    data["tasks"]["semseg"].pop("classes")
    write_manifest(tmp_path / "d", data)
    with pytest.raises(ManifestError, match="3 problems: ") as info:
        read_manifest(tmp_path / "d")
    assert [p.split(":")[0] for p in info.value.problems] == ["tasks.semseg.classes", "tasks.optical_flow",
                                                              "tasks.edge.tolerance"]  # fmt: skip
    # `data check` lists them one per line, each naming the manifest
    problems = check_dataset("generic", tmp_path / "d")
    assert [p.message for p in problems] == info.value.problems
    assert {p.path for p in problems} == {str(tmp_path / "d" / "dataset.yaml")}


@pytest.mark.parametrize(("text", "expected"), [
    (None, "dataset.yaml: missing; a generic dataset folder is described by its dataset.yaml"),
    ("tasks: [semseg\n", "not valid YAML"),
    ("- just\n- a list\n", "expected a mapping with keys among version, name, images, splits, tasks"),
])  # fmt: skip
def test_missing_or_unparsable_manifest(tmp_path, text, expected):
    (tmp_path / "d").mkdir()
    if text is not None:
        write_manifest(tmp_path / "d", text)
    with pytest.raises(ManifestError, match=expected) as info:
        read_manifest(tmp_path / "d")
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------------------------------------
# the loader and the checker


def test_loader_decodes_the_manifest_encodings(two_task_root):
    written = write_two_task(two_task_root)
    dataset = GenericDataset(two_task_root, "train")
    assert dataset.ids == IDS["train"] and dataset.tasks == ("semseg", "depth") and dataset.spec.name == "streets"
    sample = dataset.load_raw(1)
    labels = written["a2"]["semseg"]
    assert torch.equal(sample["semseg"], torch.from_numpy(np.where(labels == IGNORE, 255, labels).astype(np.int64)))
    assert torch.allclose(sample["depth"][0], torch.from_numpy(written["a2"]["depth"] / SCALE).float())
    assert sample["depth"][0, -1, -1] == 0 and sample["image"].shape == (3, HEIGHT, WIDTH)
    assert GenericDataset(two_task_root, "val", tasks=["depth"]).tasks == ("depth",)
    with pytest.raises(InputError, match="'normals' not annotated by dataset 'streets'"):
        GenericDataset(two_task_root, "val", tasks=["normals"])
    with pytest.raises(DatasetError, match="no split 'test'; its splits: train, val"):
        GenericDataset(two_task_root, "test")


def test_check_lists_every_file_problem(two_task_root):
    assert check_dataset("generic", two_task_root) == []
    write_png(two_task_root / "depth" / "a1.png", np.ones((HEIGHT, WIDTH), np.uint8))  # 8-bit: wrong encoding
    write_png(two_task_root / "semseg" / "a2.png", np.full((HEIGHT, WIDTH), 7, np.uint8))  # class 7 of 5
    (two_task_root / "semseg" / "b1.png").unlink()
    write_png(two_task_root / "semseg" / "b2.png", np.zeros((HEIGHT, WIDTH + 1), np.uint8))
    with open(two_task_root / "lists" / "val.txt", "a") as handle:
        handle.write("ghost\n")
    problems = {(Path(p.path).relative_to(two_task_root).as_posix(), p.message) for p in
                check_dataset("generic", two_task_root)}  # fmt: skip
    paths = sorted(path for path, _ in problems)
    assert paths == ["depth/a1.png", "lists/val.txt", "semseg/a2.png", "semseg/b1.png", "semseg/b2.png"]
    messages = dict(problems)
    assert "8-bit PNG; expected a 16-bit depth PNG (256 units per metre" in messages["depth/a1.png"]
    assert "label values 7 out of range; expected 0..4 or 250 (tasks.semseg.ignore)" in messages["semseg/a2.png"]
    assert "missing file for id 'b1'" in messages["semseg/b1.png"] and "val.txt" in messages["semseg/b1.png"]
    assert "differs from the image's" in messages["semseg/b2.png"]
    assert "'ghost' has no files at all" in messages["lists/val.txt"]
    with pytest.raises(DatasetError, match="8-bit PNG"):
        GenericDataset(two_task_root, "train").load_raw(0)


def test_binary_and_normals_files_are_validated(tmp_path):
    root = tmp_path / "d"
    write_manifest(root, {"splits": {"train": "train.txt"}, "tasks": {"edge": {}, "sal": {}, "normals": {}}})
    write_split(root / "train.txt", ["x"])
    write_png(root / "images" / "x.png", np.zeros((HEIGHT, WIDTH, 3), np.uint8))
    write_png(root / "edge" / "x.png", np.where(np.eye(HEIGHT, WIDTH) > 0, 255, 0).astype(np.uint8))
    write_png(root / "sal" / "x.png", np.ones((HEIGHT, WIDTH), np.uint8))  # 0 / 1 instead of 0 / 255
    normals = np.full((HEIGHT, WIDTH, 3), 128, np.uint8)
    normals[0, 0] = 0
    write_png(root / "normals" / "x.png", normals)
    problems = check_dataset("generic", root)
    assert [(Path(p.path).name, p.message) for p in problems] == [
        ("x.png", "label values 1 out of range; expected 0 or 255")
    ]
    assert Path(problems[0].path).parent.name == "sal"
    write_png(root / "sal" / "x.png", np.full((HEIGHT, WIDTH), 255, np.uint8))
    sample = GenericDataset(root, "train").load_raw(0)
    assert torch.equal(sample["edge"][0], torch.from_numpy(np.eye(HEIGHT, WIDTH, dtype=np.float32)))
    assert sample["sal"].dtype == torch.int64 and bool((sample["sal"] == 1).all())
    assert torch.equal(sample["normals"][:, 0, 0], torch.zeros(3))  # (0, 0, 0) = not annotated
    assert torch.allclose(sample["normals"][:, 1, 1], torch.full((3,), 2 * 128 / 255 - 1), atol=1e-6)
    write_png(root / "normals" / "x.png", normals[..., 0])
    assert "L PNG; expected an 8-bit RGB" in check_dataset("generic", root)[0].message


def test_encode_targets_is_the_inverse_of_the_loader(two_task_root, tmp_path):
    dataset = GenericDataset(two_task_root, "train")
    sample = dataset.load_raw(0)
    files = encode_targets(dataset.manifest, "a1", sample)
    for relative, data in files.items():
        (two_task_root / relative).write_bytes(data)
    again = dataset.load_raw(0)
    assert torch.equal(again["semseg"], sample["semseg"]) and torch.equal(again["depth"], sample["depth"])
    with pytest.raises(ValueError, match="depth outside 0..255.996 m"):
        encode_targets(dataset.manifest, "a1", {**sample, "depth": torch.full((1, 2, 2), 300.0)})
    with pytest.raises(ValueError, match="semseg label 5 outside 0..4"):
        encode_targets(dataset.manifest, "a1", {**sample, "semseg": torch.full((2, 2), 5)})


# ----------------------------------------------------------------------------------------------------------
# data convert


def _same_samples(a, b, tasks):
    for i in range(len(a)):
        x, y = a.load_raw(i), b.load_raw(i)
        assert torch.equal(x["image"], y["image"]) and x["meta"]["id"] == y["meta"]["id"]
        for task in tasks:
            assert x[task].dtype == y[task].dtype and torch.equal(x[task], y[task]), (task, x["meta"]["id"])


def test_convert_nyud_gives_the_same_samples_and_metrics_setup(nyud_root, tmp_path):
    out = tmp_path / "nyud-generic"
    summary = convert_dataset("nyud", nyud_root, out, progress=False, workers=2)
    assert summary["counts"] == {"train": 3, "val": 2} and summary["tasks"] == list(DATASETS["nyud"].tasks)
    assert check_dataset("generic", out) == []
    spec = read_manifest(out).spec
    assert spec.to_dict() == {**DATASETS["nyud"].to_dict(), "name": "nyud"}  # classes, palettes, edge constants
    for split in ("train", "val"):
        _same_samples(NYUDv2(nyud_root, split), GenericDataset(out, split), spec.tasks)
    edge = build_meters(spec, ["edge"])["edge"].protocol
    assert edge == build_meters("nyud", ["edge"])["edge"].protocol
    assert (out / "depth" / "0001.npy").read_bytes() == (nyud_root / "depth" / "0001.npy").read_bytes()


def test_convert_pascal_with_a_task_subset(pascal_root, tmp_path):
    out = tmp_path / "pc"
    convert_dataset("pascal", pascal_root, out, tasks=["human_parts", "sal", "edge", "normals"], name="pc",
                    progress=False)  # fmt: skip
    dataset = GenericDataset(out, "train")
    assert dataset.tasks == ("human_parts", "sal", "normals", "edge") and dataset.spec.name == "pc"
    _same_samples(PascalContext(pascal_root, "train", tasks=dataset.tasks), dataset, dataset.tasks)
    _same_samples(PascalContext(pascal_root, "val", tasks=dataset.tasks), GenericDataset(out, "val"), dataset.tasks)
    assert (out / "images" / "2008_000001.jpg").read_bytes() == (pascal_root / "JPEGImages" /
                                                                  "2008_000001.jpg").read_bytes()  # fmt: skip


def test_convert_refuses_to_overwrite_and_leaves_nothing_on_errors(nyud_root, tmp_path):
    out = tmp_path / "out"
    convert_dataset("nyud", nyud_root, out, progress=False)
    before = _hashes(out)
    with pytest.raises(ConvertOutputExistsError, match="already exists and is not empty; pass --overwrite"):
        convert_dataset("nyud", nyud_root, out, progress=False)
    (nyud_root / "edge" / "0002.png").write_bytes(b"not a png")  # a bad source file: found while converting
    with pytest.raises(DatasetError, match="0002.png"):
        convert_dataset("nyud", nyud_root, out, overwrite=True, progress=False)
    assert _hashes(out) == before
    (nyud_root / "edge" / "0002.png").unlink()  # a missing one: found before anything is written
    with pytest.raises(DatasetError, match="0002.png: missing file"):
        convert_dataset("nyud", nyud_root, tmp_path / "fresh", progress=False)
    assert not (tmp_path / "fresh").exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConvertOutputExistsError, match="1 file\\(s\\) that its dataset.yaml does not account for"):
        convert_dataset("nyud", nyud_root, out, overwrite=True, progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "thesis.tex").write_text("mine too")
    with pytest.raises(ConvertOutputExistsError, match="is not a generic dataset folder .*dataset.yaml: missing"):
        convert_dataset("nyud", nyud_root, tmp_path / "other", overwrite=True, progress=False)
    with pytest.raises(InputError, match="overlaps the source dataset"):
        convert_dataset("nyud", nyud_root, tmp_path, overwrite=True, progress=False)
    with pytest.raises(InputError, match="overlaps the source dataset"):
        convert_dataset("nyud", nyud_root, nyud_root / "generic", progress=False)
    assert (out / "notes.txt").read_text() == "mine"


# ----------------------------------------------------------------------------------------------------------
# data synth --layout generic


def test_synth_generic_writes_a_checked_dataset_of_the_chosen_tasks(tmp_path):
    from pamm.data.synth import synthesize
    from pamm.data.synth.layouts import GENERIC_CLASSES

    summary = synthesize(tmp_path, "generic", 3, 1, (48, 64), 0, progress=False, tasks=["depth", "semseg"],
                         preview=tmp_path / "sheet.png")  # fmt: skip
    root = tmp_path / "generic"
    assert summary["tasks"] == ["semseg", "depth"] and summary["root"] == str(root)
    spec = read_manifest(root).spec
    assert spec.tasks == ("semseg", "depth") and spec.class_names["semseg"] == GENERIC_CLASSES
    assert sorted(p.name for p in root.iterdir()) == ["dataset.yaml", "depth", "images", "pamm_synth.json",
                                                      "semseg", "splits"]  # fmt: skip
    assert check_dataset("generic", root) == []
    sample = GenericDataset(root, "train").load_raw(0)
    assert set(sample) == {"image", "semseg", "depth", "meta"} and float(sample["depth"].min()) > 0
    assert Image.open(tmp_path / "sheet.png").size[0] > 3 * 96  # image, semseg, depth columns
    # --overwrite replaces its own dataset (with other tasks), refused without it
    with pytest.raises(InputError, match="already holds a synthetic generic dataset"):
        synthesize(tmp_path, "generic", 2, 1, (48, 64), 0, progress=False)
    synthesize(tmp_path, "generic", 2, 1, (48, 64), 0, progress=False, overwrite=True)
    assert read_manifest(root).spec.tasks == ("semseg", "depth", "normals", "edge", "sal", "human_parts")
    assert check_dataset("generic", root) == []
    with pytest.raises(InputError, match="only the generic layout writes a chosen subset"):
        synthesize(tmp_path / "x", "nyud", 1, 0, (48, 64), 0, progress=False, tasks=["depth"])
    with pytest.raises(InputError, match="tasks must be distinct tasks among"):
        synthesize(tmp_path / "x", "generic", 1, 0, (48, 64), 0, progress=False, tasks=["depth", "flow"])


# ----------------------------------------------------------------------------------------------------------
# end to end: 5 classes + depth


def _tiny(root: Path, **overrides):
    from conftest import tiny_config

    return tiny_config(data__dataset="generic", data__root=str(root), data__train_size=[16, 32],
                       data__test_size=[16, 32], data__workers=0, model__dim=32, train__batch_size=2,
                       train__warmup_iters=0, train__eval_every=0, train__checkpoint_every=2, eval__edge=False,
                       train__loss_weights={"semseg": 1.0, "depth": 1.0}, **overrides)  # fmt: skip


def test_train_evaluate_predict_resume_on_a_two_task_dataset(two_task_root, tmp_path):
    import pamm
    from pamm.cli import main
    from pamm.engine.checkpoint import load_model, load_weights
    from pamm.engine.evaluator import evaluate
    from pamm.engine.trainer import Trainer

    cfg = _tiny(two_task_root, train__iterations=2)
    run = tmp_path / "run"
    Trainer(cfg, run, device="cpu", progress=False, log=lambda m: None).fit()
    tensors, _, extra = load_weights(run / "checkpoints" / "step-0000002.safetensors")
    assert tensors["heads.semseg.pred.weight"].shape[0] == 5 and tensors["heads.depth.pred.weight"].shape[0] == 1
    assert DatasetSpec.from_dict(extra["dataset_spec"]) == read_manifest(two_task_root).spec
    metrics = yaml.safe_load((run / "metrics.json").read_text())
    assert metrics["semseg"]["class_names"] == CLASSES and len(metrics["semseg"]["IoU"]) == 5
    assert set(metrics) >= {"semseg", "depth"} and "normals" not in metrics

    # resume to step 4 continues the same run
    Trainer(_tiny(two_task_root, train__iterations=4), run, resume=True, device="cpu", progress=False,
            log=lambda m: None).fit()  # fmt: skip
    assert "resumed from step-0000002.safetensors at step 2" in (run / "train.log").read_text()
    assert load_weights(run / "checkpoints" / "step-0000004.safetensors")[2]["step"] == 4

    # without the dataset folder: the checkpoint alone rebuilds heads, classes and palettes
    moved = tmp_path / "elsewhere"
    two_task_root.rename(moved)
    model, _ = load_model(run / "checkpoints" / "best.safetensors")
    assert model.meta.spec.class_names["semseg"] == tuple(CLASSES) and model.meta.tasks == ("semseg", "depth")
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(image)
    assert main(["predict", "--checkpoint", str(run), str(image), "--out", str(tmp_path / "pred")]) == 0
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == [
        "photo_depth.npy",
        "photo_depth.png",
        "photo_panel.png",
        "photo_semseg.npy",
        "photo_semseg.png",
    ]
    semseg = np.load(tmp_path / "pred" / "photo_semseg.npy")
    assert semseg.shape == (20, 30) and semseg.max() < 5
    colours = Image.open(tmp_path / "pred" / "photo_semseg.png").getpalette()[: 3 * 5]  # the manifest's colours
    assert colours == [v for i in range(5) for v in (10 * i, 0, 0)]
    prediction = pamm.load(run)(np.zeros((20, 30, 3), np.uint8))
    assert set(prediction) == {"semseg", "depth"}

    # export: a pretrained folder and ONNX, from the run folder, still without the dataset
    from pamm.interop.hub import load_trained
    from pamm.models import PAMM

    trained = load_trained(run)
    assert trained.model.meta.label_space == read_manifest(moved).spec and trained.model.meta.dataset == "streets"
    assert main(["export", "--checkpoint", str(run), "--format", "pretrained", "--out", str(tmp_path / "pre")]) == 0
    again = PAMM.from_pretrained(tmp_path / "pre")
    assert again.meta == model.meta and again.meta.spec.palettes["semseg"][3] == (30, 0, 0)
    assert main(["export", "--checkpoint", str(run), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    import onnx

    properties = {p.key: p.value for p in onnx.load(tmp_path / "m.onnx", load_external_data=False).metadata_props}
    assert yaml.safe_load(properties["class_names"]) == {"semseg": CLASSES} and properties["dataset"] == "streets"

    # evaluate against the folder, and against a folder whose classes differ
    moved.rename(two_task_root)
    result = evaluate(model, cfg)
    assert result["images"] == 2 and len(result["semseg"]["IoU"]) == 5
    data = two_task_manifest()
    data["tasks"]["semseg"]["classes"][-1] = "bush"
    write_manifest(two_task_root, data)
    with pytest.raises(InputError, match="semseg classes differ: .*'tree'.* the data's .*'bush'"):
        evaluate(model, cfg)
    with pytest.raises(InputError, match="--resume: .* was trained on another label space"):
        Trainer(_tiny(two_task_root, train__iterations=6), run, resume=True, device="cpu", progress=False,
                log=lambda m: None).fit()  # fmt: skip


def test_cli_train_refuses_a_malformed_manifest_before_writing(two_task_root, tmp_path, capsys):
    from pamm.cli import main

    data = two_task_manifest()
    data["tasks"]["semseg"].pop("classes")
    data["tasks"]["flow"] = {}
    write_manifest(two_task_root, data)
    run = tmp_path / "run"
    train = ["train", "--config", "generic-demo", "--out", str(run), "--set", f"data.root={two_task_root}"]
    assert main(train) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"pamm train: error: {two_task_root / 'dataset.yaml'}: 2 problems")
    assert "tasks.semseg.classes: missing" in lines[0] and "tasks.flow: unknown task" in lines[0]
    assert not run.exists()
    # a split naming a missing file: also refused before the run folder exists
    write_two_task(two_task_root)
    (two_task_root / "depth" / "a3.png").unlink()
    assert main(train) == 2
    assert "a3.png: missing file" in capsys.readouterr().err and not run.exists()


def test_cli_data_commands(nyud_root, tmp_path, capsys):
    from pamm.cli import main

    out = tmp_path / "g"
    assert main(["data", "convert", "--from", "nyud", "--root", str(nyud_root), "--out", str(out), "--quiet",
                 "--tasks", "depth,semseg", "--splits", "val", "--name", "mini"]) == 0  # fmt: skip
    assert f"wrote {out}: 2 val images from {nyud_root} (nyud; tasks semseg,depth;" in capsys.readouterr().out
    assert read_manifest(out).spec.name == "mini" and list(read_manifest(out).splits) == ["val"]
    assert main(["data", "check", "--dataset", "generic", "--root", str(out)]) == 0
    assert main(["data", "convert", "--from", "nyud", "--root", str(nyud_root), "--out", str(out), "--quiet"]) == 2
    assert "already exists and is not empty; pass --overwrite" in capsys.readouterr().err
    (out / "semseg" / "0004.png").write_bytes(b"")
    assert main(["data", "check", "--dataset", "generic", "--root", str(out)]) == 2
    assert f"{out / 'semseg' / '0004.png'}: file is empty" in capsys.readouterr().out
    assert main(["data", "synth", "--out", str(tmp_path / "s"), "--layout", "nyud", "--tasks", "depth"]) == 2
    assert "only the generic layout writes a chosen subset of tasks" in capsys.readouterr().err
    assert main(["data", "synth", "--out", str(tmp_path / "s"), "--layout", "generic", "--tasks", "sal,edge",
                 "--train", "2", "--val", "1", "--size", "32x48", "--quiet"]) == 0  # fmt: skip
    assert "(generic layout, tasks edge,sal, 32x48" in capsys.readouterr().out
    assert main(["data", "check", "--dataset", "generic", "--root", str(tmp_path / "s" / "generic")]) == 0


def test_a_damaged_stored_spec_is_named(tmp_path):
    from pamm.engine.checkpoint import CheckpointError, stored_dataset_spec

    assert stored_dataset_spec({}, tmp_path / "x.safetensors") is None
    with pytest.raises(CheckpointError, match="x.safetensors: stored dataset spec is invalid: not a dataset spec"):
        stored_dataset_spec({"dataset_spec": {"name": "a"}}, tmp_path / "x.safetensors")
    broken = {**DATASETS["nyud"].to_dict(), "num_outputs": {"semseg": 3, "depth": 1, "normals": 3, "edge": 1}}
    with pytest.raises(CheckpointError, match="not a consistent dataset spec"):
        stored_dataset_spec({"dataset_spec": broken}, tmp_path / "x.safetensors")


def test_config_names_the_generic_dataset_without_reading_it(tmp_path):
    import pamm

    cfg = pamm.load_config("generic-demo", {"data.root": str(tmp_path / "nothing-yet")})
    assert cfg.data.dataset == "generic"
    with pytest.raises(ManifestError, match="not a folder"):
        _ = cfg.data.task_list
    write_two_task(tmp_path / "streets")
    cfg = pamm.load_config("generic-demo", {"data.root": str(tmp_path / "streets"), "data.tasks": ["depth"]})
    assert cfg.data.task_list == ["depth"]
    cfg = pamm.load_config("generic-demo", {"data.root": str(tmp_path / "streets"), "data.tasks": ["normals"]})
    with pytest.raises(InputError, match="config key 'data.tasks': 'normals' not annotated by dataset 'streets'"):
        _ = cfg.data.task_list
    with pytest.raises(InputError, match="'data.tasks': 'flow' is not a task of generic"):
        pamm.load_config("generic-demo", {"data.tasks": ["flow"]})


def test_visualisation_follows_the_spec():
    from pamm.viz import distinct_palette, make_panel, palette_for, voc_palette

    spec = parse_manifest(two_task_manifest(), Path("x")).spec
    assert np.array_equal(palette_for(spec, "semseg"), np.array([[10 * i, 0, 0] for i in range(5)], np.uint8))
    assert np.array_equal(palette_for("nyud", "semseg"), distinct_palette(40))
    assert np.array_equal(palette_for("pascal", "semseg"), voc_palette(21))
    labels = np.zeros((8, 8), np.int64)
    labels[4:] = 3
    panel = make_panel(np.zeros((8, 8, 3), np.uint8), {"semseg": labels, "depth": np.ones((8, 8))}, meta=spec)
    assert panel.size[0] > 2 * 168
    pixels = {tuple(c) for c in np.asarray(panel).reshape(-1, 3)}
    assert (0, 0, 0) in pixels and (30, 0, 0) in pixels  # classes 0 and 3 in the manifest's colours
