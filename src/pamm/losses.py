"""PAMM's training losses (reference notes §3), with the normalisations of the authors' loss functions.

Every per-task loss is a mean over the *valid* pixels of the batch (pooled, not per image) and returns an exact
zero, still attached to the graph, when no pixel is valid. Targets follow the sample format of
:mod:`pamm.data` (255 = ignore, depth 0 = invalid).

"The batch" is the global batch: with a :class:`DistributedReducer`, counts (valid pixels, salient fraction, batch
size) are summed over every process, so that DDP's gradient averaging yields exactly the gradient of the
single-process loss over the whole global batch. The default :class:`BatchReducer` pools over the local batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pamm.tasks import IGNORE_INDEX, TASKS


class BatchReducer:
    """Pools loss statistics over this process's batch (single-process training)."""

    world: int = 1

    def count(self, t: torch.Tensor) -> torch.Tensor:
        """Sum of a count over every process (not differentiated)."""
        return t

    def total(self, t: torch.Tensor) -> torch.Tensor:
        """Differentiable sum over every process."""
        return t


class DistributedReducer(BatchReducer):
    """Pools loss statistics over every process of the default process group."""

    def __init__(self):
        import torch.distributed as dist

        self.world = dist.get_world_size()

    def count(self, t: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        t = t.detach().clone()
        dist.all_reduce(t)
        return t

    def total(self, t: torch.Tensor) -> torch.Tensor:
        from .ops.collectives import all_reduce_sum_autograd

        return all_reduce_sum_autograd(t)


LOCAL = BatchReducer()


def _pooled_mean(total: torch.Tensor, count: torch.Tensor, reducer: BatchReducer) -> torch.Tensor:
    """Mean over the global batch of this process's ``total`` over ``count`` valid elements; under DDP's
    averaging of gradients over ``world`` processes this is exactly the global mean's gradient."""
    count = reducer.count(count.to(total.dtype))
    return total * reducer.world / count.clamp_min(1)


def _check_spatial(output: torch.Tensor, target: torch.Tensor, task: str) -> None:
    if output.shape[0] != target.shape[0] or output.shape[-2:] != target.shape[-2:]:
        raise ValueError(
            f"{task}: output {tuple(output.shape)} and target {tuple(target.shape)} differ in batch or spatial size"
        )


def cross_entropy_loss(logits: torch.Tensor, target: torch.Tensor, reducer: BatchReducer = LOCAL) -> torch.Tensor:
    """Per-pixel cross-entropy averaged over non-ignored pixels (semseg, human_parts).

    Args:
        logits: (b, K, H, W).
        target: int64 (b, H, W), classes 0..K−1, 255 = ignore.
    """
    _check_spatial(logits, target, "cross-entropy")
    per_pixel = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="none")
    return _pooled_mean(per_pixel.sum(), (target != IGNORE_INDEX).sum(), reducer)


def balanced_cross_entropy_loss(
    logits: torch.Tensor, target: torch.Tensor, reducer: BatchReducer = LOCAL
) -> torch.Tensor:
    """Class-balanced 2-class cross-entropy (saliency), as the authors:

    with p = fraction of salient pixels among the batch's valid pixels, background pixels are weighted p and
    salient pixels 1 − p; the weighted sum is divided by the number of valid pixels (not by the sum of weights).

    Args:
        logits: (b, 2, H, W).
        target: int64 (b, H, W) in {0, 1}, 255 = ignore.
    """
    _check_spatial(logits, target, "saliency")
    valid = target != IGNORE_INDEX
    labels = target[valid]
    if labels.numel() and (labels.max() > 1 or labels.min() < 0):
        raise ValueError(f"saliency targets must be 0, 1 or {IGNORE_INDEX}; found {labels.unique().tolist()}")
    counts = reducer.count(torch.stack([(labels == 1).sum(), valid.sum()]).float())
    positive_fraction = counts[0] / counts[1].clamp_min(1)
    class_weight = torch.stack([positive_fraction, 1.0 - positive_fraction])
    per_pixel = F.cross_entropy(
        logits.float(), target, weight=class_weight, ignore_index=IGNORE_INDEX, reduction="none"
    )
    return per_pixel.sum() * reducer.world / counts[1].clamp_min(1)


def weighted_bce_loss(
    logits: torch.Tensor, target: torch.Tensor, pos_weight: float, reducer: BatchReducer = LOCAL
) -> torch.Tensor:
    """Weighted binary cross-entropy for boundaries, mean over non-ignored pixels:

    ``mean(w · y · (−log σ(x)) + (1 − w) · (1 − y) · (−log(1 − σ(x))))`` with ``w = pos_weight``.

    Args:
        logits: (b, 1, H, W) boundary logits.
        target: float (b, 1, H, W) in {0, 1}, 255 = ignore.
        pos_weight: w, the dataset's boundary weight (0.88 NYUD, 0.95 PASCAL).
    """
    _check_spatial(logits, target, "edge")
    valid = target != IGNORE_INDEX
    x = logits.float()
    y = torch.where(valid, target.float(), 0.0)
    per_pixel = pos_weight * y * F.softplus(-x) + (1.0 - pos_weight) * (1.0 - y) * F.softplus(x)
    return _pooled_mean(torch.where(valid, per_pixel, 0.0).sum(), valid.sum(), reducer)


