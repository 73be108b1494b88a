"""Datasets (NYUD-v2, PASCAL-Context in their real layouts; your own folders described by a ``dataset.yaml``),
PAMM's transforms, and dataset validation."""

from __future__ import annotations

import os
from collections.abc import Sequence

from pamm.data.check import Problem, ValidationReport, check_dataset, validate_dataset
from pamm.data.dataset import FailedSample, LoadGuard, MultiTaskDataset, Transform, collate
from pamm.data.generic import GenericDataset
from pamm.data.io import DatasetError
from pamm.data.nyud import NYUDv2
from pamm.data.pascal import PascalContext
from pamm.data.transforms import build_transforms

DATASET_CLASSES: dict[str, type[MultiTaskDataset]] = {
    "nyud": NYUDv2,
    "pascal": PascalContext,
    "generic": GenericDataset,
}


def build_dataset(
    name: str,
    root: str | os.PathLike,
    split: str,
    tasks: Sequence[str] | None = None,
    transform: Transform | None = None,
    seed: int = 0,
    on_error: str = "raise",
) -> MultiTaskDataset:
    """Instantiate dataset ``name`` (``"nyud"``, ``"pascal"`` or ``"generic"``: the folder ``root`` described by its
    ``dataset.yaml``); see :class:`MultiTaskDataset` for the rest."""
    if name not in DATASET_CLASSES:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(DATASET_CLASSES)}")
    return DATASET_CLASSES[name](root, split=split, tasks=tasks, transform=transform, seed=seed, on_error=on_error)


__all__ = [
    "DATASET_CLASSES",
    "DatasetError",
    "FailedSample",
    "GenericDataset",
    "LoadGuard",
    "MultiTaskDataset",
    "NYUDv2",
    "PascalContext",
    "Problem",
    "Transform",
    "ValidationReport",
    "build_dataset",
    "build_transforms",
    "check_dataset",
    "collate",
    "validate_dataset",
]
