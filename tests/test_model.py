"""The PAMM model: shapes, gradients, the fused execution against the plain formulation, ablation switches,
parameter counts of the paper presets, backbones and their weights."""

import math

import pytest
import torch
import torch.nn.functional as F

import pamm
from pamm.models import BackboneWeightsError, ParameterExperts, noisy_top_k

from conftest import tiny_config


def _loss(outputs, routing=()):
    return sum(v.square().mean() for v in outputs.values()) + sum(r.square().sum() for r in routing)


@pytest.mark.parametrize("preset", ["nyud-vitl", "pascal-vitl"])
def test_paper_preset_parameter_counts(preset):
    """Released structure minus its dead branch plus the registered A_log, D and priors (pamm-notes §1)."""
    want = {"nyud-vitl": 329_171_357, "pascal-vitl": 694_977_462}[preset]
    cfg = pamm.load_config(preset, {"model.backbone.pretrained": False})
    with torch.device("meta"):
        model = pamm.build_model(cfg)
    assert sum(p.numel() for p in model.decoder_parameters()) == want
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



@pytest.mark.parametrize("overrides", [
    {},
    {"model__experts": False},
    {"model__priors": False, "model__scan__directions": 2},
    {"model__x_experts": True, "model__scan__kind": "zorder"},
])
def test_fused_execution_equals_plain_formulation(overrides):
    """Same function: outputs and gradients in float64 (train mode, noise off so both draw nothing)."""
    cfg = tiny_config(model__router_noise=False, **overrides)
    model = pamm.build_model(cfg).double().train()
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    results = []
    for fused in (True, False):
        model.fused = fused
        model.zero_grad()
        state = {k: v.clone() for k, v in model.state_dict().items()}
        out, routing = model(x, return_routing=True)
        _loss(out, routing).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((out, routing, grads))
        model.load_state_dict(state)  # undo the BatchNorm running-stat update
    (o1, r1, g1), (o2, r2, g2) = results
    for t in o1:
        torch.testing.assert_close(o1[t], o2[t], rtol=1e-9, atol=1e-11)
    for a, b in zip(r1, r2):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert g1.keys() == g2.keys()
    for n in g1:
        torch.testing.assert_close(g1[n], g2[n], rtol=1e-8, atol=1e-13, msg=n)  # atol: analytically-zero grads


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


@pytest.mark.parametrize("overrides", [
    {"model__decoder": "shared"},
    {"model__scan__kind": "raster", "model__scan__directions": 1},
    {"model__scan__kind": "snake"},
    {"data__tasks": ["depth"]},
])
def test_ablation_switches_train(overrides):
    model = pamm.build_model(tiny_config(**overrides)).train()
    out, routing = model(torch.randn(2, 3, 64, 96), return_routing=True)
    _loss(out, routing).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_pascal_tasks_and_heads():
    model = pamm.build_model(tiny_config("pascal-vitl")).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert {t: v.shape[1] for t, v in out.items()} == {"semseg": 21, "human_parts": 7, "sal": 2, "normals": 3,
                                                      "edge": 1}


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
    cfg = tiny_config(model__backbone__name="swin_tiny_patch4_window7_224", model__backbone__taps=[0, 1, 2, 3],
                      data__train_size=[224, 224])
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


def test_parameter_experts_plain_loop_mask_matches_vectorised():
    pe = ParameterExperts(2, 16, 4, num_experts=15, rank=4, kernel=3, top_k=9, grid=(4, 5)).eval()
    logits = torch.randn(3, 31)
    a, _ = pe.gates(logits)
    b, _ = pe.gates(logits, sample_loop=True)
    torch.testing.assert_close(a, b)
