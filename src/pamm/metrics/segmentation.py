"""Semantic segmentation and human-parts metrics from a confusion matrix pooled over the whole split.

IoU of class c = TP / (TP + FP + FN) over every valid pixel of the split (not averaged per image), as the authors'
``SemsegMeter`` / ``HumanPartsMeter``. Classes whose union is empty (absent from both ground truth and prediction)
are left out of the mean and reported as NaN. The authors' code instead counts them as IoU 0 in the mean; the two
agree whenever every class occurs in the evaluated split, which holds for the full NYUD-v2 and PASCAL-Context
validation splits, and ours does not drag the mean down when scoring a handful of images.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pamm.metrics.base import add_states, prepare_batch
from pamm.tasks import IGNORE_INDEX

__all__ = ["SegmentationMeter"]


class SegmentationMeter:
    """Pooled confusion matrix of a per-pixel classification task (semseg, human_parts).

    Args:
        num_classes: number of classes C; labels are 0..C-1.
        class_names: optional names, only echoed by :meth:`compute`.
        ignore_index: target value of pixels that are not scored.

    ``update(pred, target, valid=None)``: ``pred`` class ids (b, H, W); ``target`` int (b, H, W) or (b, 1, H, W)
    with ``ignore_index``; ``valid`` optional bool (b, H, W) further restricting the scored pixels.

    ``compute()`` → ``mIoU`` (%), ``pixel_acc`` (%), ``IoU`` (list of C values in %, NaN for a class with an empty
    union), ``classes_present`` (number of classes with a non-empty union) and ``class_names`` when given.
    """

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None, ignore_index: int = IGNORE_INDEX):
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.num_classes = num_classes
        self.class_names = tuple(class_names) if class_names is not None else None
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        self._state = {"confusion": np.zeros((self.num_classes, self.num_classes), dtype=np.int64)}

    def update(self, pred, target, valid=None) -> None:
        pred, target, scored = prepare_batch(pred, target, valid, ignore_index=self.ignore_index)
        labels = target[scored].astype(np.int64)
        predicted = pred[scored].astype(np.int64)
        for name, values in (("target", labels), ("prediction", predicted)):
            if values.size and (values.min() < 0 or values.max() >= self.num_classes):
                raise ValueError(f"{name} holds labels outside 0..{self.num_classes - 1} (and {self.ignore_index})")
        counts = np.bincount(labels * self.num_classes + predicted, minlength=self.num_classes**2)
        self._state["confusion"] += counts.reshape(self.num_classes, self.num_classes)

    def state(self) -> dict[str, np.ndarray]:
        """``confusion``: int64 (C, C), rows = ground truth class, columns = predicted class."""
        return {key: value.copy() for key, value in self._state.items()}

    def merge_state(self, state: dict[str, np.ndarray]) -> None:
        add_states(self._state, state)

    def compute(self) -> dict[str, float | list]:
        confusion = self._state["confusion"].astype(np.float64)
        true_positive = np.diag(confusion)
        union = confusion.sum(0) + confusion.sum(1) - true_positive
        present = union > 0
        iou = np.full(self.num_classes, np.nan)
        iou[present] = true_positive[present] / union[present]
        total = confusion.sum()
        result: dict[str, float | list] = {
            "mIoU": float(iou[present].mean() * 100) if present.any() else float("nan"),
            "pixel_acc": float(true_positive.sum() / total * 100) if total else float("nan"),
            "IoU": (iou * 100).tolist(),
            "classes_present": int(present.sum()),
        }
        if self.class_names is not None:
            result["class_names"] = list(self.class_names)
        return result
