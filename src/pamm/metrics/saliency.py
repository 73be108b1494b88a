"""Saliency metrics: maximal F-measure (β² = 0.3) over fixed thresholds, pooled over the split, and mIoU at 0.5.

For each threshold t in 0.05, 0.10, ..., 0.95 (the authors' ``torch.arange(0.05, 1, 0.05)``) a pixel
is predicted salient when its probability ≥ t; true / predicted / actual positives are summed over every valid pixel
of the split, F(t) = (1 + β²)·P·R / (β²·P + R) (0 where undefined) and maxF = max_t F(t).

The authors' ``SaliencyMeter`` receives ``softmax · 255``, divides by 255 and then applies a sigmoid again, so it
thresholds sigmoid(p) ∈ [0.5, 0.73] instead of p: every threshold ≤ 0.5 marks all pixels salient and only 0.55,
0.60, 0.65, 0.70 discriminate (they act as p ≥ 0.20, 0.41, 0.62, 0.85). ``double_sigmoid=True`` reproduces that
for comparison with published numbers; the default thresholds the probability itself. The mIoU at 0.5 always uses
the probability itself.
"""

from __future__ import annotations

import numpy as np

from pamm.metrics.base import add_states, prepare_batch
from pamm.tasks import IGNORE_INDEX

__all__ = ["SaliencyMeter", "SALIENCY_THRESHOLDS", "BETA_SQUARED"]

SALIENCY_THRESHOLDS = np.array(
    [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.59999996, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95],
    dtype=np.float32,
)
"""The 19 thresholds 0.05 ... 0.95, bit for bit the float32 values of ``torch.arange(0.05, 1, 0.05)`` (which gives
0.59999996 for 0.6), compared with float32 probabilities."""

BETA_SQUARED = 0.3


class SaliencyMeter:
    """Pooled threshold counts of a binary saliency prediction.

    Args:
        double_sigmoid: threshold sigmoid(p) instead of p, reproducing the authors' inherited bug.
        ignore_index: target value of pixels that are not scored.

    ``update(pred, target, valid=None)``: ``pred`` probability of "salient" (b, H, W) (or (b, 1, H, W));
    ``target`` int (b, H, W) or (b, 1, H, W) in {0, 1, ignore_index}; ``valid`` optional bool (b, H, W).

    ``compute()`` → ``maxF`` (%), ``max_threshold`` (threshold reaching it), ``F`` (list, % per threshold),
    ``thresholds`` (list), ``mIoU`` (%, mean IoU of background and salient at probability ≥ 0.5).
    """

    def __init__(self, double_sigmoid: bool = False, ignore_index: int = IGNORE_INDEX):
        self.double_sigmoid = double_sigmoid
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        count = len(SALIENCY_THRESHOLDS)
        self._state = {
            "true_positive": np.zeros(count, dtype=np.int64),
            "predicted_positive": np.zeros(count, dtype=np.int64),
            "actual_positive": np.zeros(1, dtype=np.int64),
            "confusion": np.zeros((2, 2), dtype=np.int64),
        }

    def update(self, pred, target, valid=None) -> None:
        pred, target, scored = prepare_batch(pred, target, valid, ignore_index=self.ignore_index, pred_dtype=np.float32)
        probability = pred[scored]
        salient = target[scored].astype(bool)
        thresholded = 1 / (1 + np.exp(-probability)) if self.double_sigmoid else probability
        # Count pixels at or above each threshold through a sorted copy instead of 19 full passes.
        order = np.sort(thresholded)
        positives_sorted = np.sort(thresholded[salient])
        above = order.size - np.searchsorted(order, SALIENCY_THRESHOLDS, side="left")
        true_above = positives_sorted.size - np.searchsorted(positives_sorted, SALIENCY_THRESHOLDS, side="left")
        self._state["predicted_positive"] += above
        self._state["true_positive"] += true_above
        self._state["actual_positive"] += int(salient.sum())
        predicted_salient = probability >= 0.5
        self._state["confusion"] += np.bincount(salient * 2 + predicted_salient, minlength=4).reshape(2, 2)

    def state(self) -> dict[str, np.ndarray]:
        """Counts (int64): ``true_positive`` / ``predicted_positive`` (19,), ``actual_positive`` (1,),
        ``confusion`` (2, 2) at 0.5 (rows = target, columns = prediction)."""
        return {key: value.copy() for key, value in self._state.items()}

    def merge_state(self, state: dict[str, np.ndarray]) -> None:
        add_states(self._state, state)

    def compute(self) -> dict[str, float | list]:
        true_positive = self._state["true_positive"].astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = true_positive / self._state["predicted_positive"]
            recall = true_positive / self._state["actual_positive"][0]
            f_measure = (1 + BETA_SQUARED) * precision * recall / (BETA_SQUARED * precision + recall)
        f_measure = np.nan_to_num(f_measure, nan=0.0)
        best = int(np.argmax(f_measure))
        confusion = self._state["confusion"].astype(np.float64)
        union = confusion.sum(0) + confusion.sum(1) - np.diag(confusion)
        present = union > 0
        iou = np.diag(confusion)[present] / union[present]
        return {
            "maxF": float(f_measure[best] * 100),
            "max_threshold": float(SALIENCY_THRESHOLDS[best]),
            "F": (f_measure * 100).tolist(),
            "thresholds": SALIENCY_THRESHOLDS.astype(np.float64).tolist(),
            "mIoU": float(iou.mean() * 100) if present.any() else float("nan"),
        }
