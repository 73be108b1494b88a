"""Procedural surface textures: what a material is, and its albedo at the points the camera sees.

Patterns: ``plain``, ``checker``, ``stripes``, ``wood``, ``tiles`` and ``canvas`` (a random "painting"), each in two
colours of a material, plus a soft, low-frequency brightness variation per scene.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Material", "PATTERNS", "hsv_to_rgb", "surface_albedo"]

PATTERNS = ("plain", "checker", "stripes", "wood", "tiles", "canvas")
"""The texture patterns a :class:`Material` can have."""


@dataclass
class Material:
    """A procedural surface texture.

    Attributes:
        pattern: ``plain``, ``checker``, ``stripes``, ``wood``, ``tiles`` or ``canvas`` (random picture).
        colour_a, colour_b: linear RGB in [0, 1], shape (3,).
        scale: pattern period in metres.
        angle: stripe direction in radians.
        emission: fraction of the albedo shown regardless of lighting (windows, screens, lamp shades).
        phase: phase offset (radians) of the scene's low-frequency brightness waves on this material.
    """

    pattern: str
    colour_a: np.ndarray
    colour_b: np.ndarray
    scale: float
    angle: float
    emission: float
    phase: float


def hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    """HSV in [0, 1] (sRGB-encoded) -> linear RGB (3,) (gamma 2.2)."""
    i = int(h * 6.0) % 6
    f = h * 6.0 - math.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb) ** 2.2  # to linear


def surface_albedo(materials: Sequence[Material], material: np.ndarray, local: np.ndarray, local_normals: np.ndarray,
                   points: np.ndarray, waves: np.ndarray) -> np.ndarray:  # fmt: skip
    """Albedo (3, N) float32 of per-pixel ``material`` (N,) indices at texture-frame points/normals (3, N).

    Texture coordinates (u, v) are the two local axes across the dominant axis of the local normal (metres).
    ``points`` (3, N) world positions and the scene's ``waves`` (3, 4: wave vectors, phases) add a soft brightness
    variation.
    """
    # per-material tables with the material axis last, so that gathers give C-ordered (3, n) arrays
    colour_a = np.array([m.colour_a for m in materials], dtype=np.float32).T.copy()
    colour_b = np.array([m.colour_b for m in materials], dtype=np.float32).T.copy()
    scale = np.array([m.scale for m in materials], dtype=np.float32)
    angle = np.array([m.angle for m in materials], dtype=np.float32)
    phase = np.array([m.phase for m in materials], dtype=np.float32)
    pattern = np.array([PATTERNS.index(m.pattern) for m in materials])[material]

    local = local.astype(np.float32)
    ax, ay, az = np.abs(local_normals)
    along_x = (ax >= ay) & (ax >= az)
    along_y = ~along_x & (ay >= az)
    inv_scale = 1.0 / scale[material]
    u = np.where(along_x, local[2], local[0]) * inv_scale
    v = np.where(along_y, local[2], local[1]) * inv_scale
    albedo = np.empty(local.shape, dtype=np.float32)
    for code in np.flatnonzero(np.bincount(pattern, minlength=len(PATTERNS))).tolist():
        sel = np.flatnonzero(pattern == code)
        mat = material[sel]
        a, b, su, sv = colour_a[:, mat], colour_b[:, mat], u[sel], v[sel]
        name = PATTERNS[code]
        if name == "tiles":
            grout = (su - np.floor(su) < 0.05) | (sv - np.floor(sv) < 0.05)
            shade = 0.85 + 0.15 * np.sin(12.9898 * np.floor(su) + 78.233 * np.floor(sv)) ** 2
            albedo[:, sel] = np.where(grout, b, a * shade)
            continue
        if name == "canvas":  # a "painting": a few broad colour bands
            band = np.floor((0.5 + 0.5 * np.sin(su * 1.3 + 2 * np.sin(sv * 0.9 + angle[mat]))) * 3) / 2
            albedo[:, sel] = (a * (1 - band) + b[::-1] * band) * 0.7 + 0.1
            continue
        if name == "checker":  # (float % 2 is slow in NumPy: take the parity of the integer instead)
            mix = ((np.floor(su) + np.floor(sv)).astype(np.int64) & 1).astype(np.float32)
        elif name == "stripes":
            mix = (np.floor(su * np.cos(angle[mat]) + sv * np.sin(angle[mat])).astype(np.int64) & 1).astype(np.float32)
        elif name == "wood":
            mix = (0.5 + 0.5 * np.sin(np.float32(2 * np.pi) * (su + 0.35 * np.sin(1.7 * sv)))) ** 3
        else:
            mix = np.zeros_like(su)
        albedo[:, sel] = a + (b - a) * mix
    # low-frequency brightness variation: mean of 3 plane waves in world space, shifted per material
    variation = np.sin(waves[:, :3].astype(np.float32) @ points.astype(np.float32) + phase[material])
    albedo *= 1.0 + (0.08 / 3) * variation.sum(0)
    return albedo
