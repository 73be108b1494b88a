"""The PAMM model: shapes, gradients, the fused execution against the released code's formulation
(pamm.models.reference), ablation switches, the shared-decoder baseline, runtime settings, weight-decay exemptions,
parameter counts of the paper presets, checkpoints of older versions, backbones and their weights."""

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

import pamm
from pamm.config import ConfigError, RuntimeConfig
from pamm.models import BackboneWeightsError, PAMEStage, ParameterExperts, SharedStage, noisy_top_k
from pamm.models.reference import forward_reference, gates_reference
from pamm.tasks import dataset_spec

from conftest import tiny_config

OLD_FORMAT = Path(__file__).parent / "data" / "pre-runtime-split"


def decoder_parameter_count(model) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if not name.startswith("backbone."))


def _loss(outputs, routing=()):
    return sum(v.square().mean() for v in outputs.values()) + sum(r.square().sum() for r in routing)


@pytest.mark.parametrize("preset", ["nyud-vitl", "pascal-vitl"])
def test_paper_preset_parameter_counts(preset):
    """Released structure minus its dead branch plus the registered A_log, D and priors (pamm-notes §1)."""
    want = {"nyud-vitl": 329_171_357, "pascal-vitl": 694_977_462}[preset]
    cfg = pamm.load_config(preset, {"model.backbone.pretrained": False})
    with torch.device("meta"):
        model = pamm.build_model(cfg)
    assert decoder_parameter_count(model) == want
    assert model.backbone.model.embed_dim == 1024 and len(model.backbone.model.blocks) == 24


def test_forward_shapes_and_every_parameter_gets_a_gradient():
    cfg = tiny_config(model__top_k=15)  # dense routing: every expert is used, so every tensor must learn
    model = pamm.build_model(cfg).train()
    x = torch.randn(2, 3, 64, 96)
    out, routing = model(x, return_routing=True)
    assert set(out) == {"semseg", "depth", "normals", "edge"}
    assert out["semseg"].shape == (2, 40, 64, 96) and out["normals"].shape == (2, 3, 64, 96)
    assert out["depth"].shape == (2, 1, 64, 96) and out["edge"].shape == (2, 1, 64, 96)
    assert len(routing) == 4 * 2 * 4 and all(r.shape == (2, 15) for r in routing)  # stages x {B, C} x tasks
    _loss(out, routing).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    names = dict(model.named_parameters())
    for key in ("stages.0.A_log", "stages.0.D", "stages.0.prior.B", "stages.0.prior.C", "stages.3.dt_bias"):
        assert key in names and key in model.state_dict()


def test_top_k_routing_trains_only_selected_experts():
    cfg = tiny_config()
    model = pamm.build_model(cfg).train()
    out, routing = model(torch.randn(2, 3, 64, 96), return_routing=True)
    assert all(int((r > 0).sum(1).max()) <= 9 for r in routing)
    _loss(out, routing).backward()
    experts = model.stages[0].bc.B
    gates = torch.stack(routing[0:4], 1)  # stage 0, set B: (b, T, E)
    used = (gates > 0).flatten(0, 1).any(0)
    grad_norm = experts.expert_up.grad.flatten(1).norm(dim=1)
    assert torch.all(grad_norm[used] > 0) and torch.all(grad_norm[~used] == 0)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"model__experts": False},
        {"model__priors": False, "model__scan__directions": 2},
        {"model__x_experts": True, "model__scan__kind": "zorder"},
        {"model__decoder": "shared"},
    ],
)
def test_fused_execution_equals_the_released_formulation(overrides):
    """Same function: outputs and gradients in float64 (train mode, noise off so both draw nothing)."""
    cfg = tiny_config(model__router_noise=False, **overrides)
    model = pamm.build_model(cfg).double().train()
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    results = []
    for forward in (model, lambda images, **kw: forward_reference(model, images, **kw)):
        model.zero_grad()
        state = {k: v.clone() for k, v in model.state_dict().items()}
        out, routing = forward(x, return_routing=True)
        _loss(out, routing).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((out, routing, grads))
        model.load_state_dict(state)  # undo the BatchNorm running-stat update
    (o1, r1, g1), (o2, r2, g2) = results
    assert o1.keys() == o2.keys() and len(r1) == len(r2)
    for t in o1:
        torch.testing.assert_close(o1[t], o2[t], rtol=1e-9, atol=1e-11)
    for a, b in zip(r1, r2):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert g1.keys() == g2.keys() == {n for n, _ in model.named_parameters()}
    for n in g1:
        torch.testing.assert_close(g1[n], g2[n], rtol=1e-8, atol=1e-13, msg=n)  # atol: analytically-zero grads


