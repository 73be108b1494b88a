"""Depth metrics pooled over every valid pixel of the split (notes §4), as the authors' ``DepthMeter``.

Valid pixels: ``min_depth < gt < max_depth`` (0 and 80 m). The prediction is clamped at 0 (``postprocess`` already
does); for the logarithm and the ratios both depths are floored at 1e-9 m, as the authors. Every sum runs over
pixels, not images: RMSE = sqrt(Σ (pred − gt)² / N), the authors' definition (a per-image RMSE averaged over
images would weight small valid regions more).
"""

from __future__ import annotations

import numpy as np

from pamm.metrics.base import add_states, fixed_point_sum, fixed_point_value, prepare_batch

__all__ = ["DepthMeter", "DELTA_BASE"]

DELTA_BASE = 1.25
"""δ_k = share of pixels with max(pred / gt, gt / pred) < 1.25^k, k = 1, 2, 3."""

_FLOOR = 1e-9


class DepthMeter:
    """Pooled depth errors.

    ``update(pred, target, valid=None)``: ``pred`` metres (b, H, W) or (b, 1, H, W); ``target`` metres
    (b, 1, H, W) or (b, H, W), 0 = invalid; ``valid`` optional bool (b, H, W).

    ``compute()`` → ``rmse`` (m), ``log_rmse`` (natural log), ``abs_rel`` and ``sq_rel`` (mean of |e| / gt and
    e² / gt), ``delta1``/``delta2``/``delta3`` (% of pixels within 1.25, 1.25², 1.25³), ``pixels`` (count).
    """

    _SUMS = ("squared_error", "squared_log_error", "abs_rel", "sq_rel")

    def __init__(self, min_depth: float = 0.0, max_depth: float = 80.0):
        self.min_depth = min_depth
        self.max_depth = max_depth
        self.reset()

    def reset(self) -> None:
        self._state = {name: np.zeros(3, dtype=np.int64) for name in self._SUMS}
        self._state["pixels"] = np.zeros(1, dtype=np.int64)
        self._state["within_delta"] = np.zeros(3, dtype=np.int64)

    def update(self, pred, target, valid=None) -> None:
        pred, target, scored = prepare_batch(pred, target, valid, pred_dtype=np.float64, target_dtype=np.float64)
        scored &= (target > self.min_depth) & (target < self.max_depth)
        gt = target[scored]
        estimate = np.maximum(pred[scored], 0.0)
        if not np.isfinite(estimate).all():
            raise ValueError("depth prediction contains NaN or inf")
        error = estimate - gt
        floored = np.maximum(estimate, _FLOOR)
        gt_floored = np.maximum(gt, _FLOOR)
        ratio = np.maximum(floored / gt_floored, gt_floored / floored)
        self._state["squared_error"] += fixed_point_sum(error**2)
        self._state["squared_log_error"] += fixed_point_sum((np.log(gt_floored) - np.log(floored)) ** 2)
        self._state["abs_rel"] += fixed_point_sum(np.abs(error) / gt_floored)
        self._state["sq_rel"] += fixed_point_sum(error**2 / gt_floored)
        self._state["pixels"] += gt.size
        self._state["within_delta"] += [int((ratio < DELTA_BASE**k).sum()) for k in (1, 2, 3)]

    def state(self) -> dict[str, np.ndarray]:
        """``pixels`` (1,), ``within_delta`` (3,) int64 counts; the four error sums as fixed-point limbs (3,)."""
        return {key: value.copy() for key, value in self._state.items()}

    def merge_state(self, state: dict[str, np.ndarray]) -> None:
        add_states(self._state, state)

    def compute(self) -> dict[str, float | list]:
        pixels = int(self._state["pixels"][0])
        if pixels == 0:
            names = ("rmse", "log_rmse", "abs_rel", "sq_rel", "delta1", "delta2", "delta3")
            empty: dict[str, float | list] = {**dict.fromkeys(names, float("nan")), "pixels": 0}
            return empty
        mean = {name: fixed_point_value(self._state[name]) / pixels for name in self._SUMS}
        within = self._state["within_delta"] / pixels * 100
        return {
            "rmse": float(np.sqrt(mean["squared_error"])),
            "log_rmse": float(np.sqrt(mean["squared_log_error"])),
            "abs_rel": mean["abs_rel"],
            "sq_rel": mean["sq_rel"],
            "delta1": float(within[0]),
            "delta2": float(within[1]),
            "delta3": float(within[2]),
            "pixels": pixels,
        }
