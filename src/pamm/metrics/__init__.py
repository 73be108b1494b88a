"""Evaluation metrics of the six tasks (notes §4), pooled over whole splits, and the multi-task gain Δm.

Every meter follows :class:`~pamm.metrics.base.Meter`: ``update(pred, target, valid=None)`` with predictions from
:func:`pamm.tasks.postprocess` and targets as the loaders give them, ``state()`` of summable int64 arrays (for
all-reduce), ``merge_state``, ``reset`` and ``compute``. Ratios are reported in percent.
"""

from __future__ import annotations

from collections.abc import Iterable

from pamm.metrics.base import Meter
from pamm.metrics.depth import DepthMeter
from pamm.metrics.edges import BSDS_THRESHOLDS, QUICK_THRESHOLDS, SEISM_THRESHOLDS, EdgeMeter, EdgeProtocol
from pamm.metrics.multitask import TASK_METRICS, main_metric, multitask_gain, task_gains
from pamm.metrics.normals import NormalsMeter
from pamm.metrics.saliency import SaliencyMeter
from pamm.metrics.segmentation import SegmentationMeter
from pamm.tasks import DatasetSpec, dataset_spec

__all__ = [
    "Meter",
    "SegmentationMeter",
    "DepthMeter",
    "NormalsMeter",
    "SaliencyMeter",
    "EdgeMeter",
    "EdgeProtocol",
    "SEISM_THRESHOLDS",
    "BSDS_THRESHOLDS",
    "QUICK_THRESHOLDS",
    "TASK_METRICS",
    "build_meters",
    "main_metric",
    "multitask_gain",
    "task_gains",
]


def build_meters(
    dataset: str | DatasetSpec,
    tasks: Iterable[str],
    *,
    edge: bool = True,
    edge_workers: int = 0,
    sal_double_sigmoid: bool = False,
) -> dict[str, Meter]:
    """One meter per task, configured for ``dataset`` (``"nyud"``, ``"pascal"`` or a :class:`~pamm.tasks.DatasetSpec`,
    e.g. a generic dataset's).

    Segmentation meters get the dataset's class count and names; depth scores ``0 < gt < spec.max_depth``; edges use
    the dataset's SEISM tolerance and ground-truth convention (``spec.edge_gt``: ``seg2bmap`` of the NYUD-v2 boundary
    PNG, the already thin PASCAL-Context boundaries as they are) and score images in ``edge_workers`` processes. With
    ``edge=False`` the same protocol runs on the 9 thresholds of :data:`QUICK_THRESHOLDS` instead of SEISM's 101,
    about ten times faster, for quick validation during training (a subset of the thresholds: its odsF is never
    higher than the full one). ``sal_double_sigmoid`` reproduces the authors' saliency bug (see
    :mod:`pamm.metrics.saliency`).
    """
    spec = dataset_spec(dataset)
    meters: dict[str, Meter] = {}
    for task in tasks:
        if task not in spec.tasks:
            raise ValueError(f"task {task!r} is not a task of {spec.name!r} {spec.tasks}")
        if task in ("semseg", "human_parts"):
            meters[task] = SegmentationMeter(spec.num_outputs[task], spec.class_names.get(task))
        elif task == "depth":
            meters[task] = DepthMeter(max_depth=spec.max_depth)
        elif task == "normals":
            meters[task] = NormalsMeter()
        elif task == "sal":
            meters[task] = SaliencyMeter(double_sigmoid=sal_double_sigmoid)
        elif task == "edge":
            thresholds = (SEISM_THRESHOLDS if edge else QUICK_THRESHOLDS).tolist()
            meters[task] = EdgeMeter(
                spec.edge_max_dist, thresholds=thresholds, gt_boundary=spec.edge_gt, workers=edge_workers
            )
    return meters