def test_reference_updates_batchnorm_statistics_like_the_fused_execution():
    model = pamm.build_model(tiny_config(model__router_noise=False)).double().train()
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model(x)
    fused = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}
    model.load_state_dict(state)
    forward_reference(model, x)
    moved = [k for k in fused if not torch.equal(fused[k], state[k])]
    assert any(".bc.B.norm_experts.running_mean" in k for k in moved)
    for k in fused:
        torch.testing.assert_close(model.state_dict()[k], fused[k], rtol=1e-9, atol=1e-12, msg=k)


def test_eval_mode_is_deterministic_and_state_dict_round_trips():
    cfg = tiny_config()
    model = pamm.build_model(cfg).train()
    model(torch.randn(2, 3, 64, 96))  # move BatchNorm statistics away from their init
    model.eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        a = model(x)
        twin = pamm.build_model(cfg, load_backbone_weights=False).eval()
        twin.load_state_dict(model.state_dict())
        b = twin(x)
    for t in a:
        assert torch.equal(a[t], b[t])


def test_other_input_sizes_resample_position_and_pooling_weights():
    model = pamm.build_model(tiny_config()).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 80, 112))
    assert out["semseg"].shape == (1, 40, 80, 112)
    with pytest.raises(ValueError, match="multiple of the backbone stride 16"):
        model(torch.randn(1, 3, 70, 96))


def test_delta_init_survives_model_construction():
    model = pamm.build_model(tiny_config())
    stage = model.stages[1]
    dt = F.softplus(stage.dt_bias)
    assert dt.min() >= 1e-4 - 1e-9 and dt.max() <= 0.1 + 1e-6 and dt.std() > 0
    r = stage.dt_up.in_channels
    w = stage.dt_up.weight
    assert w.abs().max() <= r**-0.5 and w.std() > 0.5 * r**-0.5 / math.sqrt(3)
    a_log = stage.A_log
    torch.testing.assert_close(a_log[0, 0], torch.log(torch.arange(1, 9, dtype=torch.float32)))
    assert torch.all(stage.D == 1)


@pytest.mark.parametrize(
    "overrides",
    [
        {"model__decoder": "shared"},
        {"model__scan__kind": "raster", "model__scan__directions": 1},
        {"model__scan__kind": "snake"},
        {"data__tasks": ["depth"]},
    ],
)
def test_ablation_switches_train(overrides):
    model = pamm.build_model(tiny_config(**overrides)).train()
    out, routing = model(torch.randn(2, 3, 64, 96), return_routing=True)
    _loss(out, routing).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_pascal_tasks_and_heads():
    model = pamm.build_model(tiny_config("pascal-vitl")).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert {t: v.shape[1] for t, v in out.items()} == {
        "semseg": 21,
        "human_parts": 7,
        "sal": 2,
        "normals": 3,
        "edge": 1,
    }


def test_model_follows_the_input_device():
    model = pamm.build_model(tiny_config()).eval().to("meta")
    out = model(torch.empty(1, 3, 64, 96, device="meta"))
    assert out["depth"].device.type == "meta" and out["depth"].shape == (1, 1, 64, 96)


@pytest.mark.parametrize("name,taps", [("convnext_atto", [0, 1, 2, 3]), ("efficientnet_lite0", [1, 2, 3, 4])])
def test_hierarchical_backbones_are_resampled_to_one_grid(name, taps):
    cfg = tiny_config(model__backbone__name=name, model__backbone__taps=taps)
    model = pamm.build_model(cfg).train()
    feats = model.backbone(torch.randn(2, 3, 64, 96))
    assert [f.shape[-2:] for f in feats] == [(4, 6)] * 4
    out = model(torch.randn(2, 3, 64, 96))
    _loss(out).backward()
    assert out["semseg"].shape == (2, 40, 64, 96)


