"""Conversion of the authors' released checkpoints: the name/shape mapping at full size (meta device, from the
released model's key listings) and the values at tiny size (a synthesised official-format checkpoint)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

import pamm
from pamm.engine.checkpoint import load_model, load_weights
from pamm.interop.convert import (
    ConversionError,
    TensorSpec,
    convert_official,
    detect_preset,
    model_tensor_specs,
    plan_conversion,
)
from pamm.tasks import DATASETS

from conftest import TINY

KEYS = Path("/work/shared/reference/official-checkpoint-keys")
FILES = {"nyud-vitl": KEYS / "nyud.tsv", "pascal-vitl": KEYS / "pascal.tsv"}
BUFFER = re.compile(r"\.(running_mean|running_var|num_batches_tracked)$")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run several times faster on one thread than on two contended ones (shared CI machines)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def read_key_listing(path: Path) -> dict[str, TensorSpec]:
    """name -> spec from a ``name<TAB>shape<TAB>dtype`` listing."""
    specs = {}
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, shape, dtype = line.split("\t")
        specs[name] = TensorSpec(
            tuple(int(s) for s in re.findall(r"\d+", shape)), getattr(torch, dtype.removeprefix("torch."))
        )
    return specs


def numel(spec: TensorSpec) -> int:
    return math.prod(spec.shape)


# ----------------------------------------------------------------------------------------------------------
# Full size: names and shapes only


@pytest.fixture(scope="module")
def full_size():
    """preset -> (official specs, our specs, tasks) for the paper presets (models on the meta device)."""
    if not all(f.is_file() for f in FILES.values()):
        pytest.skip("official key listings not available")
    out = {}
    for preset, path in FILES.items():
        cfg = pamm.load_config(preset, {"model.backbone.pretrained": False})
        out[preset] = (read_key_listing(path), *model_tensor_specs(cfg))
    return out


@pytest.mark.parametrize(
    "preset, dead, initialised", [("nyud-vitl", 36_239_808, 418_304), ("pascal-vitl", 63_226_752, 2_664_960)]
)
def test_every_official_tensor_is_placed_or_dropped_at_full_size(full_size, preset, dead, initialised):
    official, ours, tasks = full_size[preset]
    plan = plan_conversion(official, ours, tasks)
    assert plan.problems == []
    assert set(plan.placements) | set(plan.dropped) == set(official)
    assert set(plan.dropped) == {n for n in official if ".conv2d0." in n}  # the dead branch, all of it
    assert sum(numel(official[n]) for n in plan.dropped if not BUFFER.search(n)) == dead  # notes §1
    assert sorted(plan.initialised) == sorted(
        f"stages.{s}.{k}" for s in range(4) for k in ("A_log", "D", "prior.B", "prior.C")
    )
    assert sum(numel(ours[k]) for k in plan.initialised) == initialised
    # every tensor of ours is covered exactly: the placed regions add up to its size
    covered = {}
    for placement in plan.placements.values():
        if not placement.reduce_max:
            region = placement.region_shape(ours[placement.target].shape)
            covered[placement.target] = covered.get(placement.target, 0) + math.prod(region)
    for key, spec in ours.items():
        if key in plan.initialised or key.endswith("num_batches_tracked") and key not in covered:
            continue
        assert covered.get(key) == numel(spec), key


def test_sample_placements_at_full_size(full_size):
    official, ours, tasks = full_size["nyud-vitl"]
    plan = plan_conversion(official, ours, tasks)
    p = plan.placements
    i = tasks.index("depth")
    place = p["backbone.stage_MTLoRA_mamba.2.task_conv.depth.weight"]
    assert place.target == "stages.2.task_conv.weight" and place.rows((3072,)) == (768 * i, 768 * (i + 1))
    assert p["backbone.stage_MTLoRA_mamba.1.C_proj0.MoE.3.M.weight"].target == "stages.1.bc.C.expert_up"
    assert p["backbone.stage_MTLoRA_mamba.1.C_proj0.MoE.3.M.weight"].item == 3
    assert p["backbone.stage_MTLoRA_mamba.0.B_proj0.MoE.14.W.weight"].rows((60,)) == (56, 60)
    assert p["backbone.stage_MTLoRA_mamba.3.dt_proj0.edge.bias"].target == "stages.3.dt_bias"
    pool = p["backbone.stage_MTLoRA_mamba.0.B_proj0.router.normals.0.convsp.weight"]
    assert pool.target == "stages.0.bc.B.router.pool" and pool.item == tasks.index("normals")
    assert p["backbone.pos_embed"].drop_class_token
    assert p["heads.semseg.linear_pred.weight"].target == "heads.semseg.pred.weight"
    assert p["backbone.task_mask.edge.3.bias"].target == "fusion.edge.weights.3.bias"


def test_x_experts_place_the_dead_branch_at_full_size():
    official = read_key_listing(FILES["nyud-vitl"]) if FILES["nyud-vitl"].is_file() else pytest.skip("no listing")
    cfg = pamm.load_config("nyud-vitl", {"model.backbone.pretrained": False, "model.x_experts": True})
    ours, tasks = model_tensor_specs(cfg)
    plan = plan_conversion(official, ours, tasks, x_experts=True)
    assert plan.problems == [] and plan.dropped == {}
    assert plan.placements["backbone.stage_MTLoRA_mamba.2.conv2d0.MoE.4.W.weight"].rows((240,)) == (64, 80)
    assert {pl.target for pl in plan.placements.values()} >= {k for k in ours if ".x_experts." in k}


def test_preset_is_detected_from_the_heads(full_size):
    for preset, (official, _, _) in full_size.items():
        assert detect_preset(official, {k: s.shape for k, s in official.items()}) == preset
    with pytest.raises(ConversionError, match="cannot tell the preset"):
        detect_preset(["heads.edge.linear_pred.weight"], {"heads.edge.linear_pred.weight": (1, 8, 1, 1)})


# ----------------------------------------------------------------------------------------------------------
# Tiny size: values


def official_shape(name: str, dims: dict) -> tuple[int, ...]:
    """Shape of an official tensor for small dimensions, from the released modules' definitions (independent of
    the converter's rules)."""
    d, di, n, r = dims["d"], dims["di"], dims["n"], dims["dt_rank"]
    rest = re.sub(r"^backbone\.stage_MTLoRA_mamba\.\d+\.", "", name)
    last = rest.split(".")[-1]
    if rest.startswith(("B_proj0.", "C_proj0.", "conv2d0.")):
        cin, cout, rank, k = (di, n, 4, dims["k"]) if not rest.startswith("conv2d0.") else (d, d, 16, 3)
        c4 = cin // 4
        table = {
            r"router\.\w+\.0\.conv1\.weight": (c4, cin, 1, 1), r"router\.\w+\.0\.conv1\.bias": (c4,),
            r"router\.\w+\.0\.ln\.\w+": (c4,), r"router\.\w+\.0\.conv3\.weight": (c4, c4, 1, 1),
            r"router\.\w+\.0\.conv3\.bias": (c4,), r"router\.\w+\.0\.convsp\.weight": (1, dims["tokens"]),
            r"router\.\w+\.0\.convsp\.bias": (1,), r"router\.\w+\.0\.ln_sp\.\w+": (cin,),
            r"router\.\w+\.0\.conv2\.weight": (c4, cin, 1, 1), r"router\.\w+\.0\.conv2\.bias": (c4,),
            r"router\.\w+\.1\.weight": (31, 2 * c4, 1, 1), r"router\.\w+\.1\.bias": (31,),
            r"Bn(_all)?\.\w+\.num_batches_tracked": (), r"Bn(_all)?\.\w+\.\w+": (cout,),
            r"(proj_task\.\w+|MoE\.\d+)\.W\.weight": (rank, cin, k, k), r"(proj_task\.\w+|MoE\.\d+)\.W\.bias": (rank,),
            r"(proj_task\.\w+|MoE\.\d+)\.M\.weight": (cout, rank, 1, 1), r"(proj_task\.\w+|MoE\.\d+)\.M\.bias": (cout,),
            r"proj_gerneral\.weight": (cout, cin, k, k), r"proj_gerneral\.bias": (cout,),
        }  # fmt: skip
        body = rest.split(".", 1)[1]
        return next(shape for pattern, shape in table.items() if re.fullmatch(pattern, body))
    table = {
        r"first_decode\.weight": (d, dims["vit"], 3, 3), r"task_conv\.\w+\.weight": (d, d, 3, 3),
        r"proj_z0\.\w+\.weight": (d, d, 1, 1), r"dim_expand_proj_x0\.\w+\.weight": (di, d, 1, 1),
        r"dim_expand_proj_x0\.\w+\.bias": (di,), r"dt_proj0\.\w+\.weight": (di, r), r"dt_proj0\.\w+\.bias": (di,),
        r"x2dt_proj0\.\w+\.weight": (r, di), r"dim_decrease_proj0\.\w+\.weight": (d, di, 1, 1),
        r"backbone\.task_mask\.\w+\.0\.weight": (d, 4 * d, 1, 1), r"backbone\.task_mask\.\w+\.3\.weight": (4, d, 3, 3),
        r"backbone\.task_mask\.\w+\.3\.bias": (4,), r".*num_batches_tracked": (),
        r"heads\.\w+\.mt_proj\.0\.weight": (d, d, 3, 3),
    }  # fmt: skip
    for pattern, shape in table.items():
        if re.fullmatch(pattern, rest):
            return shape
    m = re.fullmatch(r"heads\.(\w+)\.linear_pred\.(weight|bias)", rest)
    if m:
        k = DATASETS["nyud"].num_outputs[m[1]]
        return (k, d, 1, 1) if m[2] == "weight" else (k,)
    assert last in ("weight", "bias", "running_mean", "running_var"), name
    return (d,)  # norms and biases of width d


