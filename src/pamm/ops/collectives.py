"""A differentiable all-reduce (sum) over the default process group, for statistics pooled over the global batch
(losses, BatchNorm on CPU processes)."""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["all_reduce_sum_autograd"]


class _AllReduceSum(torch.autograd.Function):
    """y = sum over processes of x. Every process's y depends on every process's x, so the gradient of x is the
    sum over processes of the gradients of y: the backward is the same all-reduce."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = x.detach().clone()
        dist.all_reduce(y, op=dist.ReduceOp.SUM)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def all_reduce_sum_autograd(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` (any shape) over the processes of the default group, differentiable; ``x`` itself without an
    initialised process group. Every process must call it in the same order (it is a collective)."""
    if not (dist.is_available() and dist.is_initialized()):
        return x
    return _AllReduceSum.apply(x)
