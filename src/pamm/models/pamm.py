"""The whole PAMM model: backbone taps -> PAME stages -> per-task stage fusion -> heads."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..config import ACTIVATION_CHECKPOINT_PLACES, Config, ModelConfig, RuntimeConfig, pair
from ..tasks import DatasetSpec
from .backbone import build_backbone
from .heads import StageFusion, TaskHead
from .layers import conv_bias
from .meta import ModelMeta
from .pame import PAMEStage
from .pretrained import PretrainedMixin
from .shared import SharedStage

__all__ = ["PAMM", "build_model"]


class PAMM(nn.Module, PretrainedMixin):
    """Parameter Aware Mamba Model.

    Args:
        cfg: the architecture.
        meta: dataset, tasks, head sizes and training size.
        load_backbone_weights: load the backbone's pretrained weights (skip when a full checkpoint follows).
        runtime: how to execute (scan backend, activation checkpointing, channels-last); defaults when None.
            Change it later with :meth:`set_runtime`.

    ``forward(images (b, 3, H, W))`` -> ``{task: (b, K_task, H, W)}`` raw head outputs (logits / values) at the
    input size; with ``return_routing=True`` also the routers' weights as a list of (b, E) tensors (one per
    router and task) for the load-balancing loss.

    Pretrained folders and the Hugging Face Hub (:class:`~pamm.models.pretrained.PretrainedMixin`):
    ``model.save_pretrained(folder)``, ``PAMM.from_pretrained(folder_or_hub_id)``, ``model.push_to_hub(repo_id)``.

    ``cfg.decoder == "shared"`` builds the shared-decoder baseline: :class:`SharedStage` instead of
    :class:`PAMEStage` (no selective scan, no routers), same fusion and heads.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        meta: ModelMeta,
        load_backbone_weights: bool = True,
        runtime: RuntimeConfig | None = None,
    ):
        super().__init__()
        self.cfg, self.meta = cfg, meta
        self.tasks = list(meta.tasks)
        self.backbone = build_backbone(cfg.backbone, meta.train_size, load_weights=load_backbone_weights)
        stride = self.backbone.stride
        grid = (meta.train_size[0] // stride, meta.train_size[1] // stride)
        n_tasks = len(self.tasks)
        stages: list[SharedStage]  # a PAMEStage is a SharedStage with the scan
        if cfg.decoder == "pamm":
            stages = [PAMEStage(c, n_tasks, cfg, grid) for c in self.backbone.out_channels]
        else:
            stages = [SharedStage(c, n_tasks, cfg.dim) for c in self.backbone.out_channels]
        self.stages = nn.ModuleList(stages)
        self.fusion = nn.ModuleDict({t: StageFusion(cfg.dim, len(stages)) for t in self.tasks})
        heads = {t: TaskHead(cfg.dim, meta.num_outputs[t]) for t in self.tasks}
        with torch.no_grad():
            for t, value in cfg.head_bias_init.items():
                if t in heads:
                    conv_bias(heads[t].pred).fill_(value)
        self.heads = nn.ModuleDict(heads)
        self.set_runtime(runtime or RuntimeConfig())

    @property
    def stride(self) -> int:
        return self.backbone.stride

    # ---- runtime settings ----------------------------------------------------------------------------------

    def set_runtime(self, runtime: RuntimeConfig) -> None:
        """Execute with ``runtime``'s settings from now on (scan backend, activation checkpointing, channels-last
        activations on CUDA); the weights are untouched. Raises ConfigError for an invalid setting."""
        runtime = dataclasses.replace(runtime, activation_checkpointing=list(runtime.activation_checkpointing))
        runtime.validate("runtime")
        self.runtime = runtime
        for stage in self.stages:
            if isinstance(stage, PAMEStage):
                stage.scan_backend = runtime.scan_backend
        self.backbone.set_grad_checkpointing("backbone" in runtime.activation_checkpointing)

    def set_grad_checkpointing(self, enable: bool | Collection[str] = True) -> None:
        """Activation checkpointing (timm's method name): True for every place of
        :data:`~pamm.config.ACTIVATION_CHECKPOINT_PLACES`, False for none, or a collection of places
        (``backbone``, ``stages``)."""
        places = list(ACTIVATION_CHECKPOINT_PLACES) if enable is True else [] if enable is False else list(enable)
        self.set_runtime(dataclasses.replace(self.runtime, activation_checkpointing=places))

    # ---- training ------------------------------------------------------------------------------------------

    def no_weight_decay(self) -> set[str]:
        """Names of the parameters trained without weight decay (timm's convention): every PAME stage's A_log, D,
        dt_bias and task priors. Everything else, the backbone included, is decayed."""
        return {
            f"stages.{i}.{name}"
            for i, stage in enumerate(self.stages)
            if isinstance(stage, SharedStage)  # every stage (PAMEStage extends it)
            for name in stage.no_weight_decay()
        }

    # ---- forward -------------------------------------------------------------------------------------------

    def check_input_size(self, images: Tensor) -> None:
        """Raise ValueError unless the input's height and width are multiples of the backbone stride."""
        h, w = images.shape[-2:]
        if h % self.stride or w % self.stride:
            raise ValueError(
                f"input size {h}x{w} must be a multiple of the backbone stride {self.stride} "
                f"(pad the image; the evaluation transforms do)"
            )

    def _run_stage(self, stage: nn.Module, f: Tensor) -> tuple[Tensor, list[Tensor]]:
        if "stages" in self.runtime.activation_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(stage, f, use_reentrant=False)
        return stage(f)

    def task_predictions(self, stage_outputs: list[Tensor], size: tuple[int, int]) -> dict[str, Tensor]:
        """Task-stacked stage outputs [(b, T*d, h, w), ...] -> per task: stage fusion, head, bilinear resize to
        ``size``: ``{task: (b, K_task, *size)}``."""
        per_stage = [out.chunk(len(self.tasks), dim=1) for out in stage_outputs]
        outputs = {}
        for i, task in enumerate(self.tasks):
            fused = self.fusion[task]([maps[i] for maps in per_stage])
            outputs[task] = F.interpolate(self.heads[task](fused), size=size, mode="bilinear", align_corners=False)
        return outputs

    def forward(self, images: Tensor, return_routing: bool = False):
        self.check_input_size(images)
        feats = self.backbone(images)
        if self.runtime.channels_last and images.is_cuda:
            feats = [f.contiguous(memory_format=torch.channels_last) for f in feats]
        stage_outputs: list[Tensor] = []
        routing: list[Tensor] = []
        for stage, f in zip(self.stages, feats):
            out, gates = self._run_stage(stage, f)
            stage_outputs.append(out)
            routing.extend(g[:, t] for g in gates for t in range(g.shape[1]))
        outputs = self.task_predictions(stage_outputs, pair(images.shape[-2:]))
        return (outputs, routing) if return_routing else outputs


def build_model(cfg: Config, load_backbone_weights: bool = True, spec: DatasetSpec | None = None) -> PAMM:
    """Build the model of an experiment config: tasks and head sizes from ``spec`` (default: the config's dataset,
    ``cfg.data.spec``; a checkpoint passes the label space it was trained with), execution settings from
    ``cfg.runtime``."""
    return PAMM(
        cfg.model, ModelMeta.from_config(cfg, spec), load_backbone_weights=load_backbone_weights, runtime=cfg.runtime
    )
