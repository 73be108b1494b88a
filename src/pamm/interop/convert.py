"""Convert a checkpoint of the authors' released code (github.com/CQC-gogopro/PAMM) into a pamm checkpoint.

The released model keeps one module per task and per expert (``task_conv.semseg``, ``MoE.3``, ...); ours stacks
them (``task_conv.weight`` rows of task i, ``expert_up[e]``, ...). Every official tensor is *placed* into a region
of one of our tensors (or dropped, for the dead branch), and every tensor of ours must be covered exactly once,
except the ones the authors never saved. The mapping is planned on names, shapes and dtypes only
(:func:`plan_conversion`), so it can be checked against the key listings of the released model without any
weights; :func:`convert_official` then moves the values and writes our checkpoint format.

Placements (official name without ``module.`` -> ours; i = index of the task in ``model.tasks``, e = expert):

================================================================  ==================================================
``backbone.pos_embed`` (1, 1 + HW, C)                             ``backbone.model.pos_embed`` (1, HW, C), class
                                                                  slot dropped
``backbone.{patch_embed,blocks,norm}.*``                          ``backbone.model.*``
``stage_MTLoRA_mamba.s.{first_decode,input_norm}.*``              ``stages.s.{first_decode,input_norm}.*``
``...task_conv.{task}.*`` / ``task_input_norm0.{task}.*``         rows [i·d, (i+1)·d) of ``task_conv.*`` /
                                                                  ``task_norm.*``
``...proj_z0`` / ``dim_expand_proj_x0`` / ``dim_decrease_proj0``  ``gate_proj`` / ``expand_proj`` / ``out_proj``
                                                                  ``[i]`` (1x1 kernels squeezed)
``...x2dt_proj0.{task}.weight`` / ``dt_proj0.{task}.weight``      ``dt_down.weight[i]`` / ``dt_up.weight[i]``
``...dt_proj0.{task}.bias``                                       ``dt_bias[i]`` (the scan's delta bias)
``...{B,C}_proj0.*`` (and ``conv2d0.*`` with ``x_experts``)       ``bc.{B,C}.*`` (``x_experts.*``), see below
``backbone.task_mask.{task}.{0,1,3}.*``                           ``fusion.{task}.weights.{0,1,3}.*``
``heads.{task}.mt_proj.{0,1}.*``                                  ``heads.{task}.proj.{0,1}.*``
``heads.{task}.linear_pred.*``                                    ``heads.{task}.pred.*``
================================================================  ==================================================

Inside an expert set: ``router.{task}.0.{conv1, ln, conv3, convsp, ln_sp, conv2}`` and ``router.{task}.1`` ->
``router.{channel_proj, channel_norm_*, channel_mix, pool / pool_bias, spatial_norm_*, spatial_proj, head}[i]``;
``Bn.{task}`` / ``Bn_all.{task}`` -> channel rows [i·N, (i+1)·N) of ``norm_out`` / ``norm_experts`` (the
per-task ``num_batches_tracked`` counters become our single counter: their maximum); ``proj_task.{task}.W`` ->
rows [i·R, (i+1)·R) of ``task_down``, ``proj_task.{task}.M`` -> ``task_up[i]``; ``MoE.{e}.W`` -> rows
[e·R, (e+1)·R) of ``expert_down``, ``MoE.{e}.M`` -> ``expert_up[e]``; ``proj_gerneral`` (sic) -> ``general``.

Not in the released checkpoints (pamm-notes §2, bug 1): ``A_log``, ``D`` and the B/C task priors were never
registered, so they are set to their initial values: ``A_log = log(1..N)`` per channel (S4D-real), ``D = 1``,
priors drawn as our :class:`~pamm.models.pame.TaskPrior` init (truncated normal, std 0.02) from a generator seeded
with ``prior_seed`` (the released model re-draws them at random on every run; a fixed seed makes the converted
model deterministic). The x-branch experts (``conv2d0.*``) are computed and discarded by the released code
(bug 3): they are dropped, or, with ``x_experts=True``, loaded into our optional ``stages.s.x_experts`` and the
config switch ``model.x_experts`` turned on. Those weights never received a gradient, so enabling them changes
the model's function relative to the released one.
"""

from __future__ import annotations

