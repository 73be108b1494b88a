"""Pretrained folders (save_pretrained / from_pretrained / push_to_hub), model cards, the model sources of
pamm.interop.hub, the Hub cache read offline, and convert-official writing a pretrained folder. No network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

import pamm
from pamm import cli
from pamm.config import config_from_checkpoint, config_to_dict
from pamm.engine.checkpoint import save_weights
from pamm.engine.evaluator import write_metrics
from pamm.errors import InputError
from pamm.interop.hub import export_pretrained, load_trained
from pamm.models import PAMM
from pamm.models.pretrained import CARD_FILE, CONFIG_FILE, WEIGHTS_FILE, file_sha256
from test_convert import tiny_official  # noqa: F401 - the synthesised official checkpoint fixture

from conftest import tiny_config


@pytest.fixture(scope="module")
def tiny():
    """(config, model with non-trivial BatchNorm statistics, a fixed input)."""
    torch.manual_seed(3)
    cfg = tiny_config()
    model = pamm.build_model(cfg, load_backbone_weights=False)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
            elif name.endswith("running_mean"):
                buf.normal_(0, 0.1)
    return cfg, model.eval(), torch.randn(2, 3, 64, 96)


@pytest.fixture(scope="module")
def folder(tiny, tmp_path_factory):
    cfg, model, _ = tiny
    out = tmp_path_factory.mktemp("pre") / "tiny-pamm"
    model.save_pretrained(out, config=cfg)
    return out


def outputs(model, x):
    with torch.no_grad():
        return model(x)


def one_line_error(capsys, argv) -> tuple[int, str]:
    code = cli.main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


def test_save_then_load_gives_identical_outputs(tiny, folder):
    cfg, model, x = tiny
    assert sorted(p.name for p in folder.iterdir()) == [CARD_FILE, CONFIG_FILE, WEIGHTS_FILE]
    loaded = PAMM.from_pretrained(folder)
    assert not loaded.training
    expected, got = outputs(model, x), outputs(loaded, x)
    assert all(torch.equal(expected[t], got[t]) for t in model.tasks)
    assert config_to_dict(config_from_checkpoint(loaded.pretrained_experiment)) == config_to_dict(
        config_from_checkpoint(config_to_dict(cfg))
    )
    description = json.loads((folder / CONFIG_FILE).read_text())
    assert description["weights"]["sha256"] == file_sha256(folder / WEIGHTS_FILE)
    assert description["meta"]["tasks"] == list(model.tasks)


def test_model_card_has_hub_front_matter(tiny, folder):
    card = ModelCard.load(folder / CARD_FILE)
    data = card.data.to_dict()
    assert data["library_name"] == "pamm" and data["license"] == "apache-2.0"
    assert {"pamm", "multi-task", "pytorch_model_hub_mixin"} <= set(data["tags"])
    assert data["pamm"]["tasks"] == list(tiny[1].tasks)
    total = sum(p.numel() for p in tiny[1].parameters())
    assert f"{total:,}" in card.text and "PAMM.from_pretrained" in card.text


@pytest.mark.parametrize("missing", [CONFIG_FILE, WEIGHTS_FILE])
def test_a_missing_file_is_one_line(folder, tmp_path, capsys, missing):
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in folder.iterdir():
        if p.name != missing:
            (copy / p.name).write_bytes(p.read_bytes())
    with pytest.raises(InputError, match=f"{missing}: missing"):
        PAMM.from_pretrained(copy)
    code, err = one_line_error(
        capsys, ["export", "--checkpoint", str(copy), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]
    )
    assert code == 2 and len(err.splitlines()) == 1 and missing in err
    assert not (tmp_path / "m.onnx").exists()


def test_tampered_weights_and_config_are_refused(folder, tmp_path, capsys):
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in folder.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    weights = bytearray((copy / WEIGHTS_FILE).read_bytes())
    weights[-10] ^= 0x40  # one bit of one weight
    (copy / WEIGHTS_FILE).write_bytes(bytes(weights))
    with pytest.raises(InputError, match="differs from the SHA-256 recorded in config.json"):
        PAMM.from_pretrained(copy)
    code, err = one_line_error(
        capsys, ["export", "--checkpoint", str(copy), "--format", "pretrained", "--out", str(tmp_path / "again")]
    )
    assert code == 2 and len(err.splitlines()) == 1 and "SHA-256" in err
    assert not (tmp_path / "again").exists()
    (copy / WEIGHTS_FILE).write_bytes((folder / WEIGHTS_FILE).read_bytes())
    (copy / CONFIG_FILE).write_text((folder / CONFIG_FILE).read_text()[:-20])
    with pytest.raises(InputError, match="config.json: not valid JSON"):
        PAMM.from_pretrained(copy)
    description = json.loads((folder / CONFIG_FILE).read_text())
    description["model"]["dim"] = 32
    (copy / CONFIG_FILE).write_text(json.dumps(description))
    with pytest.raises(InputError, match="does not fit the architecture in config.json: .*mis-shaped"):
        PAMM.from_pretrained(copy)
    description["model"]["dim"] = -1
    (copy / CONFIG_FILE).write_text(json.dumps(description))
    with pytest.raises(InputError, match=r"config.json: .*model.dim"):
        PAMM.from_pretrained(copy)


def test_existing_folders_are_never_replaced_by_surprise(tiny, folder, tmp_path):
    cfg, model, _ = tiny
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="exists and is not empty"):
        model.save_pretrained(busy)
    with pytest.raises(InputError, match="not a pamm pretrained folder"):
        model.save_pretrained(busy, overwrite=True)
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]
    out = tmp_path / "pre"
    model.save_pretrained(out)
    before = (out / CONFIG_FILE).read_bytes()
    with pytest.raises(InputError, match="exists and is not empty"):
        model.save_pretrained(out)
    assert (out / CONFIG_FILE).read_bytes() == before
    other = pamm.build_model(tiny_config(**{"model.dim": 32}), load_backbone_weights=False)
    other.save_pretrained(out, overwrite=True)
    assert PAMM.from_pretrained(out).cfg.dim == 32
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        model.save_pretrained(tmp_path / "file")


def hub_cache(root: Path, repo: str, folder: Path, revision: str = "0123456789abcdef0123456789abcdef01234567"):
    """The Hub cache layout of ``repo`` holding ``folder``'s files: models--org--name/{refs/main, snapshots/REV/}."""
    base = root / f"models--{repo.replace('/', '--')}"
    snapshot = base / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for p in folder.iterdir():
        (snapshot / p.name).write_bytes(p.read_bytes())
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(revision)
    return snapshot


