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

__all__ = ["Meter", "to_numpy", "fixed_point_sum", "fixed_point_value", "add_states", "FIXED_POINT_MAX"]

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