import math
import pickle
import re
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..config import Config, load_config
from ..models.pretrained import is_pretrained_folder
from ..tasks import DATASETS

__all__ = [
    "ConversionError", "ConversionReport", "ConversionPlan", "Placement", "TensorSpec", "convert_official",
    "plan_conversion", "read_official_checkpoint", "detect_preset", "model_tensor_specs", "DEFAULT_PRIOR_SEED",
    "CONVERSION_FORMATS",
]  # fmt: skip

CONVERSION_FORMATS = ("checkpoint", "pretrained")
"""What :func:`convert_official` writes: a pamm weights file or a pretrained folder."""

DEFAULT_PRIOR_SEED = 0
"""Seed of the generator that draws the B/C task priors the released checkpoints do not contain."""

_STAGE_PREFIX = "backbone.stage_MTLoRA_mamba."
_DEAD_BRANCH = "conv2d0"
_INITIALISED = re.compile(r"stages\.\d+\.(A_log|D|prior\.B|prior\.C)")
_STATE_DICT_KEYS = ("model", "state_dict", "model_state_dict", "module")


class ConversionError(ValueError):
    """The official checkpoint cannot be converted: unreadable, unsafe, of another model, or some tensors do not
    map. The message names the file and lists every problem."""


@dataclass(frozen=True)
class TensorSpec:
    """Name-free description of a tensor: ``shape`` and ``dtype``."""

    shape: tuple[int, ...]
    dtype: torch.dtype