def normals_l1_loss(prediction: torch.Tensor, target: torch.Tensor, reducer: BatchReducer = LOCAL) -> torch.Tensor:
    """L1 distance between the L2-normalised prediction and the target normal, summed over the 3 components and
    averaged over valid pixels (those whose target is not 255).

    Args:
        prediction: (b, 3, H, W), any length.
        target: float (b, 3, H, W) unit vectors, 255 in all channels = invalid.
    """
    _check_spatial(prediction, target, "normals")
    valid = (target != IGNORE_INDEX).all(dim=1)
    unit = F.normalize(prediction.float(), p=2, dim=1)
    per_pixel = (unit - target.float()).abs().sum(dim=1)
    return _pooled_mean(torch.where(valid, per_pixel, 0.0).sum(), valid.sum(), reducer)


def depth_l1_loss(prediction: torch.Tensor, target: torch.Tensor, reducer: BatchReducer = LOCAL) -> torch.Tensor:
    """Mean absolute depth error in metres over pixels with ground truth > 0.

    Args:
        prediction: (b, 1, H, W) metres.
        target: float (b, 1, H, W) metres, 0 = invalid.
    """
    _check_spatial(prediction, target, "depth")
    valid = target > 0
    per_pixel = (prediction.float() - target.float()).abs()
    return _pooled_mean(torch.where(valid, per_pixel, 0.0).sum(), valid.sum(), reducer)


def load_balancing_loss(routing: Sequence[torch.Tensor], reducer: BatchReducer = LOCAL) -> torch.Tensor:
    """Routers' load-balancing loss: Σ over routers of CV² of the experts' mean routing weights.

    For each router's weights r (b, E): m = mean of r over the batch (E,), CV² = var(m) / mean(m)², with the
    unbiased variance over the E experts (as the authors' ``torch.std``). Routers are summed. An empty sequence
    gives 0.
    """
    terms = []
    for weights in routing:
        if weights.dim() != 2 or weights.shape[1] < 2:
            raise ValueError(f"routing weights must be (batch, experts ≥ 2); got {tuple(weights.shape)}")
        expert_load = reducer.total(weights.float().sum(dim=0)) / reducer.count(
            torch.tensor(float(weights.shape[0]), device=weights.device)
        )
        terms.append(expert_load.var() / expert_load.mean().square().clamp_min(1e-12))
    return torch.stack(terms).sum() if terms else torch.zeros(())


class MultiTaskLoss(nn.Module):
    """Weighted sum of the per-task losses plus the routers' load-balancing term.

    Args:
        tasks: tasks to supervise.
        weights: task → loss weight (paper: NYUD semseg 1, depth 1, normals 10, edge 50; PASCAL semseg 1,
            human_parts 2, sal 5, edge 50, normals 10).
        edge_pos_weight: boundary weight of the edge loss (:attr:`pamm.tasks.DatasetSpec.edge_pos_weight`).
        load_balancing_weight: weight of :func:`load_balancing_loss` (paper: 5e-4 NYUD, 1e-4 PASCAL).
        reducer: how batch statistics are pooled (:class:`DistributedReducer` under DDP: the loss of the global
            batch; every process must then call the loss, as it does every training step).
    """

    def __init__(
        self,
        tasks: Sequence[str],
        weights: Mapping[str, float],
        edge_pos_weight: float,
        load_balancing_weight: float = 0.0,
        reducer: BatchReducer = LOCAL,
    ):
        super().__init__()
        if not tasks:
            raise ValueError("MultiTaskLoss needs at least one task")
        unknown = [task for task in tasks if task not in TASKS]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; expected some of {sorted(TASKS)}")
        unweighted = [task for task in tasks if task not in weights]
        if unweighted:
            raise ValueError(f"no loss weight given for task(s) {unweighted}")
        if not 0.0 < edge_pos_weight < 1.0:
            raise ValueError(f"edge_pos_weight must lie in (0, 1); got {edge_pos_weight}")
        self.tasks = tuple(tasks)
        self.weights = {task: float(weights[task]) for task in self.tasks}
        self.edge_pos_weight = float(edge_pos_weight)
        self.load_balancing_weight = float(load_balancing_weight)
        self.reducer = reducer

    def task_loss(self, task: str, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Unweighted loss of one task; ``output`` (b, K, H, W), ``target`` as in the batch."""
        r = self.reducer
        if task in ("semseg", "human_parts"):
            return cross_entropy_loss(output, target, r)
        if task == "sal":
            return balanced_cross_entropy_loss(output, target, r)
        if task == "edge":
            return weighted_bce_loss(output, target, self.edge_pos_weight, r)
        if task == "normals":
            return normals_l1_loss(output, target, r)
        if task == "depth":
            return depth_l1_loss(output, target, r)
        raise ValueError(f"no loss for task {task!r}")

    def forward(
        self,
        outputs: Mapping[str, torch.Tensor],
        targets: Mapping[str, torch.Tensor],
        routing: Sequence[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Compute the total loss.

        Args:
            outputs: task → head output (b, K, H, W) at the target resolution.
            targets: a collated batch (task → target tensor; other keys ignored).
            routing: routing weights (b, E) of each router, or ``None``.

        Returns:
            ``(total, losses)``: the scalar to minimise and a dict of each task's *unweighted* loss plus
            ``"load_balancing"`` (the unweighted CV² sum; 0 without routing). Values stay attached to the graph.
        """
        losses = {task: self.task_loss(task, outputs[task], targets[task]) for task in self.tasks}
        first = outputs[self.tasks[0]]
        losses["load_balancing"] = load_balancing_loss(routing or [], self.reducer).to(first.device)
        total = sum(self.weights[task] * losses[task] for task in self.tasks)
        total = total + self.load_balancing_weight * losses["load_balancing"]
        return total, losses
