"""Boundary detection metrics — odsF, oisF and AP — by the SEISM protocol, as the multi-task papers run it.

The published numbers (ASTMT, ATRC, InvPT, PAMM) come from MATLAB SEISM, driven by its ``read_one_cont_png`` reader
and the "HED" threshold list. Per image, in its original (unpadded) size, this module does the same:

1. the prediction is the 8-bit PNG the reference pipeline writes, ``floor(255 · p) / 255`` (``quantize``);
2. non-maximum suppression along the edge normal (Dollár's ``edgesNms``: orientation from second derivatives of the
   map smoothed by a radius-4 triangle filter, suppression radius 1, tolerance ×1.01, attenuation of the 5 pixels
   nearest the border) (``nms``);
3. for each threshold t the binary map ``E > t`` is thinned to one-pixel curves (MATLAB ``bwmorph 'thin' Inf``,
   Guo & Hall's two-subiteration algorithm);
4. the ground-truth boundary is thinned too; SEISM derives it from a segmentation with ``seg2bmap`` — for NYUD-v2
   from the boundary PNG itself (``gt_boundary="seg2bmap"``), for PASCAL-Context from ``LabelMap``, whose loader
   boundaries are already one pixel wide (``gt_boundary="thin"``);
5. predicted and ground-truth pixels are matched one-to-one within ``max_dist`` × image diagonal (BSDS
   ``correspondPixels``); matched / predicted / ground-truth pixel counts are kept per threshold.

Counts are summed over images: ODS is the best F over thresholds of the pooled counts, OIS pools the counts of each
image at its own best threshold, AP integrates the pooled precision-recall curve (SEISM's ``general_ap``).

Matching. ``correspondPixels`` solves a min-cost assignment (CSA) in which a pair costs its distance (≤ r) and an
unmatched pixel costs 100·r, on a graph whose outlier edges are sampled at random. Every extra pair saves 100·r
and lengthens the other pairs by at most r each, so its optimum has maximum cardinality unless raising it means
re-pairing 100 or more pixels; the counts depend on the cardinality only. Here the candidate pairs within the
radius (u² + v² ≤ r², as correspondPixels) get an exact maximum-cardinality matching — deterministic, where CSA may
differ in those rare configurations and through its random outlier edges. The maps of successive thresholds differ
by few pixels, so each map's matching starts from the previous one and is completed by augmenting paths (see
:class:`_IncrementalMatching`); scipy's ``maximum_bipartite_matching`` is not used because its depth-first search
does not prune dead ends and takes minutes on some of these graphs.
"""

from __future__ import annotations

import ast
import math
import multiprocessing
import os
import sys
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse.csgraph import breadth_first_order

from pamm.metrics.base import add_states, prepare_batch
from pamm.tasks import IGNORE_INDEX

__all__ = [
    "EdgeMeter",
    "EdgeProtocol",
    "SEISM_THRESHOLDS",
    "BSDS_THRESHOLDS",
    "QUICK_THRESHOLDS",
    "default_edge_workers",
    "edge_counts",
    "edge_nms",
    "thin",
    "seg2bmap",
]

SEISM_THRESHOLDS = np.array([0.001, *(np.arange(1, 100) / 100), 0.999])
"""SEISM's ``parameters/HED.txt``, used by ASTMT / ATRC / InvPT: 0.001, 0.01, 0.02, ..., 0.99, 0.999 (101)."""

BSDS_THRESHOLDS = np.linspace(1 / 100, 99 / 100, 99)
"""The BSDS / ``edgesEvalImg`` default: 99 thresholds 0.01 ... 0.99."""

QUICK_THRESHOLDS = np.arange(1, 10) / 10
"""0.1 ... 0.9, a subset of the SEISM list for cheap validation during training."""


# ---------------------------------------------------------------------------------------------------------------
# Thinning (MATLAB bwmorph 'thin', Inf)


def _thinning_tables() -> tuple[np.ndarray, np.ndarray]:
    """Deletion tables of the two subiterations of Guo & Hall's thinning (Lam, Lee & Suen 1992, p. 879).

    A pixel's neighbours x1..x8 — east, north-east, north, north-west, west, south-west, south, south-east — are the
    bits 0..7 of its code; ``table[code]`` is True where a foreground pixel with that neighbourhood is removed.
    """
    code = np.arange(256)
    bit = [((code >> k) & 1).astype(bool) for k in range(8)]

    def x(i: int) -> np.ndarray:  # x_i with 1-based, cyclic numbering
        return bit[(i - 1) % 8]

    crossings = sum((~x(2 * i - 1) & (x(2 * i) | x(2 * i + 1))).astype(int) for i in range(1, 5))
    n1 = sum((x(2 * k - 1) | x(2 * k)).astype(int) for k in range(1, 5))
    n2 = sum((x(2 * k) | x(2 * k + 1)).astype(int) for k in range(1, 5))
    smaller = np.minimum(n1, n2)
    removable = (crossings == 1) & (smaller >= 2) & (smaller <= 3)
    first = removable & ~((x(2) | x(3) | ~x(8)) & x(1))
    second = removable & ~((x(6) | x(7) | ~x(4)) & x(5))
    return first, second


