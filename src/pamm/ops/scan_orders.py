"""Scan orders over a token grid: rotated Hilbert curves (the paper's Multi-Directional Hilbert Scanning),
Z-order (Morton), snake and raster.

Each kind assigns a visiting rank to every cell of a square "canvas" that covers the grid (a 2^p canvas for
Hilbert, max(H, W) for the others, as the released code), the canvas is rotated by k quarter turns, cropped to
its top-left H x W and the crop's ranks are sorted: step t of direction k visits the row-major token
``orders[k, t]``.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

__all__ = ["scan_orders", "inverse_orders", "hilbert_index", "SCAN_KINDS"]

SCAN_KINDS = ("hilbert", "zorder", "snake", "raster")


def hilbert_index(i: np.ndarray, j: np.ndarray, bits: int) -> np.ndarray:
    """Distance along the 2-D Hilbert curve of order ``bits`` of the points (i, j), by Skilling's algorithm
    ("Programming the Hilbert curve", 2004), vectorised over arrays of coordinates in [0, 2**bits)."""
    x = [np.asarray(i, dtype=np.int64).copy(), np.asarray(j, dtype=np.int64).copy()]
    if bits == 0:
        return np.zeros_like(x[0])
    q = 1 << (bits - 1)
    while q > 1:  # inverse undo of excess work
        p = q - 1
        for k in range(2):
            hit = (x[k] & q) != 0
            t = (x[0] ^ x[k]) & p
            x0 = np.where(hit, x[0] ^ p, x[0] ^ t)
            xk = np.where(hit, x[k], x[k] ^ t) if k else x0
            x[0], x[k] = x0, xk
        q >>= 1
    x[1] = x[1] ^ x[0]  # Gray encode
    t = np.zeros_like(x[0])
    q = 1 << (bits - 1)
    while q > 1:
        t = np.where((x[1] & q) != 0, t ^ (q - 1), t)
        q >>= 1
    x = [x[0] ^ t, x[1] ^ t]
    h = np.zeros_like(x[0])
    for b in range(bits - 1, -1, -1):  # interleave the transposed bits, x[0] first
        h = (h << 2) | (((x[0] >> b) & 1) << 1) | ((x[1] >> b) & 1)
    return h


def _canvas(kind: str, height: int, width: int) -> np.ndarray:
    """Visiting rank of every cell of a square canvas covering the grid (row r, column c)."""
    if kind == "hilbert":
        bits = max(0, math.ceil(math.log2(max(height, width))))
        side = 1 << bits
        r, c = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
        return hilbert_index(r, c, bits).T  # the released code transposes the curve
    side = max(height, width)
    r, c = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    if kind == "raster":
        return r * side + c
    if kind == "snake":
        return r * side + np.where(r % 2 == 1, side - 1 - c, c)
    if kind == "zorder":
        code = np.zeros_like(r)
        for b in range(max(1, side.bit_length())):
            code |= ((c >> b) & 1) << (2 * b) | ((r >> b) & 1) << (2 * b + 1)
        return code
    raise ValueError(f"unknown scan kind {kind!r}; expected one of {SCAN_KINDS}")


@lru_cache(maxsize=64)
def _orders_numpy(height: int, width: int, kind: str, directions: int) -> np.ndarray:
    if directions not in (1, 2, 4):
        raise ValueError(f"directions must be 1, 2 or 4, got {directions}")
    if height < 1 or width < 1:
        raise ValueError(f"grid must be at least 1x1, got {height}x{width}")
    canvas = _canvas(kind, height, width)
    step = 4 // directions  # quarter turns between consecutive directions
    rows = [
        np.argsort(np.rot90(canvas, k * step)[:height, :width].reshape(-1), kind="stable") for k in range(directions)
    ]
    out = np.stack(rows)
    out.setflags(write=False)
    return out


def scan_orders(
    height: int, width: int, kind: str = "hilbert", directions: int = 4, device: torch.device | str | None = None
) -> torch.Tensor:
    """Scan orders over a ``height x width`` token grid.

    Args:
        height, width: grid size in tokens.
        kind: ``"hilbert"`` (paper), ``"zorder"``, ``"snake"`` or ``"raster"``.
        directions: 1, 2 or 4 rotations of the canvas (0, 180 degrees for 2; 0, 90, 180, 270 for 4).
        device: where to put the result.

    Returns:
        LongTensor (directions, height*width): row k lists, for step t, the row-major flat index of the token
        visited at step t. Cached per arguments.
    """
    return torch.from_numpy(_orders_numpy(int(height), int(width), kind, int(directions)).copy()).to(device)


def inverse_orders(orders: torch.Tensor) -> torch.Tensor:
    """Inverse permutations: ``inverse[k, orders[k, t]] = t``. Shape (K, L)."""
    inv = torch.empty_like(orders)
    steps = torch.arange(orders.shape[1], device=orders.device).expand_as(orders)
    return inv.scatter_(1, orders, steps)
