"""Small building blocks shared by the PAMM modules."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["TaskConv1x1", "conv_default_init_", "conv_bias"]


def conv_bias(conv: nn.Conv2d) -> Tensor:
    """The bias of a convolution built with one (``bias=True``, Conv2d's default)."""
    if conv.bias is None:
        raise ValueError(f"{conv} has no bias")
    return conv.bias


def conv_default_init_(weight: Tensor, bias: Tensor | None, fan_in: int, zero_bias: bool = False) -> None:
    """PyTorch's default Conv/Linear init (kaiming-uniform, a=sqrt(5)) for a weight slice of fan-in ``fan_in``."""
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        weight.uniform_(-bound, bound)  # == kaiming_uniform_(a=sqrt(5)) for this fan-in
        if bias is not None:
            bias.zero_() if zero_bias else bias.uniform_(-bound, bound)


class TaskConv1x1(nn.Module):
    """One 1x1 convolution per task, stored stacked: weight (T, C_out, C_in), bias (T, C_out).

    ``forward`` takes a task-stacked map (b, T*C_in, H, W) and runs all tasks in one grouped convolution:
    (b, T*C_out, H, W).
    """

    def __init__(self, tasks: int, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__()
        self.tasks, self.in_channels, self.out_channels = tasks, in_channels, out_channels
        self.weight = nn.Parameter(torch.empty(tasks, out_channels, in_channels))
        self.bias = nn.Parameter(torch.empty(tasks, out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for t in range(self.tasks):
            conv_default_init_(self.weight[t], None if self.bias is None else self.bias[t], self.in_channels)

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight.reshape(-1, self.in_channels, 1, 1)
        b = None if self.bias is None else self.bias.reshape(-1)
        return F.conv2d(x, w, b, groups=self.tasks)

    def extra_repr(self) -> str:
        return f"tasks={self.tasks}, {self.in_channels}->{self.out_channels}, bias={self.bias is not None}"