@pytest.fixture(scope="module")
def tiny_official(tmp_path_factory):
    """(path of a synthesised DDP-style official checkpoint for the tiny NYUD config, its tensors)."""
    torch.manual_seed(1)
    cfg = pamm.load_config("nyud-vitl", TINY)
    ours, _ = model_tensor_specs(cfg)
    grid = (cfg.data.train_size[0] // 16, cfg.data.train_size[1] // 16)
    dims = {
        "d": cfg.model.dim,
        "di": 2 * cfg.model.dim,
        "n": cfg.model.d_state,
        "k": cfg.model.expert_kernel,
        "dt_rank": cfg.model.resolved_dt_rank,
        "tokens": grid[0] * grid[1],
        "vit": ours["backbone.model.norm.weight"].shape[0],
    }
    blocks = 1 + max(int(k.split(".")[3]) for k in ours if k.startswith("backbone.model.blocks."))
    tensors = {}
    for name in read_key_listing(FILES["nyud-vitl"]):
        m = re.match(r"backbone\.blocks\.(\d+)\.", name)
        if m and int(m[1]) >= blocks:
            continue
        if name == "backbone.pos_embed":
            shape = (1, 1 + grid[0] * grid[1], dims["vit"])
        elif name.startswith(("backbone.patch_embed.", "backbone.blocks.", "backbone.norm.")):
            shape = ours["backbone.model." + name.removeprefix("backbone.")].shape
        else:
            shape = official_shape(name, dims)
        if name.endswith("num_batches_tracked"):
            tensors[name] = torch.randint(100, 1000, shape)
        elif name.endswith("running_var"):
            tensors[name] = torch.rand(shape) + 0.5
        else:
            tensors[name] = torch.randn(shape) * 0.05
    path = tmp_path_factory.mktemp("official") / "PAMM_nyud.pth"
    torch.save(
        {
            "model": {f"module.{k}": v for k, v in tensors.items()},
            "optimizer": {"state": {}, "param_groups": []},
            "epoch": 3,
            "iter_count": 39999,
        },
        path,
    )
    return path, tensors


@pytest.fixture(scope="module")
def converted(tiny_official, tmp_path_factory):
    """(destination, report) of converting the tiny official checkpoint."""
    src, _ = tiny_official
    dst = tmp_path_factory.mktemp("converted") / "pamm_nyud.safetensors"
    return dst, convert_official(src, dst, overrides=TINY)


def test_converted_values_land_where_they_belong(tiny_official, converted):
    _, official = tiny_official
    dst, report = converted
    state, cfg, extra = load_weights(dst)
    tasks = report.tasks
    d, n = cfg.model.dim, cfg.model.d_state
    s = "backbone.stage_MTLoRA_mamba"
    i = tasks.index("depth")
    assert torch.equal(
        state["stages.2.task_conv.weight"][i * d : (i + 1) * d], official[f"{s}.2.task_conv.depth.weight"]
    )
    assert torch.equal(state["stages.1.bc.C.expert_up"][3], official[f"{s}.1.C_proj0.MoE.3.M.weight"][:, :, 0, 0])
    assert torch.equal(state["stages.0.bc.B.expert_down"][4 * 14 :], official[f"{s}.0.B_proj0.MoE.14.W.weight"])
    assert torch.equal(state["backbone.model.pos_embed"], official["backbone.pos_embed"][:, 1:])
    e = tasks.index("edge")
    assert torch.equal(state["stages.3.dt_bias"][e], official[f"{s}.3.dt_proj0.edge.bias"])
    assert torch.equal(state["stages.3.dt_up.weight"][e], official[f"{s}.3.dt_proj0.edge.weight"])
    assert torch.equal(state["stages.0.gate_proj.weight"][e], official[f"{s}.0.proj_z0.edge.weight"][:, :, 0, 0])
    assert torch.equal(
        state["stages.1.bc.B.norm_out.running_var"][e * n : (e + 1) * n], official[f"{s}.1.B_proj0.Bn.edge.running_var"]
    )
    assert torch.equal(state["stages.1.bc.B.router.pool"][e], official[f"{s}.1.B_proj0.router.edge.0.convsp.weight"][0])
    assert torch.equal(
        state["stages.1.bc.B.router.channel_mix"][e], official[f"{s}.1.B_proj0.router.edge.0.conv3.weight"][:, :, 0, 0]
    )
    assert torch.equal(
        state["stages.1.bc.B.router.spatial_proj"][e], official[f"{s}.1.B_proj0.router.edge.0.conv2.weight"][:, :, 0, 0]
    )
    counters = [official[f"{s}.1.B_proj0.Bn_all.{t}.num_batches_tracked"] for t in tasks]
    assert state["stages.1.bc.B.norm_experts.num_batches_tracked"] == max(counters)
    assert torch.equal(state["fusion.normals.weights.0.weight"], official["backbone.task_mask.normals.0.weight"])
    assert torch.equal(state["heads.semseg.pred.bias"], official["heads.semseg.linear_pred.bias"])
    assert torch.equal(state["backbone.model.blocks.7.attn.qkv.weight"], official["backbone.blocks.7.attn.qkv.weight"])
    # tensors the released code never saved: initial values
    a_log = state["stages.0.A_log"]
    assert torch.allclose(a_log, torch.log(torch.arange(1.0, n + 1)).expand_as(a_log))
    assert torch.equal(state["stages.0.D"], torch.ones_like(state["stages.0.D"]))
    assert 0 < state["stages.0.prior.B"].std() < 0.05
    assert extra["converted_from"]["file"] == "PAMM_nyud.pth" and extra["report"]["preset"] == "nyud-vitl"


def test_report_counts_add_up(tiny_official, converted):
    _, official = tiny_official
    dst, report = converted
    state, _, _ = load_weights(dst)
    assert report.official_tensors == len(official) == report.mapped_tensors + report.dropped_tensors
    assert report.dropped_tensors == sum(".conv2d0." in k for k in official)
    assert report.filled_tensors + report.initialised_tensors == len(state)
    assert report.filled_values + report.initialised_values == sum(v.numel() for v in state.values())
    assert report.initialised_tensors == 16 and report.ignored_entries == ["epoch", "iter_count", "optimizer"]
    assert "dead x-branch" in report.summary()


def test_converted_checkpoint_loads_and_runs(converted):
    dst, _ = converted
    model, cfg = load_model(dst)
    assert not cfg.model.backbone.pretrained and cfg.data.dataset == "nyud"
    with torch.inference_mode():
        out = model(torch.randn(1, 3, *cfg.data.train_size))
    assert set(out) == set(DATASETS["nyud"].tasks) and all(torch.isfinite(v).all() for v in out.values())


def test_priors_come_from_the_seed(tiny_official, converted, tmp_path):
    src, _ = tiny_official
    dst, _ = converted
    first, _, _ = load_weights(dst)
    convert_official(src, tmp_path / "other.safetensors", overrides=TINY, prior_seed=7)
    other, _, _ = load_weights(tmp_path / "other.safetensors")
    assert not torch.equal(first["stages.2.prior.C"], other["stages.2.prior.C"])
    assert torch.equal(first["stages.2.A_log"], other["stages.2.A_log"])


def test_x_experts_option_keeps_the_dead_branch(tiny_official, converted, tmp_path):
    src, official = tiny_official
    report = convert_official(src, tmp_path / "x.safetensors", overrides=TINY, x_experts=True)
    assert report.dropped_tensors == 0 and report.x_experts
    state, cfg, _ = load_weights(tmp_path / "x.safetensors")
    assert cfg.model.x_experts
    assert torch.equal(
        state["stages.2.x_experts.expert_down"][16 * 2 : 16 * 3],
        official["backbone.stage_MTLoRA_mamba.2.conv2d0.MoE.2.W.weight"],
    )
    default, _, _ = load_weights(converted[0])  # same seed, same priors: the conversion is deterministic
    assert all(torch.equal(default[k], state[k]) for k in default if ".prior." in k)
    model, _ = load_model(tmp_path / "x.safetensors")
    with torch.inference_mode():
        out = model(torch.randn(1, 3, *cfg.data.train_size))
    assert all(torch.isfinite(v).all() for v in out.values())


# ----------------------------------------------------------------------------------------------------------
# Refusals


class _RunsCode:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"model": {"backbone.pos_embed": torch.zeros(1)}, "payload": _RunsCode()}, path)
    with pytest.raises(ConversionError, match=r"refusing to load .*evil\.pth.*weights_only=True"):
        convert_official(path, tmp_path / "out.safetensors")
    assert "must never run" not in capsys.readouterr().out
    assert not (tmp_path / "out.safetensors").exists()


