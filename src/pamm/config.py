"""Typed configuration: dataclasses validated at load time, YAML presets shipped in the package.

``load_config("nyud-vitl", {"train.lr": 2e-5})`` returns a :class:`Config`; every unknown key, wrong type or bad
value raises :class:`ConfigError` naming the dotted key and what is allowed.

The model's settings are split in two: :class:`ModelConfig` is the architecture (what the weights mean: stored in
every checkpoint and all that is needed to rebuild the model), :class:`RuntimeConfig` says how to execute it (scan
backend, activation checkpointing, memory format) and comes from the session, never from a checkpoint
(:func:`config_from_checkpoint`). Configs written by older versions load through :func:`migrate_config_dict`; an
old key given by a user is an error naming its new place.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

from .errors import InputError
from .tasks import DATASET_KINDS, GENERIC, TASKS, DatasetSpec, dataset_spec

__all__ = [
    "Config", "ModelConfig", "BackboneConfig", "ScanConfig", "RuntimeConfig", "DataConfig", "TrainConfig",
    "EvalConfig", "ConfigError", "load_config", "preset_names", "config_to_dict", "config_from_dict",
    "config_from_checkpoint", "migrate_config_dict", "override_config", "parse_override",
    "ACTIVATION_CHECKPOINT_PLACES", "MOVED_KEYS", "pair",
]  # fmt: skip


class ConfigError(InputError):
    """A configuration key is unknown, has the wrong type or a value that is not allowed."""


def _check(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"config key '{key}': {message}")


_T = TypeVar("_T")


def pair(values: Sequence[_T]) -> tuple[_T, _T]:
    """A two-element sequence as a tuple: a config's validated ``[H, W]`` or ``[low, high]``, a tensor's
    ``shape[-2:]``. ValueError for any other length."""
    first, second = values
    return first, second


@dataclass
class BackboneConfig:
    """The image encoder (a timm model).

    Attributes:
        name: timm model name. Plain ViTs (``vit_*``) are tapped through ``forward_intermediates``;
            hierarchical models (ConvNeXt, EfficientNet, Swin, ...) through ``features_only``.
        pretrained: load timm's pretrained weights (Hugging Face hub; honours ``HF_HUB_OFFLINE``).
        weights: a local weights file (.safetensors, .pth, .pt, .bin) used instead of the hub, or
            ``pkg:PACKAGE/path`` for a file inside an installed Python package.
        weights_mapping: how the file's tensors find the model's: ``names`` (timm names, the default) or
            ``positional`` (the file lists the full timm architecture's tensors in the same order under other
            names, e.g. a port of another codebase; every shape is checked).
        taps: which blocks (ViT, 0-based) or feature levels (hierarchical) feed the four PAME stages.
            Paper: blocks 6, 12, 18, 24 (1-based), i.e. ``[5, 11, 17, 23]``.
        norm_last: apply the ViT's final LayerNorm to the last tap (paper: yes).
        drop_path: stochastic depth rate of the backbone.
        patch_size: token stride of the backbone grid (16 for ViT-*/16; hierarchical taps are resampled to
            the grid of this stride).
    """

    name: str = "vit_large_patch16_384"
    pretrained: bool = True
    weights: str | None = None
    weights_mapping: str = "names"
    taps: list[int] = field(default_factory=lambda: [5, 11, 17, 23])
    norm_last: bool = True
    drop_path: float = 0.15
    patch_size: int = 16

    def validate(self, key: str) -> None:
        _check(
            self.weights_mapping in ("names", "positional"),
            f"{key}.weights_mapping",
            f"must be 'names' or 'positional', got {self.weights_mapping!r}",
        )
        _check(len(self.taps) >= 1, f"{key}.taps", "needs at least one tap")
        _check(all(t >= 0 for t in self.taps), f"{key}.taps", f"indices must be >= 0, got {self.taps}")
        _check(list(self.taps) == sorted(set(self.taps)), f"{key}.taps", f"must be increasing, got {self.taps}")
        _check(0.0 <= self.drop_path < 1.0, f"{key}.drop_path", f"must be in [0, 1), got {self.drop_path}")
        _check(
            self.patch_size in (4, 8, 14, 16, 32),
            f"{key}.patch_size",
            f"must be one of 4, 8, 14, 16, 32, got {self.patch_size}",
        )


@dataclass
class ScanConfig:
    """How the selective scan walks the token grid (the backend that runs it is a runtime setting:
    :attr:`RuntimeConfig.scan_backend`).

    Attributes:
        kind: ``hilbert`` (paper), ``zorder``, ``snake`` or ``raster``.
        directions: 1, 2 or 4 rotations of the curve; their outputs are summed.
    """

    kind: str = "hilbert"
    directions: int = 4

    def validate(self, key: str) -> None:
        from .ops import SCAN_KINDS

        _check(self.kind in SCAN_KINDS, f"{key}.kind", f"must be one of {list(SCAN_KINDS)}, got {self.kind!r}")
        _check(self.directions in (1, 2, 4), f"{key}.directions", f"must be 1, 2 or 4, got {self.directions}")


@dataclass
class ModelConfig:
    """The PAMM architecture (notes §1): everything that gives the weights their meaning. Stored in every checkpoint;
    how to execute the model is :class:`RuntimeConfig`. Defaults are the paper's NYUD-v2 settings.

    Attributes:
        decoder: ``pamm`` (PAME stages) or ``shared`` (the multi-task baseline: shared first conv, task convs,
            stage fusion and heads, no selective scan).
        dim: decoder width d; the scan runs on ``expand * dim`` channels per task.
        d_state: SSM state size N.
        dt_rank: rank of the Δ projection; 0 means ``ceil(dim / 16)``.
        experts: B and C from the dual parameter experts (False: plain per-task 1x1 projections).
        num_experts, expert_rank, top_k, expert_kernel: the shared low-rank experts of B and C (released code:
            15 experts of rank 4, top 9, 9x9 kernels).
        router_noise: noisy top-k routing in training.
        priors: learnable per-task prior vectors added to B and C.
        x_experts: route the x branch through its own experts (the released code computes and discards them;
            off reproduces its effective behaviour). x_expert_rank / x_expert_kernel configure them.
        general_detach: the shared full projection of B/C sees x detached (as the released code).
        scan: scan order settings.
        head_bias_init: initial output bias of a task's head (e.g. ``{depth: 3.0}``: start depth predictions at
            3 m instead of 0); tasks not listed keep the released init (normal, std 0.02).
    """

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    decoder: str = "pamm"
    dim: int = 768
    expand: int = 2
    d_state: int = 16
    dt_rank: int = 0
    experts: bool = True
    num_experts: int = 15
    expert_rank: int = 4
    top_k: int = 9
    expert_kernel: int = 9
    router_noise: bool = True
    priors: bool = True
    x_experts: bool = False
    x_expert_rank: int = 16
    x_expert_kernel: int = 3
    general_detach: bool = True
    scan: ScanConfig = field(default_factory=ScanConfig)
    head_bias_init: dict[str, float] = field(default_factory=dict)

    def validate(self, key: str) -> None:
        for t in self.head_bias_init:
            _check(t in TASKS, f"{key}.head_bias_init", f"unknown task {t!r}; allowed: {sorted(TASKS)}")
        _check(
            self.decoder in ("pamm", "shared"), f"{key}.decoder", f"must be 'pamm' or 'shared', got {self.decoder!r}"
        )
        _check(
            self.dim > 0 and self.dim % 32 == 0,
            f"{key}.dim",
            f"must be a positive multiple of 32 (GroupNorm(32)), got {self.dim}",
        )
        _check(self.expand >= 1, f"{key}.expand", f"must be >= 1, got {self.expand}")
        _check((self.expand * self.dim) % 4 == 0, f"{key}.expand", "expand * dim must be divisible by 4")
        _check(self.d_state >= 1, f"{key}.d_state", f"must be >= 1, got {self.d_state}")
        _check(self.dt_rank >= 0, f"{key}.dt_rank", f"must be >= 0 (0 = auto), got {self.dt_rank}")
        _check(self.num_experts >= 1, f"{key}.num_experts", f"must be >= 1, got {self.num_experts}")
        _check(
            1 <= self.top_k <= self.num_experts,
            f"{key}.top_k",
            f"must be in [1, num_experts={self.num_experts}], got {self.top_k}",
        )
        _check(self.expert_rank >= 1, f"{key}.expert_rank", f"must be >= 1, got {self.expert_rank}")
        for name in ("expert_kernel", "x_expert_kernel"):
            k = getattr(self, name)
            _check(k >= 1 and k % 2 == 1, f"{key}.{name}", f"must be a positive odd number, got {k}")
        _check(self.x_expert_rank >= 1, f"{key}.x_expert_rank", f"must be >= 1, got {self.x_expert_rank}")
        self.backbone.validate(f"{key}.backbone")
        self.scan.validate(f"{key}.scan")

    @property
    def resolved_dt_rank(self) -> int:
        return self.dt_rank or math.ceil(self.dim / 16)


ACTIVATION_CHECKPOINT_PLACES = ("backbone", "stages")
"""Where activation checkpointing can be switched on (:attr:`RuntimeConfig.activation_checkpointing`)."""


def _check_scan_backend(name: str, key: str) -> None:
    """``name`` must be one of :data:`pamm.ops.SCAN_BACKENDS` (``auto`` among them) or a removed backend's name that
    :func:`pamm.ops.resolve_scan_backend` still maps (``chunked``: the reference, with a FutureWarning)."""
    from .ops import SCAN_BACKENDS, resolve_scan_backend

    try:
        resolve_scan_backend(name)
        return
    except ValueError:
        pass
    _check(False, key, f"must be one of {list(SCAN_BACKENDS)}, got {name!r}")


@dataclass
class RuntimeConfig:
    """How to execute the model: none of these settings changes its weights or (beyond floating-point rounding) its
    outputs. They come from the session: a checkpoint's stored runtime is not read back
    (:func:`config_from_checkpoint`); change them on a built model with :meth:`pamm.models.PAMM.set_runtime`.

    Attributes:
        scan_backend: selective-scan backend, one of :data:`pamm.ops.SCAN_BACKENDS`: ``auto`` (the best one for the
            device), ``triton``, ``cpu`` (Numba), ``reference`` (plain PyTorch).
        activation_checkpointing: places whose activations are recomputed in the backward pass instead of kept
            (less memory for about one more forward pass), from :data:`ACTIVATION_CHECKPOINT_PLACES`: ``backbone``
            (the timm model's own per-block checkpointing), ``stages`` (each PAME stage as a whole). Empty: none.
        channels_last: keep the decoder's activations channels-last on CUDA (faster convolutions).
    """

    scan_backend: str = "auto"
    activation_checkpointing: list[str] = field(default_factory=list)
    channels_last: bool = True

    def validate(self, key: str) -> None:
        _check_scan_backend(self.scan_backend, f"{key}.scan_backend")
        places = self.activation_checkpointing
        for p in places:
            _check(
                p in ACTIVATION_CHECKPOINT_PLACES,
                f"{key}.activation_checkpointing",
                f"unknown place {p!r}; allowed: {list(ACTIVATION_CHECKPOINT_PLACES)}",
            )
        _check(len(set(places)) == len(places), f"{key}.activation_checkpointing", f"duplicate place in {places}")


@dataclass
class DataConfig:
    """Dataset and input sizes.

    Attributes:
        dataset: ``nyud`` or ``pascal`` (ATRC layouts), or ``generic``: a folder described by its own
            ``dataset.yaml`` (tasks, classes, encodings, splits: docs/dataset-format.md).
        root: dataset folder (``.../NYUDv2``, ``.../PASCALContext`` or the folder holding ``dataset.yaml``).
        tasks: tasks to learn; empty means every task of the dataset.
        train_size: training crop (H, W); sets the token grid the model is built for.
        test_size: evaluation pad size (H, W); images are padded (never resized) to at least this size and to
            a multiple of the patch size.
        workers: DataLoader worker processes.
        scale_range: training augmentation's random rescale factors [low, high] (paper: [0.5, 2.0]).
        on_error: a damaged sample (found by the validation before training and evaluation, or when loaded):
            ``raise`` stops with one line naming the file; ``skip`` leaves it out, counts it and lists it in
            ``train.log`` and ``metrics.json``.
    """

    dataset: str = "nyud"
    root: str = "data/NYUDv2"
    tasks: list[str] = field(default_factory=list)
    train_size: list[int] = field(default_factory=lambda: [448, 576])
    test_size: list[int] = field(default_factory=lambda: [448, 576])
    workers: int = 4
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    on_error: str = "raise"

    def validate(self, key: str) -> None:
        _check(
            self.dataset in DATASET_KINDS,
            f"{key}.dataset",
            f"must be one of {list(DATASET_KINDS)}, got {self.dataset!r}",
        )
        # a generic dataset's tasks are those of its dataset.yaml, checked when it is read (task_list)
        known = tuple(TASKS) if self.dataset == GENERIC else dataset_spec(self.dataset).tasks
        for t in self.tasks:
            _check(t in known, f"{key}.tasks", f"{t!r} is not a task of {self.dataset}; allowed: {list(known)}")
        _check(len(set(self.tasks)) == len(self.tasks), f"{key}.tasks", f"duplicate task in {self.tasks}")
        for name in ("train_size", "test_size"):
            v = getattr(self, name)
            _check(len(v) == 2 and all(s > 0 for s in v), f"{key}.{name}", f"must be [height, width] > 0, got {v}")
        _check(self.workers >= 0, f"{key}.workers", f"must be >= 0, got {self.workers}")
        _check(
            len(self.scale_range) == 2 and 0 < self.scale_range[0] <= self.scale_range[1],
            f"{key}.scale_range",
            f"must be [low, high] with 0 < low <= high, got {self.scale_range}",
        )
        _check(
            self.on_error in ("raise", "skip"), f"{key}.on_error", f"must be 'raise' or 'skip', got {self.on_error!r}"
        )

    @property
    def spec(self) -> DatasetSpec:
        """The dataset's label space: a benchmark's :data:`~pamm.tasks.DATASETS` entry, or for ``generic`` the one
        of ``root/dataset.yaml`` (read, validated and cached; an InputError names the file and key)."""
        if self.dataset == GENERIC:
            from .manifest import read_manifest

            return read_manifest(self.root).spec
        return dataset_spec(self.dataset)

    @property
    def task_list(self) -> list[str]:
        """The tasks in the dataset's canonical order (a generic dataset: its manifest's order, read from
        ``root``); a task of ``tasks`` that the dataset does not annotate is an InputError naming the key."""
        return list(self.spec.select(self.tasks, "config key 'data.tasks'"))


@dataclass
class TrainConfig:
    """Optimisation (notes §3). Defaults are the paper's NYUD-v2 recipe.

    Attributes:
        iterations: optimizer steps.
        batch_size: images per process and step.
        optimizer: ``adam`` (paper), ``adamw`` or ``sgd`` (momentum 0.9).
        lr, weight_decay: optimizer settings.
        poly_power: the learning rate follows ``lr * (1 - step / iterations) ** poly_power``.
        warmup_iters: linear warm-up steps (0 in the paper).
        grad_clip: max global gradient norm (0 disables).
        loss_weights: per-task loss weights.
        load_balancing: weight of the routers' CV² load-balancing loss.
        amp: ``auto`` (bf16 autocast on CUDA, fp32 on CPU), ``bf16``, ``fp16`` or ``off``.
        seed: base seed for weights, data order, augmentation and router noise.
        deterministic: deterministic algorithms (bitwise-reproducible resumes on CPU).
        flush_denormal: on CPU, flush denormal floats to zero (``torch.set_flush_denormal``). Adam's second moments
            of rarely-used weights decay into the denormal range, where x86 arithmetic is far slower: the demo
            trains 1.19x faster with it (BENCHMARKS.md, benchmarks/cpu_demo_speed.py).
        eval_every, checkpoint_every, log_every: in steps (0 disables periodic evaluation).
        max_nonfinite_steps: skipped steps with a non-finite loss or gradient before training stops.
        compile: ``torch.compile`` the decoder (GPU; compile time is minutes).
    """

    iterations: int = 40000
    batch_size: int = 6
    optimizer: str = "adam"
    lr: float = 1e-5
    weight_decay: float = 1e-6
    poly_power: float = 0.9
    warmup_iters: int = 0
    grad_clip: float = 10.0
    loss_weights: dict[str, float] = field(
        default_factory=lambda: {"semseg": 1.0, "depth": 1.0, "normals": 10.0, "edge": 50.0}
    )
    load_balancing: float = 5e-4
    amp: str = "auto"
    seed: int = 0
    deterministic: bool = False
    flush_denormal: bool = True
    eval_every: int = 5000
    checkpoint_every: int = 1000
    log_every: int = 20
    max_nonfinite_steps: int = 10
    compile: bool = False

    def validate(self, key: str) -> None:
        _check(self.iterations >= 1, f"{key}.iterations", f"must be >= 1, got {self.iterations}")
        _check(self.batch_size >= 1, f"{key}.batch_size", f"must be >= 1, got {self.batch_size}")
        _check(
            self.optimizer in ("adam", "adamw", "sgd"),
            f"{key}.optimizer",
            f"must be 'adam', 'adamw' or 'sgd', got {self.optimizer!r}",
        )
        _check(self.lr > 0, f"{key}.lr", f"must be > 0, got {self.lr}")
        _check(self.weight_decay >= 0, f"{key}.weight_decay", f"must be >= 0, got {self.weight_decay}")
        _check(self.poly_power >= 0, f"{key}.poly_power", f"must be >= 0, got {self.poly_power}")
        _check(
            0 <= self.warmup_iters < self.iterations,
            f"{key}.warmup_iters",
            f"must be in [0, iterations), got {self.warmup_iters}",
        )
        _check(self.grad_clip >= 0, f"{key}.grad_clip", f"must be >= 0, got {self.grad_clip}")
        for t, w in self.loss_weights.items():
            _check(t in TASKS, f"{key}.loss_weights", f"unknown task {t!r}; allowed: {sorted(TASKS)}")
            _check(w >= 0, f"{key}.loss_weights.{t}", f"must be >= 0, got {w}")
        _check(self.load_balancing >= 0, f"{key}.load_balancing", f"must be >= 0, got {self.load_balancing}")
        _check(
            self.amp in ("auto", "bf16", "fp16", "off"),
            f"{key}.amp",
            f"must be one of 'auto', 'bf16', 'fp16', 'off', got {self.amp!r}",
        )
        for name in ("eval_every", "checkpoint_every", "log_every", "max_nonfinite_steps"):
            _check(getattr(self, name) >= 0, f"{key}.{name}", f"must be >= 0, got {getattr(self, name)}")


@dataclass
class EvalConfig:
    """Evaluation settings.

    Attributes:
        batch_size: images per process and step (images are padded to one size).
        edge: compute the boundary metrics (SEISM odsF/oisF/AP; the slowest metric).
        edge_workers: processes for the boundary matching (0 = in the main process; -1 = automatic, see
            :func:`pamm.metrics.edges.default_edge_workers`: a share of the free CPU cores for 16 images or more,
            none for a script that would run again in each spawned worker).
        sal_double_sigmoid: reproduce the inherited double-sigmoid maxF of the released code.
        single_task: reference single-task metrics for the multi-task gain Δm (task -> value of its main
            metric); empty disables Δm.
    """

    batch_size: int = 1
    edge: bool = True
    edge_workers: int = -1
    sal_double_sigmoid: bool = False
    single_task: dict[str, float] = field(default_factory=dict)

    def validate(self, key: str) -> None:
        _check(self.batch_size >= 1, f"{key}.batch_size", f"must be >= 1, got {self.batch_size}")
        _check(
            self.edge_workers >= -1,
            f"{key}.edge_workers",
            f"must be a number of processes >= 0, or -1 (automatic), got {self.edge_workers}",
        )
        for t in self.single_task:
            _check(t in TASKS, f"{key}.single_task", f"unknown task {t!r}; allowed: {sorted(TASKS)}")


@dataclass
class Config:
    """A whole experiment: model architecture, data, training, evaluation and runtime (how to execute)."""

    name: str = "custom"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def validate(self) -> Config:
        self.model.validate("model")
        self.data.validate("data")
        self.train.validate("train")
        self.eval.validate("eval")
        self.runtime.validate("runtime")
        # a generic dataset's tasks come from its dataset.yaml, which may not exist yet: checked when training starts
        tasks = self.data.tasks if self.data.dataset == GENERIC else self.data.task_list
        self.check_loss_weights(tasks)
        stride = self.model.backbone.patch_size
        _check(
            all(s % stride == 0 for s in self.data.train_size),
            "data.train_size",
            f"must be a multiple of the backbone patch size {stride}, got {self.data.train_size}",
        )
        return self

    def check_loss_weights(self, tasks) -> None:
        """Raise ConfigError unless ``train.loss_weights`` has a weight for every task of ``tasks``."""
        for t in tasks:
            _check(t in self.train.loss_weights, "train.loss_weights", f"no weight for task {t!r}")

    @property
    def grid(self) -> tuple[int, int]:
        """Token grid (H, W) of the training size."""
        s = self.model.backbone.patch_size
        return self.data.train_size[0] // s, self.data.train_size[1] // s


# ----------------------------------------------------------------------------------------------------------
# dict <-> dataclass


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (after string evaluation) and convert where lossless."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"config key '{key}': expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping of {tp.__name__} fields, got {value!r}")
        return _from_dict(tp, value, key)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list of {_type_name(item)}, got {value!r}")
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        kt, vt = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        return {_coerce(k, kt, key): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads exponents without a dot ("3e-4") as strings
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {tp!r} at {key}")


def _from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            if key in MOVED_KEYS:
                raise ConfigError(_moved_message(key))
            raise ConfigError(f"unknown config key '{key}'; allowed keys here: {sorted(names)}")
        kwargs[k] = _coerce(v, hints[k], key)
    return cls(**kwargs)


# ----------------------------------------------------------------------------------------------------------
# keys of older versions

MOVED_KEYS: dict[str, str | None] = {
    "model.scan.backend": "runtime.scan_backend",
    "model.channels_last": "runtime.channels_last",
    "model.checkpoint_backbone": "runtime.activation_checkpointing",
    "model.checkpoint_stages": "runtime.activation_checkpointing",
    "model.fused": None,
}
"""Keys of older versions (pamm before the architecture/runtime split) -> their new key (None: removed). Stored
configs are migrated (:func:`migrate_config_dict`); a user who writes one gets an error naming the new key."""

_PLACE_OF = {"model.checkpoint_backbone": "backbone", "model.checkpoint_stages": "stages"}


def _moved_message(key: str) -> str:
    new = MOVED_KEYS[key]
    if new is None:
        return (
            f"config key '{key}' was removed: the model has one execution, the fused one (the released code's "
            f"per-task formulation is pamm.models.reference, for tests and benchmarks)"
        )
    if key in _PLACE_OF:
        return f"config key '{key}' moved to '{new}', a list of places: write {new}=[{_PLACE_OF[key]}]"
    return f"config key '{key}' moved to '{new}'"


def _pop_dotted(data: dict, key: str) -> tuple[bool, Any]:
    """Remove ``key`` (dotted) from nested ``data``; (found, value)."""
    *parents, last = key.split(".")
    node: Any = data
    for p in parents:
        node = node.get(p) if isinstance(node, dict) else None
    if not isinstance(node, dict) or last not in node:
        return False, None
    return True, node.pop(last)


def migrate_config_dict(data: dict) -> dict:
    """A copy of a stored config dict with the keys of older versions moved to their new place (:data:`MOVED_KEYS`):
    ``model.scan.backend`` -> ``runtime.scan_backend``, ``model.channels_last`` -> ``runtime.channels_last``,
    ``model.checkpoint_backbone`` / ``model.checkpoint_stages`` (true) -> a place in
    ``runtime.activation_checkpointing``; ``model.fused`` is dropped. Values already under the new keys win."""
    data = copy.deepcopy(data)
    moved: dict[str, Any] = {}
    for key, new in MOVED_KEYS.items():
        found, value = _pop_dotted(data, key)
        if not found or new is None:
            continue
        if key in _PLACE_OF:
            if value is True:
                moved.setdefault(new, []).append(_PLACE_OF[key])
        else:
            moved[new] = value
    if moved:
        runtime = data.setdefault("runtime", {})
        if isinstance(runtime, dict):
            for new, value in moved.items():
                runtime.setdefault(new.split(".", 1)[1], value)
    return data


def config_from_dict(data: dict) -> Config:
    """Build and validate a :class:`Config` from its plain-dict form, e.g. a stored config (keys of older versions
    are migrated: :func:`migrate_config_dict`)."""
    return _from_dict(Config, migrate_config_dict(data)).validate()


def config_from_checkpoint(data: dict) -> Config:
    """The :class:`Config` stored in a checkpoint: its architecture, data and training settings (keys of older
    versions migrated or dropped), with the default runtime: how to execute the model is the loading session's
    choice (set ``cfg.runtime`` or ``model.set_runtime``), not the file's."""
    data = migrate_config_dict(data)
    data.pop("runtime", None)
    return _from_dict(Config, data).validate()