def test_swin_backbone_runs():
    cfg = tiny_config(
        model__backbone__name="swin_tiny_patch4_window7_224",
        model__backbone__taps=[0, 1, 2, 3],
        data__train_size=[224, 224],
    )
    model = pamm.build_model(cfg).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert out["edge"].shape == (1, 1, 224, 224)


def test_local_backbone_weights_with_class_token_and_other_grid_load(tmp_path):
    import timm
    from safetensors.torch import save_file

    source = timm.create_model("vit_tiny_patch16_224", pretrained=False)  # class token, 14x14 grid, head
    path = tmp_path / "vit_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model = pamm.build_model(tiny_config(model__backbone__weights=str(path)))
    vit = model.backbone.model
    torch.testing.assert_close(vit.blocks[3].attn.qkv.weight, source.blocks[3].attn.qkv.weight)
    assert vit.pos_embed.shape == (1, 4 * 6, 192)
    torch.save(source.state_dict(), tmp_path / "vit.pth")
    pamm.build_model(tiny_config(model__backbone__weights=str(tmp_path / "vit.pth")))


def test_bad_backbone_weights_give_clear_errors(tmp_path):
    with pytest.raises(BackboneWeightsError, match="does not exist"):
        pamm.build_model(tiny_config(model__backbone__weights=str(tmp_path / "nope.pth")))
    bad = tmp_path / "small.pth"
    torch.save({"patch_embed.proj.weight": torch.zeros(8, 3, 16, 16)}, bad)
    with pytest.raises(BackboneWeightsError, match=r"small.pth.*\n.*missing tensors"):
        pamm.build_model(tiny_config(model__backbone__weights=str(bad)))
    with pytest.raises(BackboneWeightsError, match="timm hub weights of 'vit_tiny_patch16_224'"):
        pamm.build_model(tiny_config(model__backbone__pretrained=True))


def test_pickled_code_in_weights_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, path)
    with pytest.raises(BackboneWeightsError, match="cannot read weights file"):
        pamm.build_model(tiny_config(model__backbone__weights=str(path)))


def test_noisy_top_k_vectorised():
    logits = torch.randn(5, 3, 31)
    gates, mix = noisy_top_k(logits, 9, noise=False)
    assert gates.shape == (5, 3, 15) and mix.shape == (5, 3)
    assert torch.all((gates > 0).sum(-1) == 9)
    probs = torch.softmax(logits[..., :15], -1)
    kept = gates > 0
    assert torch.equal(gates[kept], probs[kept])
    assert torch.all(probs.masked_fill(kept, 0).amax(-1) <= probs.masked_fill(~kept, 2).amin(-1))


def test_released_sample_loop_mask_matches_vectorised_top_k():
    pe = ParameterExperts(2, 16, 4, num_experts=15, rank=4, kernel=3, top_k=9, grid=(4, 5)).eval()
    logits = torch.randn(3, 31)
    a, mix_a = pe.gates(logits)
    b, mix_b = gates_reference(pe, logits)
    torch.testing.assert_close(a, b)
    assert torch.equal(mix_a, mix_b) and torch.all((b > 0).sum(-1) == 9)


# ----------------------------------------------------------------------------------------------------------
# The shared-decoder baseline


@pytest.mark.parametrize("preset", ["nyud-vitl", "pascal-vitl"])
def test_shared_decoder_is_the_pame_stage_front_with_the_same_fusion_and_heads(preset):
    """model.decoder: shared builds SharedStage: a shared 3x3 conv + GroupNorm and T task 3x3 convs per stage, then
    PAMM's fusion and heads: the parameter count follows from the paper sizes."""
    cfg = pamm.load_config(preset, {"model.backbone.pretrained": False, "model.decoder": "shared"})
    with torch.device("meta"):
        model = pamm.build_model(cfg)
    assert all(type(s) is SharedStage for s in model.stages)
    d, c_in, tasks = cfg.model.dim, 1024, cfg.data.task_list
    outputs = dataset_spec(cfg.data.dataset).num_outputs
    stage = (c_in * d * 9 + d) + 2 * d + len(tasks) * (d * d * 9 + d)  # first_decode, GroupNorm, task convs
    fusion = (4 * d * d + d) + 2 * d + (d * 4 * 9 + 4)  # 1x1 conv, BatchNorm, 3x3 conv to 4 stage weights
    head = (d * d * 9 + d) + 2 * d  # 3x3 conv, BatchNorm (+ the 1x1 prediction conv below)
    want = 4 * stage + len(tasks) * (fusion + head) + sum(d * outputs[t] + outputs[t] for t in tasks)
    assert decoder_parameter_count(model) == want == {"nyud-vitl": 144_102_205, "pascal-vitl": 294_932_534}[preset]