def test_missing_misshaped_and_unknown_tensors_are_all_listed(tiny_official, tmp_path):
    _, official = tiny_official
    broken = dict(official)
    del broken["backbone.stage_MTLoRA_mamba.1.x2dt_proj0.normals.weight"]
    broken["backbone.stage_MTLoRA_mamba.0.C_proj0.MoE.2.M.weight"] = torch.zeros(5, 4, 1, 1)
    broken["backbone.stage_MTLoRA_mamba.0.extra_layer.weight"] = torch.zeros(3)
    broken["heads.sal.linear_pred.weight"] = torch.zeros(2, 64, 1, 1)
    path = tmp_path / "broken.pth"
    torch.save(broken, path)  # a bare state dict, without the DDP prefix
    with pytest.raises(ConversionError) as err:
        convert_official(path, tmp_path / "out.safetensors", preset="nyud-vitl", overrides=TINY)
    message = str(err.value)
    assert "broken.pth" in message and "4 problem(s)" in message  # each listed once
    assert "stages.1.dt_down.weight: rows [2, 3) of 4 are not provided" in message
    assert "shape mismatch: official backbone.stage_MTLoRA_mamba.0.C_proj0.MoE.2.M.weight (5, 4, 1, 1)" in message
    assert "unmapped official tensor backbone.stage_MTLoRA_mamba.0.extra_layer.weight" in message
    assert "task 'sal' is not one of the model's tasks" in message and "heads look like preset pascal-vitl" in message
    assert not (tmp_path / "out.safetensors").exists()


def test_unreadable_sources_and_existing_destinations(tiny_official, converted, tmp_path):
    src, _ = tiny_official
    dst, _ = converted
    with pytest.raises(ConversionError, match="exists"):
        convert_official(src, dst, overrides=TINY)
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(ConversionError, match=r"empty\.pth is empty"):
        convert_official(tmp_path / "empty.pth", tmp_path / "o.safetensors")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ConversionError, match=r"cannot read official checkpoint .*junk\.pth"):
        convert_official(tmp_path / "junk.pth", tmp_path / "o.safetensors")
    torch.save({"epoch": 1, "lr": 0.1}, tmp_path / "nomodel.pth")
    with pytest.raises(ConversionError, match="holds no state dict"):
        convert_official(tmp_path / "nomodel.pth", tmp_path / "o.safetensors")
