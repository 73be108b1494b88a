"""The whole PAMM model: backbone taps -> PAME stages -> per-task stage fusion -> heads."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..config import Config, ModelConfig
from ..tasks import dataset_spec
from .backbone import build_backbone
from .heads import StageFusion, TaskHead
from .pame import PAMEStage

__all__ = ["PAMM", "build_model", "IMAGENET_MEAN", "IMAGENET_STD", "ModelMeta"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelMeta:
    """What a user of a trained model needs besides its weights (torchvision-style metadata).

    Attributes:
        dataset: the label space (``nyud`` / ``pascal``).
        tasks: predicted tasks, in output order.
        num_outputs: channels of each head.
        train_size: (H, W) the model was built for.
        stride: input sizes must be multiples of it.
        mean, std: input normalisation (RGB in [0, 1]).
    """

    dataset: str
    tasks: tuple[str, ...]
    num_outputs: dict[str, int]
    train_size: tuple[int, int]
    stride: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


class PAMM(nn.Module):
    """Parameter Aware Mamba Model.

    Args:
        cfg: model settings.
        meta: dataset, tasks, head sizes and training size.
        load_backbone_weights: load the backbone's pretrained weights (skip when a full checkpoint follows).

    ``forward(images (b, 3, H, W))`` -> ``{task: (b, K_task, H, W)}`` raw head outputs (logits / values) at the
    input size; with ``return_routing=True`` also the routers' weights as a list of (b, E) tensors (one per
    router and task) for the load-balancing loss.
    """

    def __init__(self, cfg: ModelConfig, meta: ModelMeta, load_backbone_weights: bool = True):
        super().__init__()
        self.cfg, self.meta = cfg, meta
        self.tasks = list(meta.tasks)
        self.backbone = build_backbone(cfg.backbone, meta.train_size, load_weights=load_backbone_weights)
        if cfg.checkpoint_backbone:
            self.backbone.set_grad_checkpointing(True)
        stride = self.backbone.stride
        grid = (meta.train_size[0] // stride, meta.train_size[1] // stride)
        self.stages = nn.ModuleList(PAMEStage(c, len(self.tasks), cfg, grid) for c in self.backbone.out_channels)
        n_stages = len(self.stages)
        self.fusion = nn.ModuleDict({t: StageFusion(cfg.dim, n_stages) for t in self.tasks})
        self.heads = nn.ModuleDict({t: TaskHead(cfg.dim, meta.num_outputs[t]) for t in self.tasks})
        with torch.no_grad():
            for t, value in cfg.head_bias_init.items():
                if t in self.heads:
                    self.heads[t].pred.bias.fill_(value)
        self.fused = cfg.fused

    @property
    def stride(self) -> int:
        return self.backbone.stride

    def _stage(self, stage: PAMEStage, f: Tensor) -> tuple[Tensor, list[Tensor]]:
        run = stage.forward if self.fused else stage.forward_plain
        if self.cfg.checkpoint_stages and self.training and torch.is_grad_enabled():
            return checkpoint(run, f, use_reentrant=False)
        return run(f)

    def forward(self, images: Tensor, return_routing: bool = False):
        h, w = images.shape[-2:]
        if h % self.stride or w % self.stride:
            raise ValueError(f"input size {h}x{w} must be a multiple of the backbone stride {self.stride} "
                             f"(pad the image; the evaluation transforms do)")
        feats = self.backbone(images)
        if self.cfg.channels_last and images.is_cuda:
            feats = [f.contiguous(memory_format=torch.channels_last) for f in feats]
        stage_maps, routing = [], []
        for stage, f in zip(self.stages, feats):
            out, gates = self._stage(stage, f)
            stage_maps.append(out.chunk(len(self.tasks), dim=1))
            routing.extend(g[:, t] for g in gates for t in range(g.shape[1]))
        outputs = {}
        for i, task in enumerate(self.tasks):
            fused = self.fusion[task]([maps[i] for maps in stage_maps])
            outputs[task] = F.interpolate(self.heads[task](fused), size=(h, w), mode="bilinear", align_corners=False)
        return (outputs, routing) if return_routing else outputs

    def decoder_parameters(self):
        """Parameters outside the backbone (stages, fusion, heads)."""
        return (p for name, p in self.named_parameters() if not name.startswith("backbone."))


def build_model(cfg: Config, load_backbone_weights: bool = True) -> PAMM:
    """Build the model of an experiment config (tasks and head sizes from its dataset)."""
    spec = dataset_spec(cfg.data.dataset)
    tasks = tuple(cfg.data.task_list)
    meta = ModelMeta(dataset=spec.name, tasks=tasks, num_outputs={t: spec.num_outputs[t] for t in tasks},
                     train_size=tuple(cfg.data.train_size), stride=cfg.model.backbone.patch_size)
    return PAMM(cfg.model, meta, load_backbone_weights=load_backbone_weights)