_THINNING_TABLES = _thinning_tables()


def _neighbour_offsets(row_length: int) -> np.ndarray:
    """Flat-index offsets of x1..x8 (see :func:`_thinning_tables`) in an image with rows of ``row_length``."""
    return np.array([1, 1 - row_length, -row_length, -row_length - 1, -1, row_length - 1, row_length, row_length + 1])


def _distinct(indices: np.ndarray) -> np.ndarray:
    """The sorted distinct values of an int array, as ``np.unique`` (whose hash-based path in numpy >= 2.3 is ~20x
    slower on these index arrays)."""
    if indices.size < 2:
        return indices
    ordered = np.sort(indices)
    first = np.empty(ordered.size, dtype=bool)
    first[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    return ordered[first]


def _thin_flat(image: np.ndarray, codes: np.ndarray, row_length: int, foreground: np.ndarray) -> np.ndarray:
    """Thin in place binary images stored flat in ``image`` (uint8 0/1), each surrounded by a zero border.

    ``foreground`` lists every 1 of ``image`` and ``codes`` (uint8, same layout) holds their neighbour codes; returns
    the foreground left. Subiterations alternate between the two tables, each deleting in parallel, until neither
    deletes anything. Deleting a pixel clears one bit in each neighbour's code, and only those neighbours need to be
    judged again: after each table has seen every pixel once, no other pixel's verdict can change.
    """
    offsets = _neighbour_offsets(row_length)
    pending = [foreground, foreground]
    subiteration = 0
    while pending[0].size or pending[1].size:
        which = subiteration % 2
        candidates = pending[which]
        candidates = candidates[image[candidates] == 1]
        removed = candidates[_THINNING_TABLES[which][codes[candidates]]]
        image[removed] = 0
        neighbours = []
        for bit, offset in enumerate(offsets):
            neighbour = removed - offset  # sees a removed pixel as its neighbour number ``bit``
            codes[neighbour] &= np.uint8(255 ^ (1 << bit))
            neighbours.append(neighbour)
        touched = np.concatenate(neighbours)
        touched = _distinct(touched[image[touched] == 1])  # a pixel touched by several deletions is judged once
        pending[which] = touched
        if subiteration > 0:  # before that, the other table has yet to judge every pixel anyway
            pending[1 - which] = _distinct(np.concatenate([pending[1 - which], touched]))
        subiteration += 1
    return foreground[image[foreground] == 1]


def thin(mask: np.ndarray) -> np.ndarray:
    """Thin a binary mask (H, W), or each of a stack (n, H, W), to 8-connected one-pixel curves.

    Same result as MATLAB ``bwmorph(mask, 'thin', Inf)`` (pixels outside the image are background): objects
    without holes shrink to minimally connected strokes, rings stay rings, 2×2 squares survive.
    """
    mask = np.asarray(mask, dtype=bool)
    stack = mask[None] if mask.ndim == 2 else mask
    padded = np.pad(stack, ((0, 0), (1, 1), (1, 1))).astype(np.uint8)
    image = padded.reshape(-1)
    foreground = np.flatnonzero(image)
    codes = np.zeros_like(image)
    for bit, offset in enumerate(_neighbour_offsets(padded.shape[2])):
        codes[foreground] |= image[foreground + offset] << bit
    _thin_flat(image, codes, padded.shape[2], foreground)
    thinned = padded[:, 1:-1, 1:-1].astype(bool)
    return thinned[0] if mask.ndim == 2 else thinned


def seg2bmap(segmentation: np.ndarray) -> np.ndarray:
    """Boundary map (H, W) bool of a label image, as BSDS/SEISM ``seg2bmap``: a pixel is a boundary when its
    east, south or south-east neighbour has another label (outside the image counts as label 0, except that the
    last row only looks east, the last column only south, and the bottom-right pixel is never a boundary)."""
    labels = np.asarray(segmentation)
    east = np.zeros_like(labels)
    south = np.zeros_like(labels)
    south_east = np.zeros_like(labels)
    east[:, :-1] = labels[:, 1:]
    south[:-1, :] = labels[1:, :]
    south_east[:-1, :-1] = labels[1:, 1:]
    boundary = (labels != east) | (labels != south) | (labels != south_east)
    boundary[-1, :] = labels[-1, :] != east[-1, :]
    boundary[:, -1] = labels[:, -1] != south[:, -1]
    boundary[-1, -1] = False
    return boundary


# ---------------------------------------------------------------------------------------------------------------
# Non-maximum suppression (Dollár's edgesNms as called by SEISM's read_one_cont_png)


def _triangle_smooth(image: np.ndarray, radius: int) -> np.ndarray:
    """Separable triangle filter [1 .. r+1 .. 1] / (r+1)² with symmetric borders (Dollár's ``convTri``)."""
    kernel = np.concatenate([np.arange(1, radius + 2), np.arange(radius, 0, -1)]) / (radius + 1) ** 2
    smoothed = ndimage.convolve1d(image, kernel, axis=0, mode="reflect")
    return ndimage.convolve1d(smoothed, kernel, axis=1, mode="reflect")


def _bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``image`` (H, W) float32 sampled at columns ``x`` and rows ``y`` (float32), clamped just inside the image."""
    height, width = image.shape
    x = np.clip(x, 0, np.float32(width - 1.001))
    y = np.clip(y, 0, np.float32(height - 1.001))
    x0 = x.astype(np.int64)
    y0 = y.astype(np.int64)
    dx0 = x - x0
    dy0 = y - y0
    dx1 = 1 - dx0
    dy1 = 1 - dy0
    return (
        image[y0, x0] * dx1 * dy1
        + image[y0, x0 + 1] * dx0 * dy1
        + image[y0 + 1, x0] * dx1 * dy0
        + image[y0 + 1, x0 + 1] * dx0 * dy0
    )


def edge_nms(edges: np.ndarray, radius: int = 1, border: int = 5, tolerance: float = 1.01) -> np.ndarray:
    """Non-maximum suppression of an edge map (H, W) in [0, 1] → float32 (H, W), as SEISM's contour reader.

    The edge normal at each pixel comes from the second derivatives of the map smoothed by a radius-4 triangle
    filter: θ = atan(E_yy · sign(−E_xy) / (E_xx + 1e-5)) mod π. A pixel is zeroed when ``tolerance`` × its value is
    below the bilinearly interpolated value ``d`` pixels away along (cos θ, sin θ), for any 0 < |d| ≤ ``radius``;
    finally the ``border`` pixels nearest each image side are scaled by distance / ``border``. Computed in float32
    as the original.
    """
    edges = np.asarray(edges, dtype=np.float32)
    height, width = edges.shape
    smoothed = _triangle_smooth(edges, 4)
    grad_x = np.gradient(smoothed, axis=1)
    grad_y = np.gradient(smoothed, axis=0)
    grad_xx = np.gradient(grad_x, axis=1)
    grad_xy = np.gradient(grad_y, axis=1)
    grad_yy = np.gradient(grad_y, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = grad_yy * np.sign(-grad_xy) / (grad_xx + np.float32(1e-5))
        orientation = np.nan_to_num(np.mod(np.arctan(slope), np.float32(np.pi)), nan=0.0)

    rows, cols = np.nonzero(edges)
    strength = edges[rows, cols]
    angle = orientation[rows, cols]
    cos, sin = np.cos(angle), np.sin(angle)
    x, y = cols.astype(np.float32), rows.astype(np.float32)
    kept = np.ones(rows.size, dtype=bool)
    for step in range(-radius, radius + 1):
        if step:
            neighbour = _bilinear(edges, x + np.float32(step) * cos, y + np.float32(step) * sin)
            kept &= ~(strength * np.float32(tolerance) < neighbour)
    suppressed = np.zeros_like(edges)
    suppressed[rows[kept], cols[kept]] = strength[kept]

    border = min(border, width // 2, height // 2)
    for distance in range(border):
        factor = np.float32(distance / border)
        suppressed[:, distance] *= factor
        suppressed[:, width - 1 - distance] *= factor
    for distance in range(border):
        factor = np.float32(distance / border)
        suppressed[distance, :] *= factor
        suppressed[height - 1 - distance, :] *= factor
    return suppressed


# ---------------------------------------------------------------------------------------------------------------
# One image


@dataclass(frozen=True)
class EdgeProtocol:
    """How one image is scored (see the module docstring).

    Attributes:
        max_dist: matching tolerance as a fraction of the image diagonal (0.011 NYUD-v2, 0.0075 PASCAL-Context).
        thresholds: strictly increasing; a pixel is an edge at t when its (suppressed) value is > t.
        nms: apply :func:`edge_nms` before thresholding.
        quantize: score ``floor(255 · p) / 255`` (the 8-bit PNG of the reference pipeline) instead of p.
        gt_boundary: ``"seg2bmap"`` (thin(seg2bmap(gt)), SEISM on NYUD-v2's boundary PNG) or ``"thin"`` (thin(gt)).
    """

    max_dist: float
    thresholds: tuple[float, ...] = tuple(SEISM_THRESHOLDS.tolist())
    nms: bool = True
    quantize: bool = True
    gt_boundary: str = "thin"

    def __post_init__(self):
        thresholds = np.asarray(self.thresholds, dtype=np.float64)
        if thresholds.ndim != 1 or thresholds.size == 0 or np.any(np.diff(thresholds) <= 0):
            raise ValueError("thresholds must be a non-empty, strictly increasing sequence")
        if self.gt_boundary not in ("thin", "seg2bmap"):
            raise ValueError(f"gt_boundary must be 'thin' or 'seg2bmap', got {self.gt_boundary!r}")
        if self.max_dist <= 0:
            raise ValueError(f"max_dist must be positive, got {self.max_dist}")
        object.__setattr__(self, "thresholds", tuple(thresholds.tolist()))


def _thinned_predictions(values: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Thin ``values > t`` for every threshold at once: (threshold index, flat pixel index) of the pixels left.

    The binary maps are nested, so a pixel whose value exceeds the first L thresholds (its level L) belongs to maps
    0..L-1, and its neighbour code in map k has bit j set where neighbour j's level exceeds k. All maps are laid out
    in one zero-bordered stack and thinned together.
    """
    height, width = values.shape
    row_length = width + 2
    slice_size = (height + 2) * row_length
    level_type = np.uint8 if len(thresholds) < 256 else np.uint16
    levels = np.zeros((height + 2, width + 2), dtype=level_type)
    levels[1:-1, 1:-1] = np.searchsorted(thresholds, values.astype(np.float64), side="left")
    levels = levels.ravel()
    positions = np.flatnonzero(levels)
    if positions.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    positions = positions[np.argsort(-levels[positions].astype(np.int64), kind="stable")]  # map k: a prefix
    neighbour_levels = levels[_neighbour_offsets(row_length)[:, None] + positions[None, :]]  # (8, pixels)
    per_map = np.bincount(levels[positions] - 1, minlength=len(thresholds))[::-1].cumsum()[::-1]
    starts = np.concatenate([[0], np.cumsum(per_map)])
    foreground = np.empty(starts[-1], dtype=np.int64)
    foreground_codes = np.zeros(starts[-1], dtype=np.uint8)
    for k, count in enumerate(per_map.tolist()):
        foreground[starts[k] : starts[k + 1]] = k * slice_size + positions[:count]
        code = foreground_codes[starts[k] : starts[k + 1]]
        for bit in range(8):
            code |= (neighbour_levels[bit, :count] > k).view(np.uint8) << bit
    image = np.zeros(len(thresholds) * slice_size, dtype=np.uint8)
    image[foreground] = 1
    codes = np.zeros_like(image)
    codes[foreground] = foreground_codes
    left = _thin_flat(image, codes, row_length, foreground)
    map_index, position = np.divmod(left, slice_size)
    row, col = np.divmod(position, row_length)
    return map_index, (row - 1) * width + (col - 1)


class _IncrementalMatching:
    """Maximum one-to-one matching between predicted locations (left) and ground-truth pixels (right) while the set
    of active locations changes, one boundary map after another.

    Each map starts from the previous map's matching: pairs of locations that left are dropped, new locations are
    matched greedily to free neighbours, then augmenting paths are searched from the remaining free locations by a
    breadth-first search (scipy, compiled) over the alternating graph: location → its candidate pixels, matched
    pixel → its location. One augmenting path per search tree is flipped (the trees are disjoint, so are the paths)
    and the search repeats until it reaches no free pixel. A free location from which no augmenting path exists
    stays without one when other paths are flipped or locations are added (Berge); it is skipped from then on,
    until a matched location leaves.
    """

    def __init__(self, adjacency: sparse.csr_matrix):
        self.adjacency = adjacency
        n_left, n_right = adjacency.shape
        self.match_left = np.full(n_left, -1, dtype=np.int64)
        self.match_right = np.full(n_right, -1, dtype=np.int64)
        self.exhausted = np.zeros(n_left, dtype=bool)
        self.active = np.zeros(n_left, dtype=bool)
        # Search graph over lefts 0..n_left-1, rights n_left.., and a root: rows of lefts are fixed, each right has
        # one slot (its partner, itself when free) and the root's row lists the sources of the current search.
        self.root = n_left + n_right
        self._fixed = adjacency.nnz
        self._indices = np.empty(self._fixed + n_right + n_left, dtype=np.int32)
        self._indices[: self._fixed] = adjacency.indices + n_left
        self._indptr = np.concatenate(
            [adjacency.indptr, self._fixed + np.arange(1, n_right + 1), [self._fixed + n_right]]
        ).astype(np.int32)
        self._weights = np.ones(self._indices.size)

    def set_active(self, active: np.ndarray) -> None:
        """Make exactly the lefts of bool mask ``active`` (n_left,) take part."""
        dropped = self.active & ~active
        partners = self.match_left[dropped]
        partners = partners[partners >= 0]
        if partners.size:
            self.match_right[partners] = -1
            self.exhausted[:] = False
        self.match_left[dropped] = -1
        self.active = active

    def maximise(self) -> int:
        """Grow the matching to a maximum one over the active lefts; returns its size."""
        self._match_greedily()
        while True:
            sources = np.flatnonzero(self.active & (self.match_left < 0) & ~self.exhausted)
            if sources.size == 0:
                break
            if (self.match_right >= 0).all():
                self.exhausted[sources] = True
                break
            ends, predecessors = self._search(sources)
            if ends.size == 0:
                self.exhausted[sources] = True
                break
            self._flip(ends, predecessors, sources.size)
        return int((self.match_left >= 0).sum())

    def _match_greedily(self) -> None:
        """Rounds of: each free active left proposes to its first free neighbour, each right accepts one proposal."""
        indptr, indices = self.adjacency.indptr, self.adjacency.indices
        sources = np.flatnonzero(self.active & (self.match_left < 0) & ~self.exhausted)
        while sources.size:
            degree = indptr[sources + 1] - indptr[sources]
            owner = np.repeat(sources, degree)
            edge = np.arange(owner.size) + np.repeat(indptr[sources] - (np.cumsum(degree) - degree), degree)
            right = indices[edge]
            free = self.match_right[right] < 0
            owner, right = owner[free], right[free]
            if owner.size == 0:
                return
            first = np.flatnonzero(np.concatenate([[True], owner[1:] != owner[:-1]]))
            right, accepted = np.unique(right[first], return_index=True)
            owner = owner[first][accepted]
            self.match_left[owner] = right
            self.match_right[right] = owner
            sources = sources[self.match_left[sources] < 0]

    def _search(self, sources: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Breadth-first search from ``sources``: the free rights reached and the predecessor of every node."""
        n_left, n_right = self.adjacency.shape
        slots = self._indices
        slots[self._fixed : self._fixed + n_right] = np.where(
            self.match_right >= 0, self.match_right, n_left + np.arange(n_right)
        )
        slots[self._fixed + n_right : self._fixed + n_right + sources.size] = sources
        self._indptr[-1] = self._fixed + n_right + sources.size
        size = self._indptr[-1]
        nodes = n_left + n_right + 1
        graph = sparse.csr_matrix((self._weights[:size], slots[:size], self._indptr), shape=(nodes, nodes))
        order, predecessors = breadth_first_order(graph, self.root, directed=True, return_predecessors=True)
        reached = order[(order >= n_left) & (order < n_left + n_right)] - n_left
        return reached[self.match_right[reached] < 0], predecessors

    def _flip(self, ends: np.ndarray, predecessors: np.ndarray, sources: int) -> None:
        """Augment along the search-tree paths of the free rights ``ends`` (nearest first), skipping any path that
        meets one already taken: paths reach their source through a tree, so the kept ones are disjoint. Stops
        once each of the ``sources`` trees has one."""
        n_left = self.adjacency.shape[0]
        taken: set[int] = set()
        flipped = 0
        for end in ends.tolist():
            path = []  # right, left, right, left, ..., source left
            node = end + n_left
            while node != self.root and node not in taken:
                path.append(node)
                node = int(predecessors[node])
            taken.update(path)
            if node == self.root:
                for right, left in zip(path[::2], path[1::2]):
                    self.match_left[left] = right - n_left
                    self.match_right[right - n_left] = left
                flipped += 1
                if flipped == sources:
                    return


def _match_counts(
    map_index: np.ndarray, pixel: np.ndarray, gt_pixels: np.ndarray, shape: tuple[int, int], max_dist: float, maps: int
) -> np.ndarray:
    """Matched pixels per map (maps,) of a maximum one-to-one matching between each map's predicted ``pixel``s
    (grouped by ``map_index``, increasing) and the ground-truth pixels, pairs allowed within ``max_dist`` × diagonal.
    Pixels are flat indices into ``shape``."""
    height, width = shape
    matched = np.zeros(maps, dtype=np.int64)
    if map_index.size == 0 or gt_pixels.size == 0:
        return matched
    radius = max_dist * math.hypot(height, width)
    reach = int(math.ceil(radius))
    dy, dx = np.mgrid[-reach : reach + 1, -reach : reach + 1]
    within = dy**2 + dx**2 <= radius**2
    dy, dx = dy[within], dx[within]

    # Candidate pairs (predicted location, ground-truth pixel) within the radius, found from the ground-truth side.
    locations, location_of_pair = np.unique(pixel, return_inverse=True)
    padded_width = width + 2 * reach
    location_id = np.full((height + 2 * reach) * padded_width, -1, dtype=np.int64)
    location_id[(locations // width + reach) * padded_width + locations % width + reach] = np.arange(locations.size)
    gt_padded = (gt_pixels // width + reach) * padded_width + gt_pixels % width + reach
    neighbours = location_id[gt_padded[:, None] + (dy * padded_width + dx)[None, :]]
    gt_of_edge, slot = np.nonzero(neighbours >= 0)
    location_of_edge = neighbours[gt_of_edge, slot]
    # Locations without a candidate never match: leave them out.
    near = np.zeros(locations.size, dtype=bool)
    near[location_of_edge] = True
    renumber = np.cumsum(near) - 1
    ones = np.ones(gt_of_edge.size, dtype=np.int8)
    adjacency = sparse.csr_matrix(
        (ones, (renumber[location_of_edge], gt_of_edge)), shape=(int(near.sum()), gt_pixels.size)
    )
    pair_is_near = near[location_of_pair]
    map_index, node_of_pair = map_index[pair_is_near], renumber[location_of_pair[pair_is_near]]

    matching = _IncrementalMatching(adjacency)
    bounds = np.searchsorted(map_index, np.arange(maps + 1))
    for k in reversed(range(maps)):  # fewest pixels first; lower thresholds mostly add pixels
        active = np.zeros(adjacency.shape[0], dtype=bool)
        active[node_of_pair[bounds[k] : bounds[k + 1]]] = True
        matching.set_active(active)
        matched[k] = matching.maximise()
    return matched


def edge_counts(
    probability: np.ndarray, gt_edges: np.ndarray, protocol: EdgeProtocol, ignore: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """Score one image in its unpadded size.

    Args:
        probability: edge probability (H, W) in [0, 1].
        gt_edges: ground-truth boundary pixels, bool (H, W).
        protocol: see :class:`EdgeProtocol`.
        ignore: optional bool (H, W); predicted boundary pixels there are dropped, ground truth there is empty.

    Returns:
        ``matched`` (T,) and ``predicted`` (T,) pixel counts per threshold, and the number of ground-truth boundary
        pixels. Recall = matched / ground truth, precision = matched / predicted.
    """
    thresholds = np.asarray(protocol.thresholds)
    values = np.clip(np.asarray(probability, dtype=np.float32), 0, 1)
    if protocol.quantize:
        values = np.floor(values * np.float32(255)).astype(np.float32) / np.float32(255)
    if protocol.nms:
        values = edge_nms(values)
    gt_edges = np.asarray(gt_edges, dtype=bool)
    if ignore is not None:
        gt_edges = gt_edges & ~ignore
    boundary = thin(seg2bmap(gt_edges) if protocol.gt_boundary == "seg2bmap" else gt_edges)
    if ignore is not None:
        boundary &= ~ignore

    map_index, pixel = _thinned_predictions(values, thresholds)
    if ignore is not None:
        keep = ~ignore.ravel()[pixel]
        map_index, pixel = map_index[keep], pixel[keep]
    predicted = np.bincount(map_index, minlength=len(thresholds)).astype(np.int64)
    gt_pixels = np.flatnonzero(boundary)
    matched = _match_counts(map_index, pixel, gt_pixels, values.shape, protocol.max_dist, len(thresholds))
    return matched, predicted, int(gt_pixels.size)


# ---------------------------------------------------------------------------------------------------------------
# Precision / recall conventions of SEISM


def _image_precision_recall(matched, predicted, gt) -> tuple[np.ndarray, np.ndarray]:
    """SEISM ``eval_cont`` / ``general_ois``: no ground truth → (P, R) = (0, 1); else no prediction → (1, 0)."""
    matched, predicted, gt = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (matched, predicted, gt)))
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, matched / predicted, 1.0)
        recall = np.where(predicted > 0, matched / gt, 0.0)
    no_gt = gt == 0
    return np.where(no_gt, 0.0, precision), np.where(no_gt, 1.0, recall)


def _pooled_precision_recall(matched, predicted, gt) -> tuple[np.ndarray, np.ndarray]:
    """SEISM ``gather_measure``: as :func:`_image_precision_recall`, but an empty prediction wins → (1, 0)."""
    precision, recall = _image_precision_recall(matched, predicted, gt)
    no_prediction = np.asarray(predicted) == 0
    return np.where(no_prediction, 1.0, precision), np.where(no_prediction, 0.0, recall)


def _f_measure(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    total = precision + recall
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, 2 * precision * recall / total, 0.0)


def _average_precision(precision: np.ndarray, recall: np.ndarray) -> float:
    """SEISM ``general_ap``: linear interpolation of precision over distinct recalls (first threshold reaching each)
    at recall 0, 0.01, ..., 1 within the recall range, summed and divided by 100 (so a perfect curve gives 1.01)."""
    distinct, first = np.unique(recall, return_index=True)
    if distinct.size < 2:
        return 0.0
    steps = np.arange(101)
    grid = np.where(steps <= 50, steps * 0.01, 1 - (100 - steps) * 0.01)  # 0:.01:1 as MATLAB, from both ends
    grid = grid[(grid >= distinct[0]) & (grid <= distinct[-1])]
    return float(np.interp(grid, distinct, precision[first]).sum() / 100)


# ---------------------------------------------------------------------------------------------------------------
# Meter


def _score_image(job: tuple) -> tuple[np.ndarray, np.ndarray, int]:
    """Worker entry point: ``edge_counts`` of a pickled (probability, gt_edges, ignore, protocol)."""
    probability, gt_edges, ignore, protocol = job
    return edge_counts(probability, gt_edges, protocol, ignore)


def default_edge_workers(images: int, processes_on_this_machine: int = 1) -> int:
    """Processes to score ``images`` boundary maps with when ``eval.edge_workers`` is -1 (automatic).

    One per CPU core this process may use (its share of the cores available to it when ``processes_on_this_machine``
    processes evaluate at once, e.g. torchrun's ``LOCAL_WORLD_SIZE``), less one for the process itself, at most 8
    and at most one per 8 images; 0 (score in this process) when that leaves fewer than 2, or when the program is a
    script that would run again in each spawned worker (see :func:`_workers_can_start`). A 512 x 512 map of an
    untrained model takes seconds to score (101 thresholds, each thinned and matched), so a PASCAL-Context val split
    (5,105 images) scored in one process takes hours; a pool's start (about a second per worker) pays off from a
    few images each."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = min(cores // max(processes_on_this_machine, 1) - 1, 8, images // 8)
    return workers if workers >= 2 and _workers_can_start() else 0


def _workers_can_start() -> bool:
    """Whether spawned workers start without running a user's program again. A spawned worker imports the parent's
    ``__main__``: harmless for ``python -m ...`` (``torchrun -m pamm``, pytest), interactive sessions and scripts
    whose top level only imports and defines things and runs under ``if __name__ == "__main__":`` (the ``pamm``
    console script is one); anything else (a script that trains at its top level) would run again in every worker."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or getattr(main, "__spec__", None) is not None or not path:
        return True
    try:
        with open(path, "rb") as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, ValueError):
        return False
    return all(_inert(statement) for statement in tree.body)


def _inert(statement: ast.stmt) -> bool:
    """A top-level statement that does nothing but import, define or name things, or the ``__main__`` guard."""
    if isinstance(statement, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return True
    if isinstance(statement, ast.Expr):  # a docstring
        return isinstance(statement.value, ast.Constant)
    if isinstance(statement, (ast.Assign, ast.AnnAssign)):
        return statement.value is None or not any(isinstance(n, ast.Call) for n in ast.walk(statement.value))
    if isinstance(statement, ast.If):
        test = statement.test
        return (
            isinstance(test, ast.Compare)
            and isinstance(test.left, ast.Name)
            and test.left.id == "__name__"
            and len(test.comparators) == 1
            and isinstance(test.comparators[0], ast.Constant)
            and test.comparators[0].value == "__main__"
        )
    return False


class EdgeMeter:
    """odsF / oisF / AP of boundary predictions by the SEISM protocol (module docstring).

    Args:
        max_dist: matching tolerance as a fraction of the image diagonal (``DatasetSpec.edge_max_dist``).
        thresholds: strictly increasing thresholds (default :data:`SEISM_THRESHOLDS`; :data:`BSDS_THRESHOLDS` is
            the other common choice).
        nms, quantize, gt_boundary: see :class:`EdgeProtocol`.
        workers: score images in that many processes (0 or 1: in this one). The pool starts on first use and is
            shut down by :meth:`close` (or when the meter is garbage collected). Its processes are spawned, so a
            script using it must guard its entry point with ``if __name__ == "__main__":``.
        ignore_index: target value of pixels outside the image (padding) or not annotated.

    ``update(pred, target, valid=None)``: ``pred`` edge probability (b, H, W) or (b, 1, H, W); ``target``
    (b, 1, H, W) or (b, H, W) in {0, 1, ignore_index}; ``valid`` optional bool (b, H, W). Each image is scored in the
    bounding box of its scored pixels (the unpadded image); scored pixels are those whose target is not
    ``ignore_index`` (and within ``valid``).

    ``compute()`` → ``odsF``, ``oisF``, ``AP`` (%; SEISM's AP formula reaches 101 for a perfect curve),
    ``ods_threshold``, ``ods_precision``, ``ods_recall``,
    ``ois_precision``, ``ois_recall`` (%), ``thresholds``, ``precision``, ``recall``, ``F`` (lists, % per
    threshold), ``images``.
    """

    def __init__(
        self,
        max_dist: float,
        *,
        thresholds: Sequence[float] = tuple(SEISM_THRESHOLDS.tolist()),
        nms: bool = True,
        quantize: bool = True,
        gt_boundary: str = "thin",
        workers: int = 0,
        ignore_index: int = IGNORE_INDEX,
    ):
        self.protocol = EdgeProtocol(max_dist, tuple(thresholds), nms, quantize, gt_boundary)
        self.workers = workers
        self.ignore_index = ignore_index
        self._pool: multiprocessing.pool.Pool | None = None
        self._pending: list = []
        self.reset()

    def reset(self) -> None:
        for result in self._pending:
            result.wait()
        self._pending = []
        count = len(self.protocol.thresholds)
        self._state = {
            "matched": np.zeros(count, dtype=np.int64),
            "predicted": np.zeros(count, dtype=np.int64),
            "gt_pixels": np.zeros(1, dtype=np.int64),
            "ois_counts": np.zeros(3, dtype=np.int64),
            "images": np.zeros(1, dtype=np.int64),
        }

    def _get_pool(self):
        if self._pool is None:
            pool = multiprocessing.get_context("spawn").Pool(self.workers)
            weakref.finalize(self, pool.terminate)
            self._pool = pool
        return self._pool

    def close(self) -> None:
        """Finish pending images and shut the worker pool down (a later update starts a new one)."""
        self._collect()
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None

    def update(self, pred, target, valid=None) -> None:
        pred, target, scored = prepare_batch(pred, target, valid, ignore_index=self.ignore_index)
        for probability, labels, region in zip(pred, target, scored):
            rows = np.flatnonzero(region.any(1))
            cols = np.flatnonzero(region.any(0))
            if rows.size < 2 or cols.size < 2:
                continue
            box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
            ignore = ~region[box]
            job = (
                np.asarray(probability[box], dtype=np.float32),
                labels[box] == 1,
                ignore if ignore.any() else None,
                self.protocol,
            )
            if self.workers > 1:
                self._pending.append(self._get_pool().apply_async(_score_image, (job,)))
            else:
                self._add_image(*_score_image(job))

    def _add_image(self, matched: np.ndarray, predicted: np.ndarray, gt_pixels: int) -> None:
        self._state["matched"] += matched
        self._state["predicted"] += predicted
        self._state["gt_pixels"] += gt_pixels
        self._state["images"] += 1
        # OIS: the image's best threshold by its own F, written by SEISM with 6 decimals (ties → first threshold).
        f_measure = np.round(_f_measure(*_image_precision_recall(matched, predicted, gt_pixels)), 6)
        best = int(np.argmax(f_measure))
        self._state["ois_counts"] += [matched[best], predicted[best], gt_pixels]

    def _collect(self) -> None:
        pending, self._pending = self._pending, []
        for result in pending:
            self._add_image(*result.get())

    def state(self) -> dict[str, np.ndarray]:
        """int64 counts: ``matched`` / ``predicted`` (T,) per threshold, ``gt_pixels`` (1,), ``images`` (1,),
        ``ois_counts`` (3,) = matched, predicted, ground-truth pixels at each image's best threshold."""
        self._collect()
        return {key: value.copy() for key, value in self._state.items()}

    def merge_state(self, state: dict[str, np.ndarray]) -> None:
        self._collect()
        add_states(self._state, state)

    def compute(self) -> dict[str, float | list]:
        self._collect()
        matched = self._state["matched"]
        predicted = self._state["predicted"]
        gt_pixels = self._state["gt_pixels"][0]
        precision, recall = _pooled_precision_recall(matched, predicted, gt_pixels)
        f_measure = _f_measure(precision, recall)
        best = int(np.argmax(f_measure))
        ois_precision, ois_recall = _image_precision_recall(*self._state["ois_counts"])
        return {
            "odsF": float(f_measure[best] * 100),
            "oisF": float(_f_measure(ois_precision, ois_recall) * 100),
            "AP": _average_precision(precision, recall) * 100,
            "ods_threshold": self.protocol.thresholds[best],
            "ods_precision": float(precision[best] * 100),
            "ods_recall": float(recall[best] * 100),
            "ois_precision": float(ois_precision * 100),
            "ois_recall": float(ois_recall * 100),
            "thresholds": list(self.protocol.thresholds),
            "precision": (precision * 100).tolist(),
            "recall": (recall * 100).tolist(),
            "F": (f_measure * 100).tolist(),
            "images": int(self._state["images"][0]),
        }
