"""Surface-normal metrics: angular error in degrees, pooled over every valid pixel of the split.

As the authors' ``NormalsMeter``: a pixel is valid when none of its three target channels is 255; prediction and
target are normalised to unit length (a zero vector stays zero) and the angle is 2·atan2(|p − g|, |p + g|), which
is accurate near 0° and 180° where acos is not. The median comes from a histogram of the angles with 0.01° bins
over [0°, 180°] (a mergeable count): it is the centre of the bin holding the middle order statistic(s), within
0.005° of the exact median.
"""

from __future__ import annotations

import numpy as np

from pamm.metrics.base import add_states, fixed_point_sum, fixed_point_value, prepare_batch
from pamm.tasks import IGNORE_INDEX

__all__ = ["NormalsMeter", "ANGLE_THRESHOLDS", "MEDIAN_BIN_WIDTH"]

ANGLE_THRESHOLDS = (11.25, 22.5, 30.0)
"""Degrees; ``within_<t>`` is the share of pixels with an angular error strictly below t."""

MEDIAN_BIN_WIDTH = 0.01
"""Degrees per histogram bin used for the median."""

_BINS = int(round(180 / MEDIAN_BIN_WIDTH))


def _unit(vectors: np.ndarray) -> np.ndarray:
    """Normalise (b, 3, H, W) along dim 1, leaving zero vectors at zero."""
    norm = np.sqrt((vectors**2).sum(1, keepdims=True))
    return np.divide(vectors, norm, out=np.zeros_like(vectors), where=norm > 0)


def angular_error(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Angle in degrees between the normalised vectors of ``pred`` and ``target`` (b, 3, H, W) → (b, H, W)."""
    pred, target = _unit(pred), _unit(target)
    difference = np.sqrt(((pred - target) ** 2).sum(1))
    total = np.sqrt(((pred + target) ** 2).sum(1))
    return np.degrees(2 * np.arctan2(difference, total))


class NormalsMeter:
    """Pooled angular errors.

    ``update(pred, target, valid=None)``: ``pred`` (b, 3, H, W) (unit vectors from ``postprocess``, normalised
    again here); ``target`` float (b, 3, H, W) with ``ignore_index`` marking invalid pixels; ``valid`` optional
    bool (b, H, W).

    ``compute()`` → ``mean``, ``median``, ``rmse`` (degrees), ``within_11.25``, ``within_22.5``, ``within_30``
    (% of pixels), ``pixels`` (count).
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX):
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        self._state = {
            "pixels": np.zeros(1, dtype=np.int64),
            "angle_sum": np.zeros(3, dtype=np.int64),
            "squared_angle_sum": np.zeros(3, dtype=np.int64),
            "within": np.zeros(len(ANGLE_THRESHOLDS), dtype=np.int64),
            "histogram": np.zeros(_BINS, dtype=np.int64),
        }

    def update(self, pred, target, valid=None) -> None:
        pred, target, scored = prepare_batch(pred, target, valid, ignore_index=self.ignore_index, vectors=True,
                                             pred_dtype=np.float64, target_dtype=np.float64)  # fmt: skip
        if not np.isfinite(pred).all():
            raise ValueError("normals prediction contains NaN or inf")
        angles = angular_error(pred, target)[scored]
        bins = np.minimum((angles / MEDIAN_BIN_WIDTH).astype(np.int64), _BINS - 1)
        self._state["pixels"] += angles.size
        self._state["angle_sum"] += fixed_point_sum(angles)
        self._state["squared_angle_sum"] += fixed_point_sum(angles**2)
        self._state["within"] += [int((angles < limit).sum()) for limit in ANGLE_THRESHOLDS]
        self._state["histogram"] += np.bincount(bins, minlength=_BINS)

    def state(self) -> dict[str, np.ndarray]:
        """``pixels`` (1,), ``within`` (3,), ``histogram`` (18000,) int64 counts; angle sums as fixed-point limbs."""
        return {key: value.copy() for key, value in self._state.items()}

    def merge_state(self, state: dict[str, np.ndarray]) -> None:
        add_states(self._state, state)

    def _median(self, pixels: int) -> float:
        cumulative = np.cumsum(self._state["histogram"])
        middle = [(pixels + 1) // 2, pixels // 2 + 1]  # 1-based ranks of the middle order statistic(s)
        bins = np.searchsorted(cumulative, middle)
        return float(np.mean((bins + 0.5) * MEDIAN_BIN_WIDTH))

    def compute(self) -> dict[str, float | list]:
        pixels = int(self._state["pixels"][0])
        names = ["mean", "median", "rmse"] + [f"within_{limit:g}" for limit in ANGLE_THRESHOLDS]
        if pixels == 0:
            empty: dict[str, float | list] = {**dict.fromkeys(names, float("nan")), "pixels": 0}
            return empty
        within = self._state["within"] / pixels * 100
        values = [
            fixed_point_value(self._state["angle_sum"]) / pixels,
            self._median(pixels),
            float(np.sqrt(fixed_point_value(self._state["squared_angle_sum"]) / pixels)),
            *within.tolist(),
        ]
        return dict(zip(names, values)) | {"pixels": pixels}