def test_hub_ids_load_from_the_cache_offline(tiny, folder, tmp_path):
    """HF_HUB_CACHE with the cache layout and HF_HUB_OFFLINE=1 (a fresh process: huggingface_hub reads both at
    import): PAMM.from_pretrained and pamm.interop.hub.load_trained find the model by id; an id not in the cache
    is one line."""
    _, model, x = tiny
    hub_cache(tmp_path / "cache", "someone/tiny-pamm", folder)
    torch.save({"x": x, **outputs(model, x)}, tmp_path / "expected.pt")
    script = (
        "import sys, torch\n"
        "torch.set_num_threads(1)  # as the test process: same kernels, bitwise equal outputs\n"
        "from pamm.models import PAMM\n"
        "from pamm.interop.hub import load_trained\n"
        "from pamm.errors import InputError\n"
        f"ref = torch.load({str(tmp_path / 'expected.pt')!r})\n"
        "model = PAMM.from_pretrained('someone/tiny-pamm')\n"
        "trained = load_trained('someone/tiny-pamm@main')\n"
        "for m in (model, trained.model):\n"
        "    with torch.no_grad():\n"
        "        out = m(ref['x'])\n"
        "    assert all(torch.equal(out[t], ref[t]) for t in out), 'outputs differ'\n"
        "assert trained.kind == 'hub' and trained.experiment is not None\n"
        "try:\n"
        "    PAMM.from_pretrained('someone/not-cached')\n"
        "except InputError as e:\n"
        "    print(e)\n"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    message = done.stdout.strip()
    assert len(message.splitlines()) == 1
    assert "someone/not-cached" in message and "HF_HUB_OFFLINE" in message and str(tmp_path / "cache") in message


def test_hub_revision_and_explicit_cache_dir(folder, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = hub_cache(tmp_path, "org/model", folder, revision="f" * 40)
    assert PAMM.from_pretrained("org/model", cache_dir=tmp_path, local_files_only=True).tasks
    (snapshot / WEIGHTS_FILE).unlink()
    with pytest.raises(InputError, match="org/model"):
        PAMM.from_pretrained("org/model", cache_dir=tmp_path, local_files_only=True)


@pytest.fixture(scope="module")
def run_folder(tiny, tmp_path_factory):
    """A run folder: checkpoints/best.safetensors of the tiny model, and a metrics.json."""
    cfg, model, _ = tiny
    run = tmp_path_factory.mktemp("run")
    save_weights(run / "checkpoints" / "best.safetensors", model.state_dict(), cfg)
    metrics = {
        "semseg": {"mIoU": 41.25, "pixel_acc": 70.5},
        "depth": {"rmse": 0.4712},
        "normals": {"mean": 12.75},
        "edge": {"odsF": 68.5},
    }
    write_metrics(run / "metrics.json", metrics, cfg, extra={"checkpoint": "runs/x/checkpoints/best.safetensors",
                                                             "split": "val"})  # fmt: skip
    return run


def test_export_pretrained_from_a_run_writes_a_model_card_with_its_metrics(tiny, run_folder, tmp_path, capsys):
    cfg, model, x = tiny
    out = tmp_path / "shared"
    code = cli.main(
        [
            "export",
            "--checkpoint",
            str(run_folder),
            "--format",
            "pretrained",
            "--out",
            str(out),
            "--hub-id",
            "me/pamm-tiny",
            "--license",
            "cc-by-4.0",
        ]
    )
    assert code == 0, capsys.readouterr().err
    loaded = PAMM.from_pretrained(out)
    expected, got = outputs(model, x), outputs(loaded, x)
    assert all(torch.equal(expected[t], got[t]) for t in model.tasks)
    card = ModelCard.load(out / CARD_FILE)
    data = card.data.to_dict()
    assert data["license"] == "cc-by-4.0" and data["pamm"]["preset"] == cfg.name
    results = {
        (r["task"]["name"], m["type"]): m["value"] for r in data["model-index"][0]["results"] for m in r["metrics"]
    }
    assert results[("semseg", "mIoU")] == 41.25 and results[("depth", "rmse")] == 0.4712
    assert "| semseg | mIoU | 41.2500 |" in card.text and 'pamm.load("me/pamm-tiny")' in card.text
    assert "## Training" in card.text and f"{cfg.train.iterations:,} iterations" in card.text
    # the folder is itself a source: exporting it again gives the same weights
    again = export_pretrained(out, tmp_path / "again")
    from safetensors.torch import load_file

    first, second = load_file(out / WEIGHTS_FILE), load_file(again / WEIGHTS_FILE)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    code, err = one_line_error(
        capsys, ["export", "--checkpoint", str(run_folder), "--format", "pretrained", "--out", str(out)]
    )
    assert code == 2 and "exists" in err and len(err.splitlines()) == 1


def test_every_source_kind_loads_and_bad_sources_are_one_line(tiny, run_folder, folder, tmp_path):
    _, model, x = tiny
    expected = outputs(model, x)
    for source, kind in [
        (run_folder, "run"),
        (run_folder / "checkpoints" / "best.safetensors", "weights"),
        (folder, "pretrained"),
    ]:
        trained = load_trained(source)
        assert trained.kind == kind
        got = outputs(trained.model, x)
        assert all(torch.equal(expected[t], got[t]) for t in model.tasks)
    assert load_trained(run_folder).metrics["semseg"]["mIoU"] == 41.25
    (tmp_path / "empty").mkdir()
    for source, pattern in [
        (tmp_path / "nothing-here.safetensors", "no such file or folder"),
        (tmp_path / "empty", "neither a run folder"),
        (tmp_path / "a" / "b" / "c", "no such file or folder"),
    ]:
        with pytest.raises(InputError, match=pattern) as info:
            load_trained(source)
        assert len(str(info.value).splitlines()) == 1
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(InputError, match="no valid checkpoint in .*checkpoints") as info:
        load_trained(tmp_path / "run")
    assert len(str(info.value).splitlines()) == 1


def test_push_to_hub_uploads_a_verified_pretrained_folder(tiny, tmp_path, monkeypatch):
    """push_to_hub (huggingface_hub's) saves through our save_pretrained; the upload is captured instead of sent."""
    from huggingface_hub import HfApi

    cfg, model, x = tiny
    seen = {}

    def create_repo(self, repo_id, **kwargs):
        from types import SimpleNamespace

        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        target = tmp_path / "uploaded"
        target.mkdir()
        for p in Path(folder_path).iterdir():
            (target / p.name).write_bytes(p.read_bytes())
        seen["repo_id"] = repo_id
        return "https://example.invalid/commit"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    assert model.push_to_hub("me/tiny", config=cfg) == "https://example.invalid/commit"
    assert seen["repo_id"] == "me/tiny"
    loaded = PAMM.from_pretrained(tmp_path / "uploaded")
    assert loaded.pretrained_experiment is not None
    got, expected = outputs(loaded, x), outputs(model, x)
    assert all(torch.equal(expected[t], got[t]) for t in model.tasks)


def test_convert_official_writes_a_pretrained_folder(tiny_official, tmp_path, capsys):  # noqa: F811
    src, _ = tiny_official
    out = tmp_path / "converted"
    from pamm.interop.convert import convert_official

    from conftest import TINY

    report = convert_official(src, out, overrides=TINY, prior_seed=7)
    assert report.prior_seed == 7
    ref = convert_official(src, tmp_path / "ref.safetensors", overrides=TINY, prior_seed=7)
    assert ref.mapped_tensors == report.mapped_tensors
    loaded = PAMM.from_pretrained(out)
    from pamm.engine.checkpoint import load_weights

    state, _, _ = load_weights(tmp_path / "ref.safetensors")
    assert all(torch.equal(state[k], v) for k, v in loaded.state_dict().items())
    card = (out / CARD_FILE).read_text()
    assert "released checkpoint `PAMM_nyud.pth`" in card and "seed 7" in card
    code, err = one_line_error(capsys, ["convert-official", str(src), str(out), "--prior-seed", "1"])
    assert code == 2 and "exists" in err and len(err.splitlines()) == 1
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    code, err = one_line_error(capsys, ["convert-official", str(src), str(busy), "--overwrite"])
    assert code == 2 and "never replaced" in err and (busy / "keep.txt").read_text() == "x"