def test_pame_stage_starts_with_the_shared_stage():
    """A PAME stage's task features are the shared stage's, on the same weights (same names: checkpoints agree)."""
    pame = pamm.build_model(tiny_config()).stages[0].eval()
    shared = SharedStage(pame.first_decode.in_channels, pame.tasks, pame.dim).eval()
    missing, unexpected = shared.load_state_dict(pame.state_dict(), strict=False)
    assert missing == [] and unexpected and isinstance(pame, PAMEStage)
    f = torch.randn(2, shared.first_decode.in_channels, 4, 6)
    with torch.no_grad():
        out, routing = shared(f)
        torch.testing.assert_close(out, pame.task_features(f))
    assert routing == [] and out.shape == (2, pame.tasks * pame.dim, 4, 6)


# ----------------------------------------------------------------------------------------------------------
# Runtime settings and weight decay


def test_runtime_settings_change_the_execution_not_the_function():
    cfg = tiny_config(model__router_noise=False)
    model = pamm.build_model(cfg).double().train()
    assert model.runtime == cfg.runtime and model.backbone.model.grad_checkpointing is False
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    results = []
    for runtime in (
        RuntimeConfig(),
        RuntimeConfig(scan_backend="reference", activation_checkpointing=["backbone", "stages"]),
    ):
        model.set_runtime(runtime)
        model.load_state_dict(state)
        model.zero_grad()
        out, routing = model(x, return_routing=True)
        _loss(out, routing).backward()
        results.append((out, {n: p.grad.clone() for n, p in model.named_parameters()}))
    assert model.backbone.model.grad_checkpointing is True
    assert all(s.scan_backend == "reference" for s in model.stages)
    (o1, g1), (o2, g2) = results
    for t in o1:
        torch.testing.assert_close(o1[t], o2[t], rtol=1e-9, atol=1e-11)
    for n in g1:
        torch.testing.assert_close(g1[n], g2[n], rtol=1e-8, atol=1e-13, msg=n)
    model.set_grad_checkpointing(False)
    assert model.runtime.activation_checkpointing == [] and model.backbone.model.grad_checkpointing is False
    model.set_grad_checkpointing(["stages"])
    assert model.runtime.activation_checkpointing == ["stages"] and not model.backbone.model.grad_checkpointing


@pytest.mark.parametrize("places,runs", [([], 1), (["stages"], 2)])
def test_stage_checkpointing_recomputes_in_backward(monkeypatch, places, runs):
    model = pamm.build_model(tiny_config(runtime__activation_checkpointing=places)).train()
    stage, calls = model.stages[0], []
    features = stage.task_features
    monkeypatch.setattr(stage, "task_features", lambda f: calls.append(1) or features(f))
    out = model(torch.randn(1, 3, 64, 96))
    assert len(calls) == 1
    _loss(out).backward()
    assert len(calls) == runs  # with checkpointing the stage runs again during backward


@pytest.mark.parametrize(
    "runtime,match",
    [
        (RuntimeConfig(scan_backend="cuda"), r"config key 'runtime.scan_backend': must be one of \['auto'"),
        (
            RuntimeConfig(activation_checkpointing=["heads"]),
            r"'runtime.activation_checkpointing': unknown place 'heads'",
        ),
    ],
)
def test_bad_runtime_settings_are_refused_and_change_nothing(runtime, match):
    model = pamm.build_model(tiny_config())
    with pytest.raises(ConfigError, match=match):
        model.set_runtime(runtime)
    assert model.runtime == RuntimeConfig() and all(s.scan_backend == "auto" for s in model.stages)


def _previous_trainer_rule(model) -> set[str]:
    """The names the trainer exempted from weight decay before the model declared them (commit 0481667)."""
    return {
        n for n, _ in model.named_parameters() if n.rsplit(".", 1)[-1] in {"A_log", "D", "dt_bias"} or ".prior." in n
    }


