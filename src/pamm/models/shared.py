"""The shared-decoder multi-task baseline (``model.decoder: shared``): the paper's decoder without PAME.

For a tap f (b, C_in, H, W) and each task t::

    s      = GroupNorm(first_decode(f))                      3x3 conv C_in -> d, shared by the tasks
    feat_t = task_conv_t(s)                                  3x3 task convolution d -> d

followed (in :class:`~pamm.models.pamm.PAMM`) by the same per-task stage fusion and heads as PAMM. A PAME stage
(:class:`~pamm.models.pame.PAMEStage`) starts with exactly these layers and adds the task-specific selective scan.
"""

from __future__ import annotations

from torch import Tensor, nn

from .layers import conv_bias, conv_default_init_

__all__ = ["SharedStage"]


class SharedStage(nn.Module):
    """One decoder stage of the shared-decoder baseline: a convolution shared by the tasks, then one 3x3
    convolution per task.

    Args:
        in_channels: channels of the backbone tap.
        num_tasks: T.
        dim: decoder width d.

    Parameters: ``first_decode`` Conv2d(C_in, d, 3), ``input_norm`` GroupNorm(32, d), ``task_conv``
    Conv2d(d, T*d, 3) (the T task convolutions stacked; each initialised as its own d -> d convolution).

    ``forward(f (b, C_in, H, W)) -> (task-stacked features (b, T*d, H, W), [])`` (no routers).
    """

    def __init__(self, in_channels: int, num_tasks: int, dim: int):
        super().__init__()
        d, t = dim, num_tasks
        self.tasks, self.dim = t, d
        self.first_decode = nn.Conv2d(in_channels, d, 3, padding=1)
        self.input_norm = nn.GroupNorm(32, d)
        self.task_conv = nn.Conv2d(d, t * d, 3, padding=1)
        weight, bias = self.task_conv.weight, conv_bias(self.task_conv)
        for i in range(t):
            conv_default_init_(weight[i * d : (i + 1) * d], bias[i * d : (i + 1) * d], d * 9)

    def task_features(self, f: Tensor) -> Tensor:
        """f (b, C_in, H, W) -> the T task maps, stacked (b, T*d, H, W)."""
        return self.task_conv(self.input_norm(self.first_decode(f)))

    def forward(self, f: Tensor) -> tuple[Tensor, list[Tensor]]:
        """f (b, C_in, H, W) -> (task-stacked features (b, T*d, H, W), no routing weights)."""
        return self.task_features(f), []

    def no_weight_decay(self) -> set[str]:
        """Names (relative to this module) of parameters trained without weight decay: none."""
        return set()