def override_config(cfg: Config, overrides: dict[str, Any]) -> Config:
    """A validated copy of ``cfg`` with ``{"dotted.key": value}`` overrides applied (an old key is an error naming
    its new place)."""
    data = config_to_dict(cfg)
    for k, v in overrides.items():
        _apply_override(data, k, v)
    return _from_dict(Config, data).validate()


def config_to_dict(cfg: Any) -> dict:
    """Plain-dict (YAML-ready) form of a config dataclass."""
    return dataclasses.asdict(cfg)


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for k, v in override.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """Parse a command-line override ``dotted.key=value`` (value in YAML syntax)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like dotted.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({e})") from None
    return key.strip(), value


def _apply_override(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for i, p in enumerate(parts[:-1]):
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"override '{key}': '{'.'.join(parts[: i + 1])}' is not a section")
        node = nxt
    node[parts[-1]] = value


PRESET_DIR = "presets"


def preset_names() -> list[str]:
    """Names of the presets shipped in the package."""
    files = resources.files("pamm").joinpath(PRESET_DIR).iterdir()
    return sorted(f.name[:-5] for f in files if f.name.endswith(".yaml"))


def _read_yaml(path: Path | Any, label: str) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{label}: not valid YAML ({e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load_config(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Load a preset by name (see :func:`preset_names`) or a YAML file, apply ``{"dotted.key": value}``
    overrides and validate.

    A YAML file may start from a preset with ``base: <preset name>``.
    """
    src = str(name_or_path)
    if src in preset_names():
        data = _read_yaml(resources.files("pamm").joinpath(PRESET_DIR).joinpath(f"{src}.yaml"), f"preset {src!r}")
    else:
        path = Path(src)
        if not path.is_file():
            raise ConfigError(f"no preset or config file named {src!r}; presets: {preset_names()}")
        data = _read_yaml(path, str(path))
    seen = set()
    while "base" in data:
        base = data.pop("base")
        if base not in preset_names() or base in seen:
            raise ConfigError(f"config key 'base': must name a preset {preset_names()} (no cycles), got {base!r}")
        seen.add(base)
        data = _merge(_read_yaml(resources.files("pamm").joinpath(PRESET_DIR).joinpath(f"{base}.yaml"), base), data)
    for k, v in (overrides or {}).items():
        _apply_override(data, k, v)
    return _from_dict(Config, data).validate()
