"""Process-group helpers for ``torchrun`` (PyTorch DDP): one process per GPU (NCCL) or per CPU worker (gloo).

Without torchrun's environment (WORLD_SIZE unset or 1) everything degrades to a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TypeVar, cast

import numpy as np
import torch
import torch.distributed as dist
from timm.layers import BatchNormAct2d, convert_sync_batchnorm

from ..errors import ResourceError
from ..ops.collectives import all_reduce_sum_autograd

__all__ = [
    "DistInfo",
    "init_distributed",
    "shutdown_distributed",
    "all_reduce_sum",
    "all_reduce_max",
    "all_reduce_arrays",
    "broadcast_object",
    "barrier",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size``, the device it computes on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group that torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR/PORT; multi-node through torchrun's rendezvous) and pick this process's device.

    Args:
        device: ``"cuda"``, ``"cpu"`` or None (CUDA when available).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise ResourceError("device 'cuda' was requested but CUDA is not available on this machine; use --device cpu")
    if use_cuda:
        torch.cuda.set_device(local % torch.cuda.device_count())
        dev = torch.device("cuda", torch.cuda.current_device())
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", device_id=dev if use_cuda else None)
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if _active():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all processes (in place; returns it)."""
    if _active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum of a tensor over all processes (in place; returns it)."""
    if _active():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def all_reduce_arrays(arrays: dict[str, np.ndarray], device: torch.device) -> dict[str, np.ndarray]:
    """Sum each array of a dict over all processes (float64/int64 kept exact)."""
    if not _active():
        return arrays
    out = {}
    for k in sorted(arrays):
        a = np.asarray(arrays[k])
        t = torch.from_numpy(np.ascontiguousarray(a)).to(device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        out[k] = t.cpu().numpy().astype(a.dtype, copy=False)
    return out


def broadcast_object(obj, src: int = 0):
    """Send a picklable object from ``src`` to every process."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def _global_batch_norm(bn: torch.nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """Training-mode BatchNorm of ``x`` (b, c, h, w) with the statistics of the global batch, updating ``bn``'s
    running statistics as BatchNorm2d does. Two differentiable all-reduces: the per-channel sums and element
    count give the global mean, then the sums of squared deviations from it give the variance (two passes, not
    E[x²] − mean², which cancels catastrophically where the mean is large against the spread). Forward and
    backward are BatchNorm's over the global batch, up to float32 rounding."""
    c = x.shape[1]
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x  # statistics in float32 at least
    first = all_reduce_sum_autograd(torch.cat([xf.sum((0, 2, 3)), xf.new_tensor([float(x.numel() // c)])]))
    n = first[-1]
    mean = first[:c] / n
    centred = xf - mean[None, :, None, None]
    var = all_reduce_sum_autograd((centred * centred).sum((0, 2, 3))) / n
    running_mean, running_var, tracked = bn.running_mean, bn.running_var, bn.num_batches_tracked
    if bn.track_running_stats and running_mean is not None and running_var is not None and tracked is not None:
        with torch.no_grad():
            tracked.add_(1)
            m = bn.momentum if bn.momentum is not None else 1.0 / float(tracked)
            running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            running_var.mul_(1 - m).add_(var.detach() * n / (n - 1).clamp_min(1), alpha=m)
    y = centred * torch.rsqrt(var + bn.eps)[None, :, None, None]
    if bn.affine:
        y = y * bn.weight[None, :, None, None] + bn.bias[None, :, None, None]
    return y.to(x.dtype)


class AllReduceBatchNorm2d(torch.nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are pooled over every process (any backend, CPU included).

    Forward and backward are exactly those of BatchNorm over the global batch (:func:`_global_batch_norm`).
    (PyTorch's SyncBatchNorm needs GPUs; :func:`sync_batchnorm` uses it there.)
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and _active()):
            return super().forward(x)
        return _global_batch_norm(self, x)


class AllReduceBatchNormAct2d(BatchNormAct2d):
    """:class:`AllReduceBatchNorm2d` for timm's BatchNormAct2d (BatchNorm, then drop and activation: the norm of
    timm's convolutional backbones such as EfficientNet)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and _active()):
            return super().forward(x)
        return self.act(self.drop(_global_batch_norm(self, x)))


_Model = TypeVar("_Model", bound=torch.nn.Module)


def sync_batchnorm(model: _Model, device: torch.device) -> _Model:
    """BatchNorm over the global batch for every BatchNorm of ``model`` (timm's BatchNormAct2d included, its
    activation kept): timm's / PyTorch's SyncBatchNorm on CUDA, :class:`AllReduceBatchNorm2d` elsewhere.
    Raises TypeError for a BatchNorm subclass it does not know how to pool (rather than silently leaving it
    per-process or dropping what the subclass adds). ``model`` is converted in place and returned (its root is
    not itself a BatchNorm)."""
    if device.type == "cuda":
        # timm's: BatchNormAct2d -> SyncBatchNormAct, BatchNorm2d -> SyncBatchNorm; children replaced in place
        return cast(_Model, convert_sync_batchnorm(model))
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            continue
        if type(module) is torch.nn.BatchNorm2d:
            module.__class__ = AllReduceBatchNorm2d
        elif type(module) is BatchNormAct2d:
            module.__class__ = AllReduceBatchNormAct2d
        elif not isinstance(module, (AllReduceBatchNorm2d, AllReduceBatchNormAct2d, torch.nn.SyncBatchNorm)):
            raise TypeError(
                f"cannot pool the statistics of {name!r} ({type(module).__module__}."
                f"{type(module).__qualname__}) over processes: expected torch.nn.BatchNorm2d or "
                "timm's BatchNormAct2d"
            )
    return model
