"""Per-task stage fusion and prediction heads (pamm-notes §1, steps 3 and 4)."""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import conv_bias

__all__ = ["StageFusion", "TaskHead"]


class StageFusion(nn.Module):
    """Softmax-weighted fusion of one task's stage maps.

    concat(S maps (b, d, H, W)) -> 1x1 conv (S*d -> d) -> BatchNorm -> GELU -> 3x3 conv (d -> S) -> softmax over S
    -> per-pixel weighted sum of the stage maps -> bilinear upsampling by ``upsample``.
    """

    def __init__(self, dim: int, stages: int, upsample: int = 4):
        super().__init__()
        self.upsample = upsample
        self.weights = nn.Sequential(
            nn.Conv2d(dim * stages, dim, 1), nn.BatchNorm2d(dim), nn.GELU(), nn.Conv2d(dim, stages, 3, padding=1)
        )

    def forward(self, maps: list[Tensor]) -> Tensor:
        """S maps (b, d, H, W) -> (b, d, upsample*H, upsample*W)."""
        w = torch.softmax(self.weights(torch.cat(maps, dim=1)), dim=1)
        fused = cast(Tensor, sum(w[:, i : i + 1] * m for i, m in enumerate(maps)))  # S >= 1 maps: a tensor
        return F.interpolate(fused, scale_factor=self.upsample, mode="bilinear", align_corners=False)


class TaskHead(nn.Module):
    """3x3 conv -> BatchNorm -> GELU -> 1x1 conv to the task's outputs (the released ConvHead and its init)."""

    def __init__(self, dim: int, outputs: int):
        super().__init__()
        conv = nn.Conv2d(dim, dim, 3, padding=1)
        self.proj = nn.Sequential(conv, nn.BatchNorm2d(dim), nn.GELU())
        self.pred = nn.Conv2d(dim, outputs, 1)
        nn.init.trunc_normal_(conv.weight, std=0.02)
        nn.init.normal_(conv_bias(self.pred), std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        """(b, d, H, W) -> (b, outputs, H, W)."""
        return self.pred(self.proj(x))
