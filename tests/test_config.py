"""Typed configuration: presets, overrides, the architecture/runtime split, configs of older versions, and clear
errors for every kind of bad input."""

import dataclasses
import re
import subprocess
import sys

import pytest
import yaml

import pamm
from pamm.config import (
    ConfigError,
    RuntimeConfig,
    config_from_checkpoint,
    config_from_dict,
    config_to_dict,
    migrate_config_dict,
    override_config,
    parse_override,
)


def test_presets_load_and_round_trip():
    assert {"nyud-vitl", "pascal-vitl", "demo"} <= set(pamm.preset_names())
    for name in pamm.preset_names():
        cfg = pamm.load_config(name)
        assert config_from_dict(config_to_dict(cfg)) == cfg


def test_paper_settings():
    nyud, pascal = pamm.load_config("nyud-vitl"), pamm.load_config("pascal-vitl")
    assert (nyud.model.dim, nyud.model.d_state, nyud.grid) == (768, 16, (28, 36))
    assert (pascal.model.dim, pascal.model.d_state, pascal.grid) == (1024, 64, (32, 32))
    assert nyud.train.lr == 1e-5 and pascal.train.lr == 2e-5 and nyud.train.iterations == 40000
    assert nyud.train.loss_weights == {"semseg": 1.0, "depth": 1.0, "normals": 10.0, "edge": 50.0}
    assert pascal.train.loss_weights == {"semseg": 1.0, "human_parts": 2.0, "sal": 5.0, "edge": 50.0, "normals": 10.0}
    assert (nyud.train.load_balancing, pascal.train.load_balancing) == (5e-4, 1e-4)
    assert nyud.model.backbone.taps == [5, 11, 17, 23] and nyud.model.backbone.drop_path == 0.15
    assert (nyud.model.num_experts, nyud.model.expert_rank, nyud.model.top_k, nyud.model.expert_kernel) == (15, 4, 9, 9)
    assert nyud.model.scan.kind == "hilbert" and nyud.model.scan.directions == 4
    assert pascal.data.task_list == ["semseg", "human_parts", "sal", "normals", "edge"]


def test_overrides_and_yaml_values():
    cfg = pamm.load_config(
        "demo", dict(parse_override(s) for s in ["train.lr=3e-4", "data.tasks=[depth, edge]", "model.priors=false"])
    )
    assert cfg.train.lr == 3e-4 and cfg.data.task_list == ["depth", "edge"] and cfg.model.priors is False
    assert override_config(cfg, {"train.iterations": 70}).train.iterations == 70


def test_yaml_file_with_base(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("base: nyud-vitl\nname: mine\ntrain:\n  batch_size: 2\n")
    cfg = pamm.load_config(f)
    assert cfg.name == "mine" and cfg.train.batch_size == 2 and cfg.model.dim == 768


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"train.lrr": 1.0}, r"unknown config key 'train.lrr'; allowed keys here: \[.*'lr'"),
        ({"model.dim": "wide"}, r"config key 'model.dim': expected an integer, got 'wide'"),
        ({"model.dim": 1.5}, r"config key 'model.dim': expected an integer"),
        ({"model.priors": "yes"}, r"config key 'model.priors': expected true or false"),
        ({"model.dim": 100}, r"config key 'model.dim': must be a positive multiple of 32"),
        ({"model.top_k": 16}, r"config key 'model.top_k': must be in \[1, num_experts=15\]"),
        ({"model.scan.kind": "spiral"}, r"config key 'model.scan.kind': must be one of \['hilbert'"),
        ({"model.scan.directions": 3}, r"config key 'model.scan.directions': must be 1, 2 or 4"),
        ({"data.tasks": ["sal"]}, r"config key 'data.tasks': 'sal' is not a task of nyud"),
        ({"data.train_size": [450, 576]}, r"config key 'data.train_size': must be a multiple of the backbone patch"),
        ({"train.amp": "fp8"}, r"config key 'train.amp': must be one of"),
        (
            {"data.scale_range": [2.0, 0.5]},
            r"config key 'data.scale_range': must be \[low, high\] with 0 < low <= high",
        ),
        ({"train.loss_weights": {"semseg": 1.0}}, r"config key 'train.loss_weights': no weight for task 'depth'"),
        ({"model.backbone": 3}, r"config key 'model.backbone': expected a mapping"),
        ({"eval.edge_workers": -2}, r"config key 'eval.edge_workers': must be a number of processes >= 0, or -1"),
    ],
)
def test_bad_values_name_the_key(overrides, match):
    with pytest.raises(ConfigError, match=match):
        pamm.load_config("nyud-vitl", overrides)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="no preset or config file named 'nope'"):
        pamm.load_config("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        pamm.load_config(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping at the top level"):
        pamm.load_config(bad)
    bad.write_text("base: nope\n")
    with pytest.raises(ConfigError, match="config key 'base': must name a preset"):
        pamm.load_config(bad)
    with pytest.raises(ConfigError, match="must look like dotted.key=value"):
        parse_override("train.lr")


# ----------------------------------------------------------------------------------------------------------
# Architecture vs runtime


