"""Ray-castable primitives: boxes (rotated about the vertical), spheres, vertical capped cylinders and capsules.

Primitives work on rays given as a shared origin ``o`` (3,) and direction components ``dx, dy, dz`` (arrays of any
one shape, unit length, world frame). ``intersect`` returns the ray length ``t`` of the first hit seen from outside
(inf = miss); ``bounds`` the world axis-aligned bounding box. Normals and texture frames of hit points are computed
per primitive type, vectorised over pixels, by the renderer (:mod:`pamm.data.synth.render`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Prim", "Box", "Sphere", "Cylinder", "Capsule", "yaw_matrix"]

_EPS = 1e-6


@dataclass
class Prim:
    """Base of the ray-castable primitives.

    Attributes:
        instance: index into the scene's instance list.
        material: index into the scene's material list.
        part: index into :data:`~pamm.data.synth.vocabulary.FINE_PART_NAMES` (0 = none).
    """

    instance: int
    material: int
    part: int = 0

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """World axis-aligned bounding box (lo (3,), hi (3,))."""
        raise NotImplementedError

    def intersect(self, o: np.ndarray, dx: np.ndarray, dy: np.ndarray, dz: np.ndarray) -> np.ndarray:
        """Ray length (same shape as ``dx``) of the first hit, inf where the ray misses."""
        raise NotImplementedError


def yaw_matrix(yaw: float) -> np.ndarray:
    """Rotation about world y by ``yaw`` radians (maps local +z to (sin yaw, 0, cos yaw))."""
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _sphere_t(o: np.ndarray, center: np.ndarray, radius: float, dx, dy, dz) -> np.ndarray:
    oc = o - center
    b = dx * oc[0] + dy * oc[1] + dz * oc[2]
    h = b * b - (oc @ oc - radius * radius)
    t = -b - np.sqrt(np.maximum(h, 0.0))
    return np.where((h >= 0) & (t > _EPS), t, np.inf)


@dataclass
class Box(Prim):
    """Box with centre ``center`` (3,), half extents ``half`` (3,), rotated by ``yaw`` about the vertical axis."""

    center: np.ndarray = field(default_factory=lambda: np.zeros(3))
    half: np.ndarray = field(default_factory=lambda: np.ones(3))
    yaw: float = 0.0

    def __post_init__(self) -> None:
        self.rot = yaw_matrix(self.yaw)

    def bounds(self):
        ext = np.abs(self.rot) @ self.half
        return self.center - ext, self.center + ext

    def intersect(self, o, dx, dy, dz):
        o_local = (o - self.center) @ self.rot
        if self.yaw == 0.0:
            ux, uz = dx, dz
        else:
            c, s = self.rot[0, 0], self.rot[0, 2]
            ux, uz = c * dx - s * dz, s * dx + c * dz
        t_near, t_far = -np.inf, np.inf
        for d, oc, h in zip((ux, dy, uz), o_local, self.half):
            inv = 1.0 / d
            t1, t2 = (-h - oc) * inv, (h - oc) * inv
            t_near = np.maximum(t_near, np.minimum(t1, t2))
            t_far = np.minimum(t_far, np.maximum(t1, t2))
        return np.where((t_near <= t_far) & (t_near > _EPS), t_near, np.inf)


@dataclass
class Sphere(Prim):
    center: np.ndarray = field(default_factory=lambda: np.zeros(3))
    radius: float = 1.0

    def bounds(self):
        return self.center - self.radius, self.center + self.radius

    def intersect(self, o, dx, dy, dz):
        return _sphere_t(o, self.center, self.radius, dx, dy, dz)


@dataclass
class Cylinder(Prim):
    """Vertical capped cylinder: axis through (x, z) = ``base[0], base[2]``, from y = ``base[1]`` to ``top``."""

    base: np.ndarray = field(default_factory=lambda: np.zeros(3))
    top: float = 1.0
    radius: float = 1.0

    def bounds(self):
        r = self.radius
        return (np.array([self.base[0] - r, self.base[1], self.base[2] - r]),
                np.array([self.base[0] + r, self.top, self.base[2] + r]))  # fmt: skip

    def intersect(self, o, dx, dy, dz):
        ox, oz = o[0] - self.base[0], o[2] - self.base[2]
        a = dx * dx + dz * dz
        b = ox * dx + oz * dz
        h = b * b - a * (ox * ox + oz * oz - self.radius**2)
        t_side = (-b - np.sqrt(np.maximum(h, 0.0))) / np.maximum(a, 1e-12)
        y_side = o[1] + t_side * dy
        t = np.where((h >= 0) & (a > 1e-12) & (y_side >= self.base[1]) & (y_side <= self.top) & (t_side > _EPS),
                     t_side, np.inf)  # fmt: skip
        cap_y = self.top if o[1] > self.top else self.base[1] if o[1] < self.base[1] else None
        if cap_y is not None:
            t_cap = (cap_y - o[1]) / dy
            px, pz = ox + t_cap * dx, oz + t_cap * dz
            t = np.where((t_cap > _EPS) & (px * px + pz * pz <= self.radius**2) & (t_cap < t), t_cap, t)
        return t


@dataclass
class Capsule(Prim):
    """Segment ``a`` -> ``b`` (3,) swept by a sphere of ``radius``: limbs, torso and neck of people."""

    a: np.ndarray = field(default_factory=lambda: np.zeros(3))
    b: np.ndarray = field(default_factory=lambda: np.ones(3))
    radius: float = 0.1

    def bounds(self):
        return np.minimum(self.a, self.b) - self.radius, np.maximum(self.a, self.b) + self.radius

    def intersect(self, o, dx, dy, dz):
        # The first hit of a union of convex pieces seen from outside is the nearest of the pieces' first hits:
        # the lateral surface of the finite cylinder and the two end spheres.
        ba, oa = self.b - self.a, o - self.a
        baba, baoa = ba @ ba, ba @ oa
        bard = dx * ba[0] + dy * ba[1] + dz * ba[2]
        rdoa = dx * oa[0] + dy * oa[1] + dz * oa[2]
        qa = baba - bard * bard
        qb = baba * rdoa - baoa * bard
        h = qb * qb - qa * (baba * (oa @ oa) - baoa * baoa - self.radius**2 * baba)
        t_body = (-qb - np.sqrt(np.maximum(h, 0.0))) / np.maximum(qa, 1e-12)
        y = baoa + t_body * bard
        t = np.where((h >= 0) & (qa > 1e-12) & (y > 0) & (y < baba) & (t_body > _EPS), t_body, np.inf)
        t = np.minimum(t, _sphere_t(o, self.a, self.radius, dx, dy, dz))
        return np.minimum(t, _sphere_t(o, self.b, self.radius, dx, dy, dz))
