"""What every meter shares: the :class:`Meter` protocol, array conversion, and floating-point sums kept as integers
so that partial results merge exactly.

A meter's :meth:`~Meter.state` holds only sums and counts (fixed-shape int64 / float64 arrays): distributed
evaluation all-reduces each array by summation and :meth:`~Meter.merge_state` adds another meter's state, so any
split of a dataset into batches or processes gives the numbers of a single pass. Floating-point sums (squared depth
errors, angles, ...) are accumulated in fixed point — each per-pixel value rounded to a multiple of 2^-32, summed as
int64 limbs — because float additions in a different order differ in their last bits; the rounding changes a
per-pixel value by at most 2^-33 (1.2e-10), far below any reported digit.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "Meter", "to_numpy", "prepare_batch", "fixed_point_sum", "fixed_point_value", "add_states", "FIXED_POINT_MAX",
]  # fmt: skip

_FRACTION_BITS = 32
_INTEGER_LOW_BITS = 26
FIXED_POINT_MAX = 2.0**53
"""Values :func:`fixed_point_sum` accepts lie in [0, FIXED_POINT_MAX) (float64 integers are exact up to there)."""


@runtime_checkable
class Meter(Protocol):
    """Accumulates one task's metric over a split; see the module docstring for the state contract."""

    def update(self, pred: Any, target: Any, valid: Any = None) -> None:
        """Add a batch: post-processed predictions, loader targets and an optional bool (b, H, W) region."""

    def state(self) -> dict[str, np.ndarray]:
        """Sums and counts accumulated so far (copies), each summable across processes."""

    def merge_state(self, state: dict[str, np.ndarray]) -> None:
        """Add the state of another meter of the same configuration."""

    def reset(self) -> None:
        """Forget everything accumulated."""

    def compute(self) -> dict[str, float | list]:
        """The metrics of everything accumulated."""


def to_numpy(array: Any) -> np.ndarray:
    """A torch tensor (any device; half / bfloat16 widened to float32) or array-like → numpy array."""
    if hasattr(array, "detach"):
        tensor = array.detach()
        if tensor.is_floating_point() and tensor.element_size() < 4:
            tensor = tensor.float()
        return tensor.cpu().numpy()
    return np.asarray(array)


def prepare_batch(
    pred: Any,
    target: Any,
    valid: Any = None,
    *,
    ignore_index: int | None = None,
    pred_dtype: Any = None,
    target_dtype: Any = None,
    vectors: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The start of every meter's ``update``: one batch as NumPy arrays, checked, and the pixels to score.

    Args:
        pred, target: maps (b, H, W), or (b, 1, H, W) whose channel axis is dropped; with ``vectors=True`` vector
            fields (b, 3, H, W) (normals), kept as they are.
        valid: optional bool region (b, H, W) (any shape with b·H·W elements) further restricting the scored pixels.
        ignore_index: target value of pixels that are not scored (for vectors: where any channel has it); None
            scores every pixel.
        pred_dtype, target_dtype: convert to these dtypes (None keeps the input's).

    Returns:
        ``(pred, target, scored)``: the arrays, and bool (b, H, W) of the pixels to score.

    Raises:
        ValueError: prediction and target shapes differ (or are not (b, 3, H, W) for vectors).
    """
    pred, target = to_numpy(pred), to_numpy(target)
    if pred_dtype is not None:
        pred = pred.astype(pred_dtype)
    if target_dtype is not None:
        target = target.astype(target_dtype)
    if vectors:
        if pred.shape != target.shape or pred.ndim != 4 or pred.shape[1] != 3:
            raise ValueError(f"expected prediction and target (b, 3, H, W), got {pred.shape} and {target.shape}")
        scored_shape = (target.shape[0], *target.shape[2:])
        scored = np.ones(scored_shape, dtype=bool) if ignore_index is None else (target != ignore_index).all(1)
    else:
        pred, target = (x[:, 0] if x.ndim == 4 and x.shape[1] == 1 else x for x in (pred, target))
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {pred.shape} does not match target shape {target.shape}")
        scored = np.ones(target.shape, dtype=bool) if ignore_index is None else target != ignore_index
    if valid is not None:
        scored &= to_numpy(valid).astype(bool).reshape(scored.shape)
    return pred, target, scored


def fixed_point_sum(values: np.ndarray) -> np.ndarray:
    """Sum of non-negative finite ``values`` as int64 limbs (3,): exact, so sums of parts add up to the whole.

    Each value is split into its integer part (two limbs of 27 and 26 bits) and its fraction, rounded to a
    multiple of 2^-32; the limbs of 2^31 (two billion) values still fit int64. Values must lie in
    [0, :data:`FIXED_POINT_MAX`).
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size and not (np.isfinite(values).all() and values.min() >= 0 and values.max() < FIXED_POINT_MAX):
        raise ValueError("fixed_point_sum takes finite values in [0, 2**53); got NaN, inf, negative or huge values")
    integer_part = np.floor(values)
    fraction = np.rint((values - integer_part) * 2.0**_FRACTION_BITS).astype(np.int64)
    integer_part = integer_part.astype(np.int64)
    high = int((integer_part >> _INTEGER_LOW_BITS).sum())
    low = int((integer_part & ((1 << _INTEGER_LOW_BITS) - 1)).sum())
    return np.array([high, low, int(fraction.sum())], dtype=np.int64)


def fixed_point_value(limbs: np.ndarray) -> float:
    """The float value of limbs made by :func:`fixed_point_sum` (and summed any number of times)."""
    high, low, fraction = (int(limb) for limb in limbs)
    return ((((high << _INTEGER_LOW_BITS) + low) << _FRACTION_BITS) + fraction) / 2**_FRACTION_BITS


def add_states(into: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> None:
    """``into[key] += other[key]`` for every key, checking that both states have the same keys and shapes."""
    if set(into) != set(other):
        raise ValueError(f"state keys differ: {sorted(into)} vs {sorted(other)}")
    for key, value in other.items():
        value = np.asarray(value)
        if value.shape != into[key].shape:
            raise ValueError(f"state {key!r} has shape {value.shape}, expected {into[key].shape}")
        into[key] += value.astype(into[key].dtype, copy=False)