def test_runtime_is_its_own_section():
    cfg = pamm.load_config(
        "nyud-vitl", {"runtime.scan_backend": "chunked", "runtime.activation_checkpointing": ["backbone"]}
    )
    assert cfg.runtime == RuntimeConfig(scan_backend="chunked", activation_checkpointing=["backbone"])
    model_keys = set(config_to_dict(cfg)["model"])
    assert not model_keys & {"fused", "checkpoint_backbone", "checkpoint_stages", "channels_last"}
    assert set(config_to_dict(cfg)["model"]["scan"]) == {"kind", "directions"}
    assert pamm.load_config("demo").runtime == RuntimeConfig()


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"runtime.scan_backend": "cuda"}, r"config key 'runtime.scan_backend': must be one of \['auto', "),
        (
            {"runtime.activation_checkpointing": ["backbone", "heads"]},
            r"config key 'runtime.activation_checkpointing': unknown place 'heads'; allowed: \['backbone', 'stages'\]",
        ),
        ({"runtime.activation_checkpointing": ["stages", "stages"]}, r"duplicate place"),
        ({"runtime.activation_checkpointing": True}, r"'runtime.activation_checkpointing': expected a list of str"),
        ({"runtime.fused": True}, r"unknown config key 'runtime.fused'"),
    ],
)
def test_bad_runtime_values_name_the_key(overrides, match):
    with pytest.raises(ConfigError, match=match):
        pamm.load_config("nyud-vitl", overrides)


MOVED = [
    ("model.scan.backend", "chunked", r"config key 'model.scan.backend' moved to 'runtime.scan_backend'$"),
    ("model.channels_last", False, r"config key 'model.channels_last' moved to 'runtime.channels_last'$"),
    (
        "model.checkpoint_backbone",
        True,
        r"config key 'model.checkpoint_backbone' moved to "
        r"'runtime.activation_checkpointing', a list of places: write runtime.activation_checkpointing=\[backbone\]$",
    ),
    ("model.checkpoint_stages", True, r"moved to 'runtime.activation_checkpointing'.*=\[stages\]$"),
    ("model.fused", True, r"config key 'model.fused' was removed: the model has one execution, the fused one"),
]


@pytest.mark.parametrize("key,value,match", MOVED)
def test_old_keys_given_by_a_user_name_their_new_place(tmp_path, key, value, match):
    with pytest.raises(ConfigError, match=match):  # --set
        pamm.load_config("demo", {key: value})
    with pytest.raises(ConfigError, match=match):  # overrides of a loaded config (pamm evaluate --set)
        override_config(pamm.load_config("demo"), {key: value})
    *parents, last = key.split(".")
    node = {last: value}
    for p in reversed(parents):
        node = {p: node}
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump({"base": "nyud-vitl", **node}))
    with pytest.raises(ConfigError, match=match):  # a YAML file
        pamm.load_config(path)
    assert yaml.safe_load(path.read_text())["base"] == "nyud-vitl"  # the user's file is left as it was


def test_stored_configs_of_older_versions_are_migrated():
    old = config_to_dict(pamm.load_config("demo"))
    del old["runtime"]
    old["model"].update(fused=False, checkpoint_backbone=False, checkpoint_stages=True, channels_last=False)
    old["model"]["scan"]["backend"] = "reference"
    before = yaml.safe_dump(old)
    migrated = migrate_config_dict(old)
    assert yaml.safe_dump(old) == before  # the input is not modified
    assert migrated["runtime"] == {
        "scan_backend": "reference",
        "activation_checkpointing": ["stages"],
        "channels_last": False,
    }
    assert not {"fused", "checkpoint_backbone", "checkpoint_stages", "channels_last"} & set(migrated["model"])
    cfg = config_from_dict(old)
    assert cfg.runtime == RuntimeConfig("reference", ["stages"], False)
    assert dataclasses.replace(cfg, runtime=RuntimeConfig()) == pamm.load_config("demo")
    # a checkpoint's config: architecture and recipe kept, runtime from the session (defaults)
    assert config_from_checkpoint(old) == pamm.load_config("demo")
    assert config_from_checkpoint(
        config_to_dict(pamm.load_config("demo", {"runtime.scan_backend": "chunked"}))
    ) == pamm.load_config("demo")


def test_cli_names_the_new_key_and_writes_nothing(tmp_path):
    run = tmp_path / "run"
    for argv in (
        ["config", "demo", "--set", "model.scan.backend=chunked"],
        ["train", "--config", "demo", "--out", str(run), "--set", "model.fused=false"],
    ):
        proc = subprocess.run([sys.executable, "-m", "pamm", *argv], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and proc.stdout == ""
        assert re.search(r"'model\.(scan\.backend|fused)' (moved to 'runtime\.scan_backend'|was removed)", lines[0])
    assert not run.exists()
    proc = subprocess.run(
        [sys.executable, "-m", "pamm", "config", "demo", "--set", "runtime.scan_backend=chunked"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and yaml.safe_load(proc.stdout)["runtime"]["scan_backend"] == "chunked"