@pytest.mark.parametrize(
    "preset,overrides",
    [
        ("nyud-vitl", {}),
        ("pascal-vitl", {}),
        ("nyud-vitl", {"model__priors": False, "model__x_experts": True}),
        ("nyud-vitl", {"model__experts": False}),
        ("nyud-vitl", {"model__decoder": "shared"}),
        ("nyud-vitl", {"model__backbone__name": "efficientnet_lite0", "model__backbone__taps": [1, 2, 3, 4]}),
    ],
)
def test_no_weight_decay_gives_the_trainers_previous_groups(preset, overrides):
    from pamm.engine.trainer import weight_decay_groups

    with torch.device("meta"):
        model = pamm.build_model(tiny_config(preset, **overrides))
    exempt = model.no_weight_decay()
    assert exempt == _previous_trainer_rule(model)
    if overrides.get("model__decoder") != "shared":
        assert {"stages.0.A_log", "stages.3.D", "stages.2.dt_bias"} <= exempt
        assert ("stages.1.prior.B" in exempt) is (overrides.get("model__priors") is not False)
    decay, skip = weight_decay_groups(model, 1e-4)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 1e-4 and skip["weight_decay"] == 0.0
    assert {names[id(p)] for p in skip["params"]} == exempt
    assert {names[id(p)] for p in decay["params"]} == set(names.values()) - exempt
    assert len(decay["params"]) + len(skip["params"]) == len(list(model.parameters()))


# ----------------------------------------------------------------------------------------------------------
# Checkpoints written before the architecture/runtime split


def _old_format_checkpoint(name: str, path: Path) -> dict[str, torch.Tensor]:
    """A weights file as the code of commit 0481667 wrote it for tests/data/pre-runtime-split/NAME: its stored
    config (model.fused, model.checkpoint_*, model.channels_last, model.scan.backend) and its tensors' names and
    shapes (random values); returns the tensors."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from pamm.engine.checkpoint import save_weights

    tensors = {}
    for line in (OLD_FORMAT / f"{name}.tensors.tsv").read_text().splitlines():
        if line.startswith("#"):
            continue
        key, shape, dtype = line.split("\t")
        shape = [int(v) for v in re.findall(r"\d+", shape)]
        tensors[key] = torch.randint(0, 9, shape) if dtype == "int64" else torch.rand(shape) + 0.5
    save_weights(path, tensors, pamm.load_config("nyud-vitl"), {"step": 7})  # the digest covers tensors only
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    old_yaml = (OLD_FORMAT / f"{name}.yaml").read_text()
    assert "fused: false" in old_yaml and "checkpoint_stages: true" in old_yaml and "backend: chunked" in old_yaml
    save_file(tensors, str(path), metadata={**meta, "config": old_yaml})
    return tensors


@pytest.mark.parametrize("name,decoder", [("tiny-nyud", "pamm"), ("tiny-shared", "shared")])
def test_checkpoints_of_older_versions_load(tmp_path, name, decoder):
    from pamm.engine.checkpoint import load_model, read_checkpoint_config

    tensors = _old_format_checkpoint(name, tmp_path / "old.safetensors")
    model, cfg = load_model(tmp_path / "old.safetensors")  # strict: every tensor name and shape must agree
    assert cfg.model.decoder == decoder and cfg.model.dim == 64 and cfg.data.train_size == [64, 96]
    assert cfg.runtime == RuntimeConfig()  # runtime knobs come from the session, not the file
    assert model.runtime == RuntimeConfig() and not model.training
    assert read_checkpoint_config(tmp_path / "old.safetensors") == cfg
    state = model.state_dict()
    assert list(state) == list(tensors)
    assert all(torch.equal(state[k], v) for k, v in tensors.items())
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 96))
    assert set(out) == {"semseg", "depth", "normals", "edge"}


def test_old_config_dicts_migrate_to_the_runtime_section():
    old = yaml.safe_load((OLD_FORMAT / "tiny-nyud.yaml").read_text())
    cfg = pamm.config.config_from_dict(old)
    assert cfg.runtime == RuntimeConfig(
        scan_backend="chunked", activation_checkpointing=["backbone", "stages"], channels_last=False
    )
    assert "backend" in old["model"]["scan"] and "fused" in old["model"]  # the input is not modified
    model = pamm.build_model(cfg, load_backbone_weights=False)
    assert model.runtime == cfg.runtime and model.stages[0].scan_backend == "chunked"