@dataclass(frozen=True)
class Placement:
    """Where one official tensor goes in our state dict.

    Attributes:
        target: our state-dict key.
        item: put the tensor at ``target[item]`` (one task's or expert's slice of a stacked tensor).
        block: ``(k, n)``: put it at rows ``[k·b, (k+1)·b)`` of ``target`` with ``b = len(target) / n``.
        drop_class_token: the source is a position embedding (1, 1 + L, C) whose class slot is dropped.
        reduce_max: the target is a counter that several official counters fill: it gets their maximum.

    Neither ``item`` nor ``block`` means the whole target. The source may differ from the destination region
    by size-1 dimensions only (1x1 convolution kernels, (1, L) pooling weights).
    """

    target: str
    item: int | None = None
    block: tuple[int, int] | None = None
    drop_class_token: bool = False
    reduce_max: bool = False

    def rows(self, target_shape: tuple[int, ...]) -> tuple[int, int]:
        """Rows [start, stop) of dim 0 this placement covers (scalars have one row)."""
        length = target_shape[0] if target_shape else 1
        if self.item is not None:
            return self.item, self.item + 1
        if self.block is not None:
            k, n = self.block
            size = length // n
            return k * size, (k + 1) * size
        return 0, length

    def region_shape(self, target_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of the destination region inside a target of ``target_shape``."""
        if self.item is not None:
            return tuple(target_shape[1:])
        if self.block is not None:
            start, stop = self.rows(target_shape)
            return (stop - start, *target_shape[1:])
        return tuple(target_shape)

    def region(self, target: Tensor) -> Tensor:
        """The destination view of ``target``."""
        if self.item is not None:
            return target[self.item]
        if self.block is not None:
            start, stop = self.rows(tuple(target.shape))
            return target[start:stop]
        return target

    def describe(self, target_shape: tuple[int, ...]) -> str:
        if self.item is not None:
            return f"{self.target}[{self.item}]"
        if self.block is not None:
            start, stop = self.rows(target_shape)
            return f"{self.target}[{start}:{stop}]"
        return self.target


@dataclass
class ConversionPlan:
    """The mapping of an official state dict onto our model, decided from names, shapes and dtypes.

    Attributes:
        placements: official name -> :class:`Placement`.
        dropped: official name -> why it is dropped (the dead x-branch).
        initialised: our tensors set to their initial values (not in the official checkpoint).
        problems: every reason the conversion cannot proceed (empty when it can).
    """

    placements: dict[str, Placement] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    initialised: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass
class ConversionReport:
    """What :func:`convert_official` did (also stored in the converted checkpoint's ``extra["report"]``).

    Counts are tensors and values (elements). ``mapped`` official tensors are copied into ``filled`` tensors of
    ours; ``dropped`` ones (the dead x-branch, unless ``x_experts``) are discarded; ``initialised`` tensors of ours
    (A_log, D, priors) are set to their initial values. ``class_token_values`` counts the dropped class slot of the
    position embedding; ``cast_tensors`` the official tensors whose dtype differed from ours (converted).
    ``ignored_entries`` are the top-level entries of the file besides the model (optimizer, scheduler, ...).
    """

    source: str
    destination: str
    preset: str
    tasks: list[str]
    x_experts: bool
    prior_seed: int
    official_tensors: int
    mapped_tensors: int
    mapped_values: int
    dropped_tensors: int
    dropped_values: int
    filled_tensors: int
    filled_values: int
    initialised_tensors: int
    initialised_values: int
    class_token_values: int
    cast_tensors: int
    initialised: list[str]
    ignored_entries: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return self.summary()

    def summary(self) -> str:
        """A few human-readable lines for the command line."""
        lines = [
            f"converted {self.source} -> {self.destination} (preset {self.preset}, tasks {', '.join(self.tasks)})",
            f"  official tensors: {self.official_tensors}: {self.mapped_tensors} mapped ({self.mapped_values:,} "
            f"values), {self.dropped_tensors} dropped ({self.dropped_values:,} values"
            f"{', dead x-branch' if self.dropped_tensors else ''})",
            f"  our tensors: {self.filled_tensors} filled ({self.filled_values:,} values), "
            f"{self.initialised_tensors} set to initial values ({self.initialised_values:,} values: A_log, D, "
            f"priors with seed {self.prior_seed})",
            f"  position embedding: class slot dropped ({self.class_token_values} values)",
        ]
        if self.x_experts:
            lines.append(
                "  x-branch experts loaded into stages.*.x_experts (model.x_experts: true); they were "
                "never trained by the released code"
            )
        if self.cast_tensors:
            lines.append(f"  {self.cast_tensors} tensors converted to our dtype")
        if self.ignored_entries:
            lines.append(f"  ignored file entries: {', '.join(self.ignored_entries)}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# Name rules


@dataclass(frozen=True)
class _Layout:
    """What the rules need to know about our model: its task order and the expert count of each expert set."""

    tasks: tuple[str, ...]
    experts: dict[str, int]  # expert-set prefix (e.g. "stages.0.bc.B") -> number of experts


def _expert_set_placement(prefix: str, rest: str, layout: _Layout) -> Placement | None:
    """Placement of ``rest`` (a name inside an official ``MoE`` module) in our ParameterExperts at ``prefix``."""
    tasks = layout.tasks
    t = len(tasks)
    m = re.fullmatch(r"router\.(\w+?)\.0\.(conv1|ln|conv3|convsp|ln_sp|conv2)\.(weight|bias)", rest)
    if m and m[1] in tasks:
        names = {("conv1", "weight"): "channel_proj", ("conv1", "bias"): "channel_proj_bias",
                 ("ln", "weight"): "channel_norm_weight", ("ln", "bias"): "channel_norm_bias",
                 ("conv3", "weight"): "channel_mix", ("conv3", "bias"): "channel_mix_bias",
                 ("convsp", "weight"): "pool", ("convsp", "bias"): "pool_bias",
                 ("ln_sp", "weight"): "spatial_norm_weight", ("ln_sp", "bias"): "spatial_norm_bias",
                 ("conv2", "weight"): "spatial_proj", ("conv2", "bias"): "spatial_proj_bias"}  # fmt: skip
        return Placement(f"{prefix}.router.{names[m[2], m[3]]}", item=tasks.index(m[1]))
    m = re.fullmatch(r"router\.(\w+?)\.1\.(weight|bias)", rest)
    if m and m[1] in tasks:
        return Placement(f"{prefix}.router.{'head' if m[2] == 'weight' else 'head_bias'}", item=tasks.index(m[1]))
    m = re.fullmatch(r"(Bn|Bn_all)\.(\w+?)\.(weight|bias|running_mean|running_var|num_batches_tracked)", rest)
    if m and m[2] in tasks:
        norm = "norm_out" if m[1] == "Bn" else "norm_experts"
        if m[3] == "num_batches_tracked":
            return Placement(f"{prefix}.{norm}.num_batches_tracked", reduce_max=True)
        return Placement(f"{prefix}.{norm}.{m[3]}", block=(tasks.index(m[2]), t))
    m = re.fullmatch(r"proj_task\.(\w+?)\.(W|M)\.(weight|bias)", rest)
    if m and m[1] in tasks:
        i = tasks.index(m[1])
        if m[2] == "W":
            return Placement(f"{prefix}.task_down{'_bias' if m[3] == 'bias' else ''}", block=(i, t))
        return Placement(f"{prefix}.task_up{'_bias' if m[3] == 'bias' else ''}", item=i)
    m = re.fullmatch(r"MoE\.(\d+)\.(W|M)\.(weight|bias)", rest)
    if m and int(m[1]) < layout.experts.get(prefix, 0):
        e, suffix = int(m[1]), "_bias" if m[3] == "bias" else ""
        if m[2] == "W":
            return Placement(f"{prefix}.expert_down{suffix}", block=(e, layout.experts[prefix]))
        return Placement(f"{prefix}.expert_up{suffix}", item=e)
    m = re.fullmatch(r"proj_gerneral\.(weight|bias)", rest)
    if m:
        return Placement(f"{prefix}.general.{m[1]}")
    return None


def _stage_placement(stage: int, rest: str, layout: _Layout) -> Placement | None:
    """Placement of ``rest``, a name inside official ``stage_MTLoRA_mamba.{stage}``."""
    tasks, t, p = layout.tasks, len(layout.tasks), f"stages.{stage}"
    m = re.fullmatch(r"(first_decode|input_norm)\.(weight|bias)", rest)
    if m:
        return Placement(f"{p}.{m[1]}.{m[2]}")
    m = re.fullmatch(r"(task_conv|task_input_norm0)\.(\w+?)\.(weight|bias)", rest)
    if m and m[2] in tasks:
        ours = "task_conv" if m[1] == "task_conv" else "task_norm"
        return Placement(f"{p}.{ours}.{m[3]}", block=(tasks.index(m[2]), t))
    m = re.fullmatch(r"(proj_z0|dim_expand_proj_x0|dim_decrease_proj0)\.(\w+?)\.(weight|bias)", rest)
    if m and m[2] in tasks:
        ours = {"proj_z0": "gate_proj", "dim_expand_proj_x0": "expand_proj", "dim_decrease_proj0": "out_proj"}[m[1]]
        return Placement(f"{p}.{ours}.{m[3]}", item=tasks.index(m[2]))
    m = re.fullmatch(r"x2dt_proj0\.(\w+?)\.weight", rest)
    if m and m[1] in tasks:
        return Placement(f"{p}.dt_down.weight", item=tasks.index(m[1]))
    m = re.fullmatch(r"dt_proj0\.(\w+?)\.(weight|bias)", rest)
    if m and m[1] in tasks:
        return Placement(f"{p}.dt_up.weight" if m[2] == "weight" else f"{p}.dt_bias", item=tasks.index(m[1]))
    m = re.fullmatch(r"(B|C)_proj0\.(.+)", rest)
    if m:
        return _expert_set_placement(f"{p}.bc.{m[1]}", m[2], layout)
    m = re.fullmatch(rf"{_DEAD_BRANCH}\.(.+)", rest)
    if m:
        return _expert_set_placement(f"{p}.x_experts", m[1], layout)
    return None


def _placement(name: str, layout: _Layout) -> Placement | None:
    """Our placement of the official tensor ``name`` (without ``module.``), None when no rule matches."""
    tasks = layout.tasks
    if name == "backbone.pos_embed":
        return Placement("backbone.model.pos_embed", drop_class_token=True)
    m = re.fullmatch(r"backbone\.((?:patch_embed|blocks|norm)\..+)", name)
    if m:
        return Placement(f"backbone.model.{m[1]}")
    m = re.fullmatch(rf"{re.escape(_STAGE_PREFIX)}(\d+)\.(.+)", name)
    if m:
        return _stage_placement(int(m[1]), m[2], layout)
    m = re.fullmatch(r"backbone\.task_mask\.(\w+?)\.([013])\.(.+)", name)
    if m and m[1] in tasks:
        return Placement(f"fusion.{m[1]}.weights.{m[2]}.{m[3]}")
    m = re.fullmatch(r"heads\.(\w+?)\.(mt_proj\.[01]|linear_pred)\.(.+)", name)
    if m and m[1] in tasks:
        ours = "pred" if m[2] == "linear_pred" else m[2].replace("mt_proj", "proj")
        return Placement(f"heads.{m[1]}.{ours}.{m[3]}")
    return None


def _task_of(name: str, known: Iterable[str]) -> str | None:
    """The task named in an official tensor name, if it names one of ``known`` or any dataset task."""
    names = set(known) | {t for spec in DATASETS.values() for t in spec.tasks}
    parts = name.split(".")
    return next((p for p in parts if p in names), None)


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(s for s in shape if s != 1)


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def _source_shape(spec: TensorSpec, placement: Placement) -> tuple[int, ...]:
    """Shape of the part of the official tensor that is copied."""
    shape = tuple(spec.shape)
    if placement.drop_class_token and len(shape) == 3 and shape[1] >= 1:
        return shape[0], shape[1] - 1, shape[2]
    return shape


def plan_conversion(
    official: Mapping[str, TensorSpec], ours: Mapping[str, TensorSpec], tasks: Iterable[str], x_experts: bool = False
) -> ConversionPlan:
    """Map official tensor names onto our state dict, using names, shapes and dtypes only.

    Args:
        official: official name (without ``module.``) -> spec.
        ours: our state-dict key -> spec (e.g. from a model built on the meta device: :func:`model_tensor_specs`).
        tasks: our model's task order (``model.tasks``).
        x_experts: place the dead x-branch (``conv2d0``) into ``stages.*.x_experts`` instead of dropping it.

    Returns:
        the plan; ``plan.problems`` lists every unmapped, mis-shaped, unknown or missing tensor.
    """
    tasks = tuple(tasks)
    experts = {k[: -len(".expert_up")]: spec.shape[0] for k, spec in ours.items() if k.endswith(".expert_up")}
    layout = _Layout(tasks, experts)
    plan = ConversionPlan()
    rows: dict[str, list[tuple[int, int, str, bool]]] = {}  # target -> (start, stop, official name, reduce_max)
    for name, spec in official.items():
        if f".{_DEAD_BRANCH}." in name and name.startswith(_STAGE_PREFIX) and not x_experts:
            plan.dropped[name] = "dead x-branch of the released code (computed, then overwritten)"
            continue
        placement = _placement(name, layout)
        if placement is None:
            task = _task_of(name, tasks)
            why = (
                f"task {task!r} is not one of the model's tasks {list(tasks)}"
                if task and task not in tasks
                else "no rule maps it"
            )
            plan.problems.append(f"unmapped official tensor {name} {tuple(spec.shape)}: {why}")
            continue
        target = ours.get(placement.target)
        if target is None:
            plan.problems.append(f"official tensor {name} maps to {placement.target}, which the model does not have")
            continue
        region = placement.region_shape(target.shape)
        source = _source_shape(spec, placement)
        misfit = placement.block is not None and target.shape[0] % placement.block[1] != 0
        if placement.item is not None and placement.item >= target.shape[0]:
            plan.problems.append(
                f"official tensor {name} maps to {placement.describe(target.shape)}, beyond the "
                f"{target.shape[0]} of the model"
            )
            continue
        # a region claimed by a mis-fitting tensor is reported once, as that tensor's problem, not as missing
        start, stop = placement.rows(target.shape)
        rows.setdefault(placement.target, []).append((start, stop, name, placement.reduce_max))
        if misfit or _squeezed(source) != _squeezed(region):
            plan.problems.append(
                f"shape mismatch: official {name} {tuple(spec.shape)} -> "
                f"{placement.describe(target.shape)} expects {region}"
            )
        elif spec.dtype.is_floating_point != target.dtype.is_floating_point:
            plan.problems.append(
                f"dtype mismatch: official {name} is {spec.dtype}, {placement.target} is {target.dtype}"
            )
        else:
            plan.placements[name] = placement
    for key, spec in ours.items():
        covered = sorted(rows.get(key, []))
        if not covered:
            if _INITIALISED.fullmatch(key):
                plan.initialised.append(key)
            else:
                plan.problems.append(f"{key} {tuple(spec.shape)} is not provided by the official checkpoint")
            continue
        if all(reduce_max for *_, reduce_max in covered):
            continue  # several counters -> one: each covers the whole target
        length = spec.shape[0] if spec.shape else 1
        position = 0
        for start, stop, name, _ in covered:
            if start < position:
                plan.problems.append(f"{key}: rows [{start}, {stop}) are given twice (again by {name})")
            elif start > position:
                plan.problems.append(
                    f"{key}: rows [{position}, {start}) of {length} are not provided by the official checkpoint"
                )
            position = max(position, stop)
        if position < length:
            plan.problems.append(
                f"{key}: rows [{position}, {length}) of {length} are not provided by the official checkpoint"
            )
    return plan


# ----------------------------------------------------------------------------------------------------------
# Files


def read_official_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], list[str]]:
    """Read the model state dict of an official checkpoint, safely.

    The file is opened with ``torch.load(weights_only=True)`` (memory-mapped when it is a zip checkpoint), so it
    can hold tensors and plain data only, never code. The state dict is the file itself or its ``model`` /
    ``state_dict`` / ``model_state_dict`` / ``module`` entry; the DDP prefix ``module.`` is removed.

    Returns:
        (state dict: official name -> tensor, the names of the other top-level entries of the file).

    Raises:
        ConversionError: missing, damaged, or unsafe file (pickled objects other than tensors), or no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"official checkpoint {path} does not exist or is not a file")
    if path.stat().st_size == 0:
        raise ConversionError(f"official checkpoint {path} is empty (0 bytes)")
    is_zip = zipfile.is_zipfile(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as e:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path) if is_zip else []
        if unsafe or "global" in str(e).lower():
            found = f" (it references {', '.join(unsafe)})" if unsafe else ""
            raise ConversionError(
                f"refusing to load {path}: it contains pickled Python objects other than tensors and plain "
                f"data{found}, and official checkpoints are only read with torch.load(weights_only=True), which "
                f"never runs code from the file. If you trust the file, save its state dict alone in Python: "
                f"torch.save(torch.load(src, weights_only=False)['model'], 'weights.pth')"
            ) from None
        raise ConversionError(
            f"cannot read official checkpoint {path}: not a torch checkpoint, or damaged (its pickle stream is invalid)"
        ) from None
    except Exception as e:  # noqa: BLE001 - any reader failure is a damaged or foreign file
        raise ConversionError(f"cannot read official checkpoint {path}: {type(e).__name__}: {e}") from None
    state, ignored = data, []
    if isinstance(data, Mapping) and not all(isinstance(v, Tensor) for v in data.values()):
        key = next((k for k in _STATE_DICT_KEYS if isinstance(data.get(k), Mapping)), None)
        if key is None:
            raise ConversionError(
                f"official checkpoint {path} holds no state dict: top-level entries "
                f"{sorted(map(str, data))}, expected a mapping of tensors or one of "
                f"{list(_STATE_DICT_KEYS)}"
            )
        state, ignored = data[key], sorted(str(k) for k in data if k != key)
    if not isinstance(state, Mapping) or not state:
        raise ConversionError(f"official checkpoint {path} does not hold a non-empty mapping of tensors")
    bad = [str(k) for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise ConversionError(
            f"official checkpoint {path}: state dict entries that are not tensors: "
            f"{', '.join(bad[:10])}{' ...' if len(bad) > 10 else ''}"
        )
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        name = key[len("module.") :] if key.startswith("module.") else key
        if name in out:
            raise ConversionError(f"official checkpoint {path}: {name!r} appears both with and without 'module.'")
        out[name] = value
    return out, ignored


def detect_preset(names: Iterable[str], shapes: Mapping[str, tuple[int, ...]]) -> str:
    """The paper preset of an official state dict, from its heads: 40 semseg classes -> ``nyud-vitl``;
    ``human_parts`` or ``sal`` heads, or 21 semseg classes -> ``pascal-vitl``."""
    heads = {m[1] for n in names if (m := re.fullmatch(r"heads\.(\w+?)\.linear_pred\.weight", n))}
    classes = shapes.get("heads.semseg.linear_pred.weight", (0,))[0]
    if heads & {"human_parts", "sal"} or classes == DATASETS["pascal"].num_outputs["semseg"]:
        return "pascal-vitl"
    if classes == DATASETS["nyud"].num_outputs["semseg"] or heads & {"depth"}:
        return "nyud-vitl"
    raise ConversionError(
        f"cannot tell the preset from the heads {sorted(heads)} (semseg classes: {classes}); "
        f"pass the preset (nyud-vitl or pascal-vitl)"
    )


def model_tensor_specs(cfg: Config) -> tuple[dict[str, TensorSpec], list[str]]:
    """Names, shapes and dtypes of every tensor of the model of ``cfg`` (built on the meta device: no memory),
    and the model's task order."""
    from ..models import build_model

    with torch.device("meta"):
        model = build_model(cfg, load_backbone_weights=False)
    return {k: TensorSpec(tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}, list(model.tasks)


def _initial_value(key: str, spec: TensorSpec, generator: torch.Generator) -> Tensor:
    """Initial value of a tensor the official checkpoints lack (see the module docstring)."""
    if key.endswith(".A_log"):  # (T, d_inner, N): log(1..N) for every channel
        n = spec.shape[-1]
        return torch.log(torch.arange(1, n + 1, dtype=spec.dtype)).expand(spec.shape).clone()
    if key.endswith(".D"):
        return torch.ones(spec.shape, dtype=spec.dtype)
    value = torch.empty(spec.shape, dtype=spec.dtype)
    torch.nn.init.trunc_normal_(value, std=0.02, generator=generator)  # TaskPrior's init
    return value


def _problems_error(path: Path, problems: list[str], preset: str, detected: str | None) -> ConversionError:
    lines = [f"cannot convert {path} to preset {preset}: {len(problems)} problem(s):"]
    if detected and detected != preset:
        lines.append(f"  (its heads look like preset {detected})")
    lines += [f"  {p}" for p in problems]
    return ConversionError("\n".join(lines))


def convert_official(
    src: str | Path,
    dst: str | Path,
    preset: str | None = None,
    *,
    x_experts: bool = False,
    prior_seed: int = DEFAULT_PRIOR_SEED,
    overrides: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    format: str = "auto",
) -> ConversionReport:
    """Convert an official PAMM checkpoint into a pamm checkpoint loadable with
    :func:`pamm.engine.checkpoint.load_model`.

    Args:
        src: the authors' checkpoint (``.pth``, DDP-saved ``{"model": ..., "optimizer": ...}`` or a bare state
            dict); read with ``weights_only=True``.
        dst: what to write, atomically: a pamm weights file (safetensors with the config in its metadata) or a
            pretrained folder (config.json, model.safetensors, README.md with a model card: shareable on the Hub,
            loadable with ``PAMM.from_pretrained`` / ``pamm.load``), see ``format``.
        preset: ``nyud-vitl`` or ``pascal-vitl``; detected from the heads when None.
        x_experts: keep the dead x-branch experts as ``stages.*.x_experts`` (sets ``model.x_experts: true``).
        prior_seed: seed for the B/C task priors, which the official checkpoints lack.
        overrides: config overrides (dotted keys) on top of the preset, for checkpoints of non-default settings.
        overwrite: replace ``dst`` if it exists (a pretrained folder only: never another folder).
        format: ``"checkpoint"`` (a weights file), ``"pretrained"`` (a folder) or ``"auto"``: a weights file when
            ``dst`` ends in ``.safetensors``, else a pretrained folder.

    Returns:
        the :class:`ConversionReport` (also stored in the checkpoint's extra metadata).

    Raises:
        ConversionError: unreadable or unsafe source, ``dst`` exists, unknown preset, or any official tensor
            unmapped / mis-shaped / any tensor of ours not provided (all listed).
    """
    from ..engine.checkpoint import save_weights

    src, dst = Path(src), Path(dst)
    if format == "auto":
        format = "checkpoint" if dst.suffix == ".safetensors" else "pretrained"
    if format not in CONVERSION_FORMATS:
        raise ConversionError(f"unknown output format {format!r}; expected one of {list(CONVERSION_FORMATS)}")
    if format == "checkpoint" and dst.exists() and dst.is_dir():
        raise ConversionError(
            f"destination {dst} is a directory; expected a weights file path (or --format "
            f"pretrained for a pretrained folder)"
        )
    if dst.exists() and not overwrite and (format == "checkpoint" or not dst.is_dir() or any(dst.iterdir())):
        raise ConversionError(f"destination {dst} exists; choose another path or allow overwriting (--overwrite)")
    if format == "pretrained" and dst.exists() and not dst.is_dir():
        raise ConversionError(f"destination {dst} is a file; a pretrained folder is written with --format pretrained")
    if format == "pretrained" and overwrite and dst.is_dir() and any(dst.iterdir()) and not is_pretrained_folder(dst):
        raise ConversionError(
            f"destination {dst} is a folder that is not a pamm pretrained folder; it is never "
            f"replaced, even with overwrite"
        )
    if dst.resolve() == src.resolve():
        raise ConversionError(f"destination {dst} is the source file")
    official, ignored = read_official_checkpoint(src)
    try:
        detected = detect_preset(official, {k: tuple(v.shape) for k, v in official.items()})
    except ConversionError:
        if preset is None:
            raise
        detected = None
    preset = preset or detected
    assert preset is not None  # given, or detected (detect_preset raised otherwise)
    settings: dict[str, Any] = {"model.backbone.pretrained": False, **(overrides or {})}
    if x_experts:
        settings["model.x_experts"] = True
    cfg = load_config(preset, settings)
    heads = {m[1] for n in official if (m := re.fullmatch(r"heads\.(\w+?)\.linear_pred\.weight", n))}
    dataset_tasks = DATASETS[cfg.data.dataset].tasks
    if heads and heads != set(cfg.data.task_list) and heads <= set(dataset_tasks):
        cfg = load_config(preset, {**settings, "data.tasks": [t for t in dataset_tasks if t in heads]})
    ours, tasks = model_tensor_specs(cfg)
    plan = plan_conversion(
        {k: TensorSpec(tuple(v.shape), v.dtype) for k, v in official.items()}, ours, tasks, x_experts=x_experts
    )
    if plan.problems:
        raise _problems_error(src, plan.problems, preset, detected)

    state = {
        k: (torch.zeros if spec.dtype == torch.int64 else torch.empty)(spec.shape, dtype=spec.dtype)
        for k, spec in ours.items()
    }
    cast = class_token_values = 0
    with torch.no_grad():
        for name, placement in plan.placements.items():
            value = official[name]
            if placement.drop_class_token:
                class_token_values += value[:, :1].numel()
                value = value[:, 1:]
            target = state[placement.target]
            cast += value.dtype != target.dtype
            region = placement.region(target)
            if placement.reduce_max:
                region.copy_(torch.maximum(region, value.reshape(region.shape).to(region.dtype)))
            else:
                region.copy_(value.reshape(region.shape))
        generator = torch.Generator().manual_seed(prior_seed)
        for key in plan.initialised:
            state[key] = _initial_value(key, ours[key], generator)

    report = ConversionReport(
        source=str(src),
        destination=str(dst),
        preset=preset,
        tasks=tasks,
        x_experts=x_experts,
        prior_seed=prior_seed,
        official_tensors=len(official),
        mapped_tensors=len(plan.placements),
        mapped_values=sum(official[n].numel() for n in plan.placements),
        dropped_tensors=len(plan.dropped),
        dropped_values=sum(official[n].numel() for n in plan.dropped),
        filled_tensors=len(ours) - len(plan.initialised),
        filled_values=sum(_numel(s.shape) for k, s in ours.items() if k not in plan.initialised),
        initialised_tensors=len(plan.initialised),
        initialised_values=sum(_numel(ours[k].shape) for k in plan.initialised),
        class_token_values=class_token_values,
        cast_tensors=int(cast),
        initialised=list(plan.initialised),
        ignored_entries=ignored,
    )
    extra = {"converted_from": {"file": src.name, "bytes": src.stat().st_size}, "report": report.to_dict()}
    if format == "checkpoint":
        save_weights(dst, state, cfg, extra=extra)
        return report
    from ..models import build_model
    from .hub import TrainedModel, model_card_kwargs

    model = build_model(cfg, load_backbone_weights=False)
    model.load_state_dict(state)
    del state
    trained = TrainedModel(model.eval(), "weights", str(src), src, experiment=cfg, extra=extra)
    model.save_pretrained(
        dst,
        config=cfg,
        overwrite=overwrite,
        model_card_kwargs=model_card_kwargs(trained, name=f"PAMM {preset} (converted)", source_name=str(dst)),
    )
    return report
