"""ONNX export (pamm.interop.export, `pamm export --format onnx`): the demo model and a small ViT config run in ONNX
Runtime on the CPU, every task output within 1e-4 relative of PyTorch on random and embedded-data images; bad
requests are one-line errors (exit 2) that leave nothing behind."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import pamm
from pamm import cli
from pamm.data.synth import render_scene, scene_rng
from pamm.engine.checkpoint import save_weights
from pamm.interop.export import ONNX_OPSET, OnnxGraph, export_onnx
from pamm.tasks import postprocess

from conftest import tiny_config

ort = pytest.importorskip("onnxruntime", reason="the export extra (pip install 'pamm[export]') is not installed")
onnx = pytest.importorskip("onnx")

TOLERANCE = 1e-4


def images(size: tuple[int, int], count: int, seed: int = 0) -> torch.Tensor:
    """``count`` images (count, 3, H, W) in [0, 1]: the first half rendered by the embedded dataset, the rest random."""
    rendered = [torch.from_numpy(render_scene(scene_rng(seed, "nyud", "val", i), size, "nyud")["image"])
                .permute(2, 0, 1).float() / 255 for i in range((count + 1) // 2)]  # fmt: skip
    noise = [torch.rand(3, *size, generator=torch.Generator().manual_seed(seed + i)) for i in range(count // 2)]
    return torch.stack(rendered + noise)


def relative(a: torch.Tensor, b: np.ndarray) -> float:
    return float((torch.from_numpy(b) - a).abs().max() / a.abs().max())


def run(path, image: torch.Tensor) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"image": image.numpy()})))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo preset (random weights, fixed batch) exported through the API: (model, report)."""
    torch.manual_seed(0)
    cfg = pamm.load_config("demo", {"model.backbone.weights": None})
    model = pamm.build_model(cfg, load_backbone_weights=False).eval()
    report = export_onnx(model, tmp_path_factory.mktemp("demo") / "demo.onnx")
    return model, report


@pytest.mark.slow
def test_demo_model_runs_in_onnxruntime_like_pytorch(demo):
    model, report = demo
    assert report.size == (96, 128) and report.batch == 1 and report.opset == ONNX_OPSET
    assert max(report.max_relative_difference.values()) < TOLERANCE
    graph = OnnxGraph(model)
    for image in images((96, 128), 2).split(1):  # an embedded-data image, then a random one
        with torch.no_grad():
            expected = dict(zip(model.tasks, graph(image)))
        got = run(report.path, image)
        assert list(got) == list(model.tasks)
        for task in model.tasks:
            assert got[task].shape == tuple(expected[task].shape) == (1, model.meta.num_outputs[task], 96, 128)
            assert relative(expected[task], got[task]) < TOLERANCE, task
    proto = onnx.load(str(report.path))
    assert proto.opset_import[0].version == ONNX_OPSET
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["tasks"]) == list(model.tasks) and json.loads(meta["mean"]) == list(model.meta.mean)
    assert json.loads(meta["size"]) == [96, 128] and meta["postprocess"] == "false"
    assert "wall" in json.loads(meta["class_names"])["semseg"]
    # no Numba / Triton kernel in the graph: only standard ONNX operators
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"}


@pytest.mark.slow
def test_vit_export_from_the_cli_with_dynamic_batch_and_postprocessing(tmp_path, capsys):
    torch.manual_seed(1)
    cfg = tiny_config()
    model = pamm.build_model(cfg, load_backbone_weights=False).eval()
    weights = tmp_path / "tiny.safetensors"
    save_weights(weights, model.state_dict(), cfg)
    out = tmp_path / "tiny.onnx"
    code = cli.main(
        [
            "export",
            "--checkpoint",
            str(weights),
            "--out",
            str(out),
            "--size",
            "48x80",
            "--dynamic-batch",
            "--postprocess",
        ]
    )
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "checked in ONNX Runtime" in printed.out and "dynamic batch" in printed.out
    batch = images((48, 80), 3, seed=5)
    got = run(out, batch)
    with torch.no_grad():
        raw = model(
            (batch - torch.tensor(model.meta.mean).view(1, 3, 1, 1)) / torch.tensor(model.meta.std).view(1, 3, 1, 1)
        )
    for task in model.tasks:
        expected = postprocess(task, raw[task])
        assert got[task].shape == tuple(expected.shape)
        if task == "semseg":  # class ids: equal wherever the top two logits are not a near-tie
            top2 = raw[task].topk(2, dim=1).values
            clear = (top2[:, 0] - top2[:, 1]) > TOLERANCE * raw[task].abs().max()
            assert got[task].dtype == np.int64
            assert np.array_equal(got[task][clear.numpy()], expected[clear].numpy())
        else:
            assert relative(expected, got[task]) < TOLERANCE, task
    assert np.allclose(np.linalg.norm(got["normals"], axis=1), 1, atol=1e-5)
    single = run(out, batch[:1])  # the same file with another batch size
    assert np.array_equal(single["semseg"][0], got["semseg"][0])


def test_bad_requests_are_one_line_errors_and_write_nothing(tmp_path, capsys):
    cfg = tiny_config()
    model = pamm.build_model(cfg, load_backbone_weights=False)
    weights = tmp_path / "tiny.safetensors"
    save_weights(weights, model.state_dict(), cfg)
    existing = tmp_path / "old.onnx"
    existing.write_bytes(b"keep me")
    (tmp_path / "folder.onnx").mkdir()
    cases = [
        (["--size", "50x80"], tmp_path / "a.onnx", "multiples of the backbone stride 16"),
        (["--size", "big"], tmp_path / "b.onnx", "expected HEIGHTxWIDTH"),
        (["--format", "tflite"], tmp_path / "c.onnx", "unknown export format 'tflite'"),
        ([], existing, "exists; pass --overwrite"),
        ([], tmp_path / "folder.onnx", "is a folder"),
    ]
    for extra, out, message in cases:
        code = cli.main(["export", "--checkpoint", str(weights), "--out", str(out), *extra])
        err = capsys.readouterr().err.strip()
        assert code == 2, (extra, err)
        assert len(err.splitlines()) == 1 and message in err, err
    assert existing.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.onnx", "old.onnx", "tiny.safetensors"]
    code = cli.main(["export", "--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "d.onnx")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no such file or folder" in err and len(err.splitlines()) == 1
