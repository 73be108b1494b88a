"""Typed configuration: presets, overrides, and clear errors for every kind of bad input."""

import pytest

import pamm
from pamm.config import ConfigError, config_from_dict, config_to_dict, override_config, parse_override


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
    assert pascal.train.loss_weights == {"semseg": 1.0, "human_parts": 2.0, "sal": 5.0, "edge": 50.0,
                                         "normals": 10.0}
    assert (nyud.train.load_balancing, pascal.train.load_balancing) == (5e-4, 1e-4)
    assert nyud.model.backbone.taps == [5, 11, 17, 23] and nyud.model.backbone.drop_path == 0.15
    assert (nyud.model.num_experts, nyud.model.expert_rank, nyud.model.top_k, nyud.model.expert_kernel) == (15, 4, 9, 9)
    assert nyud.model.scan.kind == "hilbert" and nyud.model.scan.directions == 4
    assert pascal.data.task_list == ["semseg", "human_parts", "sal", "normals", "edge"]


def test_overrides_and_yaml_values():
    cfg = pamm.load_config("demo", dict(parse_override(s) for s in
                                        ["train.lr=3e-4", "data.tasks=[depth, edge]", "model.priors=false"]))
    assert cfg.train.lr == 3e-4 and cfg.data.task_list == ["depth", "edge"] and cfg.model.priors is False
    assert override_config(cfg, {"train.iterations": 70}).train.iterations == 70


def test_yaml_file_with_base(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("base: nyud-vitl\nname: mine\ntrain:\n  batch_size: 2\n")
    cfg = pamm.load_config(f)
    assert cfg.name == "mine" and cfg.train.batch_size == 2 and cfg.model.dim == 768


@pytest.mark.parametrize("overrides,match", [
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
    ({"data.scale_range": [2.0, 0.5]}, r"config key 'data.scale_range': must be \[low, high\] with 0 < low <= high"),
    ({"train.loss_weights": {"semseg": 1.0}}, r"config key 'train.loss_weights': no weight for task 'depth'"),
    ({"model.backbone": 3}, r"config key 'model.backbone': expected a mapping"),
])
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
