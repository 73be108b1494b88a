"""Multi-task gain Δm: the mean relative improvement of a multi-task model over single-task baselines.

Δm = 1/T · Σ_t s_t · (M_mt,t − M_st,t) / M_st,t · 100, with s_t = +1 where higher is better and −1 where lower is
better (depth RMSE, normals mean angular error), over the dataset's tasks present in the results (notes §4).
"""

from __future__ import annotations

from collections.abc import Mapping

from pamm.tasks import DatasetSpec, dataset_spec

__all__ = ["TASK_METRICS", "main_metric", "task_gains", "multitask_gain"]

TASK_METRICS: dict[str, tuple[str, bool]] = {
    "semseg": ("mIoU", True),
    "human_parts": ("mIoU", True),
    "sal": ("maxF", True),
    "depth": ("rmse", False),
    "normals": ("mean", False),
    "edge": ("odsF", True),
}
"""Per task: the key of the metric that enters Δm and whether higher is better."""


def _metric(entry, key: str) -> float:
    return float(entry[key]) if isinstance(entry, Mapping) else float(entry)


def main_metric(task: str, metrics: Mapping) -> tuple[float, bool]:
    """The value of ``task``'s headline metric in its ``compute()`` dict, and whether higher is better."""
    key, higher_is_better = TASK_METRICS[task]
    return float(metrics[key]), higher_is_better


def task_gains(results: Mapping, single_task: Mapping, dataset: str | DatasetSpec) -> dict[str, float]:
    """Signed relative gain in % per task, in the dataset's task order.

    Args:
        results: task → the multi-task model's metrics (a meter's ``compute()`` dict, or the metric value itself).
        single_task: task → the single-task baseline, in the same forms.
        dataset: ``"nyud"``, ``"pascal"`` or a :class:`~pamm.tasks.DatasetSpec`; its tasks present in ``results``
            are scored.
    """
    spec = dataset_spec(dataset)
    unknown = sorted(set(results) - set(spec.tasks))
    if unknown:
        raise ValueError(f"tasks {unknown} are not tasks of {spec.name!r} {spec.tasks}")
    tasks = [task for task in spec.tasks if task in results]
    if not tasks:
        raise ValueError("results hold no task to score")
    missing = [task for task in tasks if task not in single_task]
    if missing:
        raise KeyError(f"no single-task baseline for {missing}")
    gains = {}
    for task in tasks:
        key, higher_is_better = TASK_METRICS[task]
        multi = _metric(results[task], key)
        single = _metric(single_task[task], key)
        if single == 0:
            raise ValueError(f"single-task {task} {key} is 0; the relative gain is undefined")
        gains[task] = (1 if higher_is_better else -1) * (multi - single) / single * 100
    return gains


def multitask_gain(results: Mapping, single_task: Mapping, dataset: str | DatasetSpec) -> float:
    """Δm in % (see the module docstring and :func:`task_gains` for the arguments)."""
    gains = task_gains(results, single_task, dataset)
    return sum(gains.values()) / len(gains)
