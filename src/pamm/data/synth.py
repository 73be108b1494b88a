"""Procedural indoor scenes written in the exact NYUDv2 and PASCAL-Context (ATRC / MTI-Net) file layouts.

Real NYUD-v2 and PASCAL-Context data cannot be downloaded everywhere, so this module renders small synthetic
datasets whose files have exactly the names, image modes, dtypes, value encodings and ``.mat`` structures of
the real ones. The real loaders read them through the same code path they use for real data.

Scenes are rendered by vectorised ray casting in NumPy: a pinhole camera with a random pose and field of view
stands inside a box-shaped room (floor, ceiling, four walls with doors, windows and pictures) furnished with
objects built from boxes, spheres, vertical cylinders and capsules (cabinets, beds, chairs, sofas, tables,
lamps; for PASCAL also TV monitors, potted plants, bottles and articulated people). Surfaces carry procedural
textures (plain, checker, stripes, wood, tiles) in per-scene random colours and are lit by a couple of point
lights plus ambient light (Lambertian, no shadows). The ray caster gives exact ground truth.

Conventions (shared by :func:`render_scene` and the files written by :func:`synthesize`):

* World frame: metres, y up, the room spans ``[0, width] x [0, height] x [0, depth]``.
* Camera (``meta["camera"]``): OpenGL-style frame, x to the right of the image, y up, z towards the viewer; the
  optical axis is -z. Pixel (row i, column j) looks along ``((j + 0.5 - W/2) / f, -(i + 0.5 - H/2) / f, -1)``.
* Depth: z-depth along the optical axis in metres (not the ray length); every pixel hits a surface, so
  depth is always > 0.
* Normals: unit vectors oriented towards the camera, in the colouring frame described for NYU-Depth-v2 normal
  maps (red = right, green = down, blue = towards the camera): x right, y down the image, z towards the viewer,
  i.e. the camera frame above with y negated. A surface facing the camera is (0, 0, 1); the floor seen from a
  level camera is (0, -1, 0). Horizontal image flips negate x, as the training transforms assume. Files store
  ``round((n + 1) * 127.5)`` so that ``2 * png / 255 - 1`` decodes them.

Typical use::

    summary = synthesize(Path("data"), "nyud", n_train=200, n_val=50, size=(192, 256), seed=0)
    # -> data/NYUDv2/{gt_sets,images,depth,segmentation,normals,edge}/...
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import struct
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pamm.tasks import NYUD_CLASSES, PASCAL_CLASSES

__all__ = [
    "LAYOUTS",
    "DATASET_FOLDERS",
    "FINE_PART_NAMES",
    "HUMAN_PART_GROUP",
    "MARKER_FILE",
    "NYUD_KINDS",
    "SynthOutputExistsError",
    "image_id",
    "scene_rng",
    "parse_size",
    "render_scene",
    "synthesize",
    "contact_sheet",
]

LAYOUTS = ("nyud", "pascal")
"""Dataset layouts :func:`synthesize` can write."""

DATASET_FOLDERS = {"nyud": "NYUDv2", "pascal": "PASCALContext"}
"""Name of the dataset folder created under ``out`` for each layout (the names the authors' configs use)."""

MARKER_FILE = "pamm_synth.json"
"""File in the dataset folder that marks it as written by this module (and so safe to regenerate)."""

SPLITS = ("train", "val")
MIN_SIDE, MAX_SIDE = 32, 4096
_EPS = 1e-6
_FORMAT_VERSION = 1


# ----------------------------------------------------------------------------------------------------------
# Label spaces
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Kind:
    """What an instance is, in every label space the layouts use.

    Attributes:
        name: short name used inside this module.
        nyud: 0-based NYUD-40 class (files store ``nyud + 1``).
        voc: PASCAL VOC class, 0 = background.
        context: PASCAL-Context label (1..459, ids of ``context_classes.json``) written to ``LabelMap``.
        salient: whether the saliency map marks it (free-standing objects and people).
    """

    name: str
    nyud: int
    voc: int
    context: int
    salient: bool


def _kind(name: str, nyud_name: str, voc_name: str, context: int, salient: bool) -> _Kind:
    return _Kind(name, NYUD_CLASSES.index(nyud_name), PASCAL_CLASSES.index(voc_name), context, salient)


# Context ids are those of PASCAL-Context's 459-label list; the VOC objects use the labels the real loader maps
# VOC classes to (chair 72, table 397, sofa 368, tvmonitor 427, pottedplant 308, bottle 34, person 284).
KINDS: dict[str, _Kind] = {
    k.name: k
    for k in (
        _kind("wall", "wall", "background", 440, False),
        _kind("floor", "floor", "background", 158, False),
        _kind("ceiling", "ceiling", "background", 68, False),
        _kind("cabinet", "cabinet", "background", 46, True),
        _kind("bed", "bed", "background", 18, True),
        _kind("chair", "chair", "chair", 72, True),
        _kind("sofa", "sofa", "sofa", 368, True),
        _kind("table", "table", "diningtable", 397, True),
        _kind("door", "door", "background", 115, False),
        _kind("window", "window", "background", 454, False),
        _kind("picture", "picture", "background", 287, False),
        _kind("lamp", "lamp", "background", 232, True),  # context "light"
        _kind("tvmonitor", "television", "tvmonitor", 427, True),
        _kind("pottedplant", "otherprop", "pottedplant", 308, True),
        _kind("bottle", "otherprop", "bottle", 34, True),
        _kind("person", "person", "person", 284, True),
    )
}
NYUD_KINDS = ("wall", "floor", "ceiling", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "picture",
              "lamp")  # fmt: skip
"""The 12 kinds NYUD-layout scenes use (a small class set that small models can learn)."""

FINE_PART_NAMES = (
    "", "head", "neck", "torso", "luarm", "ruarm", "llarm", "rlarm", "lhand", "rhand",
    "luleg", "ruleg", "llleg", "rlleg", "lfoot", "rfoot", "pot", "plant", "screen",
)  # fmt: skip
"""Part names of the PASCAL-Part annotation written to ``human_parts/<id>.mat`` (index 0 = no part)."""

HUMAN_PART_GROUP = {
    "head": 1, "neck": 2, "torso": 2, "luarm": 3, "ruarm": 3, "llarm": 4, "rlarm": 4, "lhand": 4, "rhand": 4,
    "luleg": 5, "ruleg": 5, "llleg": 6, "rlleg": 6, "lfoot": 6, "rfoot": 6,
}  # fmt: skip
"""Person part name -> the 6-part label (1 head, 2 torso, 3 upper arm, 4 lower arm, 5 upper leg, 6 lower leg), the
grouping the PASCAL-Context multi-task loaders use."""

_PART_CODE = {name: i for i, name in enumerate(FINE_PART_NAMES)}
_GROUP_OF_CODE = np.array([HUMAN_PART_GROUP.get(n, 0) for n in FINE_PART_NAMES], dtype=np.uint8)


# ----------------------------------------------------------------------------------------------------------
# Materials and primitives
# ----------------------------------------------------------------------------------------------------------


@dataclass
class _Material:
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


# Primitives work on rays given as a shared origin ``o`` (3,) and direction components ``dx, dy, dz`` (arrays of
# any one shape, unit length, world frame). ``intersect`` returns the ray length ``t`` of the first hit seen from
# outside (inf = miss). Normals and texture frames of hit points are computed per primitive type in ``_surface``.


@dataclass
class _Prim:
    """Base of the ray-castable primitives.

    Attributes:
        instance: index into the scene's instance list.
        material: index into the scene's material list.
        part: index into :data:`FINE_PART_NAMES` (0 = none).
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


def _yaw_matrix(yaw: float) -> np.ndarray:
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
class _Box(_Prim):
    """Box with centre ``center`` (3,), half extents ``half`` (3,), rotated by ``yaw`` about the vertical axis."""

    center: np.ndarray = field(default_factory=lambda: np.zeros(3))
    half: np.ndarray = field(default_factory=lambda: np.ones(3))
    yaw: float = 0.0

    def __post_init__(self) -> None:
        self.rot = _yaw_matrix(self.yaw)

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
class _Sphere(_Prim):
    center: np.ndarray = field(default_factory=lambda: np.zeros(3))
    radius: float = 1.0

    def bounds(self):
        return self.center - self.radius, self.center + self.radius

    def intersect(self, o, dx, dy, dz):
        return _sphere_t(o, self.center, self.radius, dx, dy, dz)


@dataclass
class _Cylinder(_Prim):
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
class _Capsule(_Prim):
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


# ----------------------------------------------------------------------------------------------------------
# Scene description
# ----------------------------------------------------------------------------------------------------------


@dataclass
class _Camera:
    """Pinhole camera. ``rotation`` (3, 3) maps camera-frame vectors to world (columns = camera axes)."""

    height: int
    width: int
    focal: float
    position: np.ndarray
    rotation: np.ndarray

    def directions(self) -> np.ndarray:
        """Camera-frame ray directions (3, H, W) with z = -1 (so the ray parameter is the z-depth)."""
        j = (np.arange(self.width) + 0.5 - self.width / 2) / self.focal
        i = (np.arange(self.height) + 0.5 - self.height / 2) / self.focal
        d = np.empty((3, self.height, self.width))
        d[0] = j[None, :]
        d[1] = -i[:, None]
        d[2] = -1.0
        return d

    def intrinsics(self) -> np.ndarray:
        """3x3 K such that (u, v) = K[:2] @ (x, -y, -z) / -z, pixel centres at integer + 0.5."""
        return np.array([[self.focal, 0, self.width / 2], [0, self.focal, self.height / 2], [0, 0, 1.0]])


@dataclass
class _Scene:
    """Everything :func:`_cast` and :func:`_shade` need.

    ``instances`` holds the kind of each instance; instances 0..5 are the room surfaces (walls x=0, x=W, z=0,
    z=D, floor, ceiling), whose materials are ``room_materials``.
    """

    room: np.ndarray  # (3,) width, height, depth in metres
    camera: _Camera
    prims: list[_Prim]
    instances: list[_Kind]
    materials: list[_Material]
    room_materials: list[int]
    lights: list[tuple[np.ndarray, np.ndarray]]  # (position (3,), rgb intensity (3,))
    ambient: float
    waves: np.ndarray  # (3, 4) wave vectors (1/m) and phases of a low-frequency brightness variation


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6.0) % 6
    f = h * 6.0 - math.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb) ** 2.2  # to linear


class _SceneBuilder:
    """Collects instances, materials and primitives while a scene is being assembled."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.prims: list[_Prim] = []
        self.instances: list[_Kind] = []
        self.materials: list[_Material] = []

    def colour(self, sat=(0.0, 0.9), val=(0.15, 0.95), hue=(0.0, 1.0)) -> np.ndarray:
        r = self.rng
        return _hsv_to_rgb(r.uniform(*hue) % 1.0, r.uniform(*sat), r.uniform(*val))

    def material(self, patterns: Sequence[str], colour_a=None, colour_b=None, scale=(0.1, 0.5), emission=0.0,
                 **colour_kw) -> int:  # fmt: skip
        r = self.rng
        a = self.colour(**colour_kw) if colour_a is None else colour_a
        if colour_b is None:
            # A second colour of similar hue but different brightness keeps patterns visible but not dominant.
            b = np.clip(a * r.uniform(0.55, 0.85) + r.uniform(0.0, 0.06, 3), 0.0, 1.0)
        else:
            b = colour_b
        pattern, scale_m, angle = str(r.choice(list(patterns))), float(r.uniform(*scale)), float(r.uniform(0, np.pi))
        self.materials.append(_Material(pattern, a, b, scale_m, angle, emission, float(r.uniform(0, 2 * np.pi))))
        return len(self.materials) - 1

    def instance(self, kind: str) -> int:
        self.instances.append(KINDS[kind])
        return len(self.instances) - 1

    def box(self, inst, mat, center, size, yaw=0.0, part="") -> None:
        self.prims.append(_Box(inst, mat, _PART_CODE[part], np.asarray(center, float), np.asarray(size, float) / 2,
                               float(yaw)))  # fmt: skip

    def sphere(self, inst, mat, center, radius, part="") -> None:
        self.prims.append(_Sphere(inst, mat, _PART_CODE[part], np.asarray(center, float), float(radius)))

    def cylinder(self, inst, mat, base, top, radius, part="") -> None:
        self.prims.append(_Cylinder(inst, mat, _PART_CODE[part], np.asarray(base, float), float(top), float(radius)))

    def capsule(self, inst, mat, a, b, radius, part="") -> None:
        self.prims.append(_Capsule(inst, mat, _PART_CODE[part], np.asarray(a, float), np.asarray(b, float),
                                   float(radius)))  # fmt: skip


class _Placer:
    """Keeps object footprints (axis-aligned rectangles on the floor) from overlapping each other and the camera."""

    def __init__(self, room: np.ndarray, camera_xz: np.ndarray, forward_xz: np.ndarray, hfov: float) -> None:
        self.width, self.depth = float(room[0]), float(room[2])
        self.camera_xz, self.forward_xz, self.hfov = camera_xz, forward_xz, hfov
        self.taken: list[tuple[float, float, float, float]] = []
        cx, cz = camera_xz
        self.camera_box = (cx - 0.75, cx + 0.75, cz - 0.75, cz + 0.75)

    @staticmethod
    def footprint(xz, size_xz, yaw) -> tuple[float, float, float, float]:
        c, s = abs(math.cos(yaw)), abs(math.sin(yaw))
        hx = c * size_xz[0] / 2 + s * size_xz[1] / 2
        hz = s * size_xz[0] / 2 + c * size_xz[1] / 2
        return (xz[0] - hx, xz[0] + hx, xz[1] - hz, xz[1] + hz)

    def fits(self, box, margin=0.08) -> bool:
        x0, x1, z0, z1 = box
        if x0 < 0.01 or z0 < 0.01 or x1 > self.width - 0.01 or z1 > self.depth - 0.01:
            return False
        return all(x1 + margin <= a0 or a1 + margin <= x0 or z1 + margin <= b0 or b1 + margin <= z0
                   for a0, a1, b0, b1 in [*self.taken, self.camera_box])  # fmt: skip

    def free_spot(self, rng, size_xz, dist=(1.4, 4.5), yaw=None, tries=30):
        """A centre (x, z) and yaw for a free-standing object, preferably inside the camera's view."""
        base_angle = math.atan2(self.forward_xz[1], self.forward_xz[0])
        for attempt in range(tries):
            y = rng.uniform(0, 2 * np.pi) if yaw is None else yaw
            if attempt < tries * 2 // 3:
                ang = base_angle + rng.uniform(-0.4, 0.4) * self.hfov
                d = rng.uniform(*dist)
                xz = self.camera_xz + d * np.array([math.cos(ang), math.sin(ang)])
            else:
                xz = np.array([rng.uniform(0, self.width), rng.uniform(0, self.depth)])
            box = self.footprint(xz, size_xz, y)
            if self.fits(box):
                self.taken.append(box)
                return xz, y
        return None

    def wall_spot(self, rng, size_xz, wall: int, gap=0.02, tries=20):
        """A centre and yaw putting an object's back (local -z) against ``wall`` (0: x=0, 1: x=W, 2: z=0, 3: z=D)."""
        along_len = self.depth if wall < 2 else self.width
        yaw = (math.pi / 2, -math.pi / 2, 0.0, math.pi)[wall]
        off = size_xz[1] / 2 + gap
        for _ in range(tries):
            lo, hi = size_xz[0] / 2 + 0.05, along_len - size_xz[0] / 2 - 0.05
            if hi <= lo:
                return None
            u = rng.uniform(lo, hi)
            xz = [np.array([off, u]), np.array([self.width - off, u]), np.array([u, off]),
                  np.array([u, self.depth - off])][wall]  # fmt: skip
            box = self.footprint(xz, size_xz, yaw)
            if self.fits(box):
                self.taken.append(box)
                return xz, yaw
        return None


def _local_to_world(xz: np.ndarray, yaw: float, local: Sequence[float]) -> np.ndarray:
    """Object-local point (x, y, z) -> world, for an object standing at floor position ``xz`` rotated by yaw."""
    p = _yaw_matrix(yaw) @ np.asarray(local, float)
    return np.array([xz[0] + p[0], p[1], xz[1] + p[2]])


# --- furniture builders: each places one instance; local frame: front = +z, floor at y = 0 --------------------


def _fabric(sb: _SceneBuilder) -> int:
    return sb.material(("plain", "plain", "checker", "stripes"), scale=(0.05, 0.25))


def _wooden(sb: _SceneBuilder) -> int:
    return sb.material(("wood", "plain", "wood"), scale=(0.04, 0.15))


def _add_table(sb, placer, rng, coffee=False, against_wall=None):
    round_top = rng.random() < 0.3 and against_wall is None
    height = rng.uniform(0.38, 0.5) if coffee else rng.uniform(0.7, 0.78)
    if round_top:
        radius = rng.uniform(0.4, 0.6)
        size = np.array([2 * radius, 2 * radius])
    else:
        size = np.array([rng.uniform(0.8, 1.8), rng.uniform(0.55, 1.0)])
        if coffee:
            size *= 0.75
    spot = (placer.wall_spot(rng, size, against_wall) if against_wall is not None
            else placer.free_spot(rng, size, dist=(1.6, 4.0)))  # fmt: skip
    if spot is None:
        return None
    xz, yaw = spot
    inst, mat = sb.instance("table"), _wooden(sb)
    top_t = 0.04
    if round_top:
        base = _local_to_world(xz, yaw, (0, 0, 0))
        sb.cylinder(inst, mat, base + (0, height - top_t, 0), height, radius)
        sb.cylinder(inst, mat, base, height - top_t, 0.04)
        sb.cylinder(inst, mat, base, 0.03, radius * 0.5)
    else:
        sb.box(inst, mat, _local_to_world(xz, yaw, (0, height - top_t / 2, 0)), (size[0], top_t, size[1]), yaw)
        leg = 0.05
        for sx in (-1, 1):
            for sz in (-1, 1):
                local = (sx * (size[0] / 2 - 0.06), (height - top_t) / 2, sz * (size[1] / 2 - 0.06))
                sb.box(inst, mat, _local_to_world(xz, yaw, local), (leg, height - top_t, leg), yaw)
    return {"xz": xz, "yaw": yaw, "size": size, "height": height, "round": round_top}


def _add_chair(sb, placer, rng, spot=None):
    w, d = rng.uniform(0.4, 0.5), rng.uniform(0.4, 0.5)
    if spot is None:
        spot = placer.free_spot(rng, (w, d), dist=(1.3, 4.0))
        if spot is None:
            return
    xz, yaw = spot
    inst = sb.instance("chair")
    mat = _wooden(sb) if rng.random() < 0.5 else _fabric(sb)
    seat_h, seat_t = rng.uniform(0.42, 0.5), 0.05
    sb.box(inst, mat, _local_to_world(xz, yaw, (0, seat_h - seat_t / 2, 0)), (w, seat_t, d), yaw)
    leg = 0.04
    for sx in (-1, 1):
        for sz in (-1, 1):
            local = (sx * (w / 2 - leg / 2), (seat_h - seat_t) / 2, sz * (d / 2 - leg / 2))
            sb.box(inst, mat, _local_to_world(xz, yaw, local), (leg, seat_h - seat_t, leg), yaw)
    back_h = rng.uniform(0.35, 0.5)
    sb.box(inst, mat, _local_to_world(xz, yaw, (0, seat_h + back_h / 2, -d / 2 + 0.025)), (w, back_h, 0.05), yaw)


def _add_chairs_around(sb, placer, rng, table, count):
    sides = rng.permutation(4)[:count]
    for side in sides:
        sx, sz = table["size"]
        offset_local = [(0, sz / 2 + 0.28), (0, -sz / 2 - 0.28), (sx / 2 + 0.28, 0), (-sx / 2 - 0.28, 0)][side]
        p = _yaw_matrix(table["yaw"]) @ np.array([offset_local[0], 0, offset_local[1]])
        xz = table["xz"] + np.array([p[0], p[2]])
        to_table = table["xz"] - xz
        yaw = math.atan2(to_table[0], to_table[1]) + rng.uniform(-0.25, 0.25)  # chair front (+z) faces the table
        box = placer.footprint(xz, (0.5, 0.5), yaw)
        if placer.fits(box, margin=0.02):
            placer.taken.append(box)
            _add_chair(sb, placer, rng, spot=(xz, yaw))


def _add_sofa(sb, placer, rng, wall):
    size = np.array([rng.uniform(1.5, 2.4), rng.uniform(0.8, 0.95)])
    spot = placer.wall_spot(rng, size, wall)
    if spot is None:
        return None
    xz, yaw = spot
    inst, mat = sb.instance("sofa"), _fabric(sb)
    w, d = size
    seat_h, back_h, arm_h, arm_w, back_d = rng.uniform(0.38, 0.46), rng.uniform(0.75, 0.9), 0.62, 0.17, 0.2
    sb.box(inst, mat, _local_to_world(xz, yaw, (0, seat_h / 2, back_d / 2)), (w - 2 * arm_w, seat_h, d - back_d), yaw)
    sb.box(inst, mat, _local_to_world(xz, yaw, (0, back_h / 2, -d / 2 + back_d / 2)), (w, back_h, back_d), yaw)
    for sx in (-1, 1):
        sb.box(inst, mat, _local_to_world(xz, yaw, (sx * (w / 2 - arm_w / 2), arm_h / 2, back_d / 2)),
               (arm_w, arm_h, d - back_d), yaw)  # fmt: skip
    return {"xz": xz, "yaw": yaw, "size": size}


def _add_cabinet(sb, placer, rng, wall, low=False):
    size = np.array([rng.uniform(0.6, 1.5), rng.uniform(0.4, 0.6)])
    height = rng.uniform(0.5, 0.9) if low else rng.uniform(0.8, 2.0)
    spot = placer.wall_spot(rng, size, wall)
    if spot is None:
        return None
    xz, yaw = spot
    inst = sb.instance("cabinet")
    mat = _wooden(sb) if rng.random() < 0.6 else sb.material(("plain",))
    panel = sb.material(("plain", "wood"), scale=(0.04, 0.15))
    w, d = size
    sb.box(inst, mat, _local_to_world(xz, yaw, (0, height / 2, 0)), (w, height, d), yaw)
    n_doors = 2 if w > 0.8 else 1
    door_w = (w - 0.06 - 0.02 * (n_doors - 1)) / n_doors
    for k in range(n_doors):
        x = -w / 2 + 0.03 + door_w / 2 + k * (door_w + 0.02)
        sb.box(inst, panel, _local_to_world(xz, yaw, (x, height / 2, d / 2 + 0.01)), (door_w, height - 0.08, 0.02),
               yaw)  # fmt: skip
    return {"xz": xz, "yaw": yaw, "size": size, "height": height}


def _add_bed(sb, placer, rng, wall):
    size = np.array([rng.uniform(1.0, 1.8), rng.uniform(1.9, 2.1)])
    spot = placer.wall_spot(rng, size, wall)
    if spot is None:
        return
    xz, yaw = spot
    inst = sb.instance("bed")
    frame, sheet, pillow = _wooden(sb), _fabric(sb), sb.material(("plain",), sat=(0.0, 0.3), val=(0.5, 0.95))
    w, d = size
    base_h, mattress_h = rng.uniform(0.25, 0.35), rng.uniform(0.15, 0.25)
    sb.box(inst, frame, _local_to_world(xz, yaw, (0, base_h / 2, 0)), (w, base_h, d), yaw)
    sb.box(inst, sheet, _local_to_world(xz, yaw, (0, base_h + mattress_h / 2, 0.03)), (w - 0.04, mattress_h, d - 0.1),
           yaw)  # fmt: skip
    head_h = rng.uniform(0.9, 1.2)
    sb.box(inst, frame, _local_to_world(xz, yaw, (0, head_h / 2, -d / 2 + 0.03)), (w, head_h, 0.06), yaw)
    top = base_h + mattress_h
    n_pillows = 2 if w > 1.3 else 1
    for k in range(n_pillows):
        x = (k - (n_pillows - 1) / 2) * w / 2
        sb.box(inst, pillow, _local_to_world(xz, yaw, (x, top + 0.06, -d / 2 + 0.3)), (min(0.55, w / n_pillows - 0.08),
               0.12, 0.35), yaw)  # fmt: skip


def _add_lamp(sb, placer, rng):
    spot = placer.free_spot(rng, (0.4, 0.4), dist=(1.5, 5.0))
    if spot is None:
        return
    xz, _ = spot
    inst = sb.instance("lamp")
    metal = sb.material(("plain",), sat=(0.0, 0.3), val=(0.05, 0.6))
    shade = sb.material(("plain", "stripes"), emission=0.35, sat=(0.0, 0.5), val=(0.6, 0.95), scale=(0.03, 0.08))
    height, radius = rng.uniform(1.2, 1.7), rng.uniform(0.15, 0.24)
    base = np.array([xz[0], 0.0, xz[1]])
    sb.cylinder(inst, metal, base, 0.03, 0.14)
    sb.cylinder(inst, metal, base, height, 0.015)
    sb.cylinder(inst, shade, base + (0, height - 0.05, 0), height + rng.uniform(0.22, 0.34), radius)


def _add_tv(sb, rng, stand):
    """A TV monitor (body + ``screen`` part + foot) on top of ``stand`` (a cabinet or table dict)."""
    inst = sb.instance("tvmonitor")
    body = sb.material(("plain",), sat=(0.0, 0.3), val=(0.02, 0.3))
    screen = sb.material(("plain", "stripes", "checker"), emission=0.6, scale=(0.1, 0.4))
    w = min(rng.uniform(0.6, 1.1), float(stand["size"][0]) - 0.05)
    h = w * rng.uniform(0.55, 0.65)
    foot_h = 0.06
    top = stand["height"]
    xz, yaw = stand["xz"], stand["yaw"]
    z_off = 0.0 if stand.get("round") else -float(stand["size"][1]) / 4
    sb.box(inst, body, _local_to_world(xz, yaw, (0, top + foot_h / 2, z_off)), (0.25, foot_h, 0.18), yaw)
    center_y = top + foot_h + h / 2
    sb.box(inst, body, _local_to_world(xz, yaw, (0, center_y, z_off)), (w, h, 0.05), yaw)
    sb.box(inst, screen, _local_to_world(xz, yaw, (0, center_y, z_off + 0.03)), (w - 0.05, h - 0.05, 0.012), yaw,
           part="screen")  # fmt: skip


def _add_bottles(sb, rng, table, count):
    for _ in range(count):
        inst = sb.instance("bottle")
        mat = sb.material(("plain",), emission=0.1)
        r_body, h_body = rng.uniform(0.03, 0.045), rng.uniform(0.17, 0.27)
        if table["round"]:
            ang, rad = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.6) * table["size"][0] / 2
            local = (rad * math.cos(ang), 0.0, rad * math.sin(ang))
        else:
            local = (rng.uniform(-0.4, 0.4) * table["size"][0], 0.0, rng.uniform(-0.35, 0.35) * table["size"][1])
        base = _local_to_world(table["xz"], table["yaw"], local) + (0, table["height"], 0)
        sb.cylinder(inst, mat, base, base[1] + h_body, r_body)
        sb.cylinder(inst, mat, base + (0, h_body, 0), base[1] + h_body + rng.uniform(0.06, 0.09), r_body * 0.4)


def _add_plant(sb, placer, rng):
    r_pot = rng.uniform(0.12, 0.22)
    spot = placer.free_spot(rng, (2.6 * r_pot, 2.6 * r_pot), dist=(1.3, 4.5))
    if spot is None:
        return
    xz, _ = spot
    inst = sb.instance("pottedplant")
    pot = sb.material(("plain", "stripes"), scale=(0.03, 0.08))
    leaves = sb.material(("plain", "checker"), hue=(0.15, 0.45), sat=(0.4, 0.9), val=(0.15, 0.6), scale=(0.03, 0.06))
    h_pot = rng.uniform(0.2, 0.4)
    base = np.array([xz[0], 0.0, xz[1]])
    sb.cylinder(inst, pot, base, h_pot, r_pot, part="pot")
    for k in range(int(rng.integers(1, 4))):
        radius = rng.uniform(0.15, 0.3) * (1.0 if k == 0 else 0.7)
        off = rng.normal(0, 0.08, 3) * (k > 0)
        sb.sphere(inst, leaves, base + (off[0], h_pot + radius * 0.8 + 0.12 * k, off[2]), radius, part="plant")


def _limb_dir(swing: float, spread: float, yaw: float, side: float) -> np.ndarray:
    """Unit direction (world) of a limb hanging down, swung forward by ``swing`` and outwards by ``spread``."""
    local = np.array([side * math.sin(spread), -math.cos(spread) * math.cos(swing), math.cos(spread) * math.sin(swing)])
    return _yaw_matrix(yaw) @ local


def _add_person(sb, placer, rng):
    """An articulated standing person made of a head sphere and capsules, with PASCAL-Part names on each piece."""
    spot = placer.free_spot(rng, (0.6, 0.6), dist=(1.8, 4.8))
    if spot is None:
        return False
    xz, yaw = spot
    s = rng.uniform(1.5, 1.9) / 1.75
    inst = sb.instance("person")
    skin = sb.material(("plain",), hue=(0.02, 0.1), sat=(0.2, 0.6), val=(0.25, 0.95))
    shirt = sb.material(("plain", "stripes", "checker"), scale=(0.04, 0.12))
    trousers = sb.material(("plain",))
    shoes = sb.material(("plain",), sat=(0.0, 0.4), val=(0.03, 0.3))
    sleeve = shirt if rng.random() < 0.5 else skin

    def world(local):
        return _local_to_world(xz, yaw, np.asarray(local) * s)

    hip_y, shoulder_y = 0.93, 1.42
    # Legs: upper leg swings in a walking range, the knee only bends backwards.
    feet = []
    for side, name in ((1.0, "l"), (-1.0, "r")):
        hip = world((side * 0.1, hip_y, 0))
        swing = rng.uniform(-0.45, 0.45)
        knee = hip + 0.44 * s * _limb_dir(swing, rng.uniform(0.0, 0.12), yaw, side)
        ankle = knee + 0.42 * s * _limb_dir(swing - rng.uniform(0.0, 0.7), 0.0, yaw, side)
        toe = ankle + 0.16 * s * (_yaw_matrix(yaw) @ np.array([0, 0, 1.0]))
        sb.capsule(inst, trousers, hip, knee, 0.075 * s, part=f"{name}uleg")
        sb.capsule(inst, trousers, knee, ankle, 0.055 * s, part=f"{name}lleg")
        sb.capsule(inst, shoes, ankle, toe, 0.045 * s, part=f"{name}foot")
        feet.extend([ankle[1], toe[1]])
    lift = 0.045 * s - min(feet)  # stand on the floor
    first_leg = len(sb.prims) - 6
    for prim in sb.prims[first_leg:]:
        prim.a, prim.b = prim.a + (0, lift, 0), prim.b + (0, lift, 0)

    def up(p):
        return p + (0, lift, 0)

    sb.capsule(inst, shirt, up(world((0, hip_y + 0.08, 0))), up(world((0, shoulder_y - 0.08, 0))), 0.16 * s,
               part="torso")  # fmt: skip
    sb.capsule(inst, skin, up(world((0, shoulder_y, 0))), up(world((0, shoulder_y + 0.1, 0))), 0.055 * s, part="neck")
    sb.sphere(inst, skin, up(world((0, shoulder_y + 0.22, 0.01))), 0.11 * s, part="head")
    for side, name in ((1.0, "l"), (-1.0, "r")):
        shoulder = up(world((side * 0.2, shoulder_y - 0.02, 0)))
        swing = rng.uniform(-0.6, 1.2) if rng.random() < 0.8 else rng.uniform(1.8, 2.8)
        elbow = shoulder + 0.29 * s * _limb_dir(swing, rng.uniform(0.05, 0.5), yaw, side)
        wrist = elbow + 0.26 * s * _limb_dir(swing + rng.uniform(0.0, 1.4), rng.uniform(0.0, 0.3), yaw, side)
        hand = wrist + 0.07 * s * (wrist - elbow) / (np.linalg.norm(wrist - elbow) + 1e-9)
        sb.capsule(inst, shirt, shoulder, elbow, 0.052 * s, part=f"{name}uarm")
        sb.capsule(inst, sleeve, elbow, wrist, 0.042 * s, part=f"{name}larm")
        sb.sphere(inst, skin, hand, 0.048 * s, part=f"{name}hand")
    return True


def _add_wall_items(sb, rng, room, walls_in_view):
    """Doors, windows and pictures: thin boxes on the walls, protruding a few centimetres into the room."""
    width, height, depth = room
    used: dict[int, list[tuple[float, float]]] = {w: [] for w in range(4)}

    def slot(wall, w_item):
        length = depth if wall < 2 else width
        for _ in range(15):
            u = rng.uniform(w_item / 2 + 0.1, length - w_item / 2 - 0.1) if length > w_item + 0.2 else None
            if u is None:
                return None
            if all(u + w_item / 2 + 0.1 < a or b + 0.1 < u - w_item / 2 for a, b in used[wall]):
                used[wall].append((u - w_item / 2, u + w_item / 2))
                return u
        return None

    def panel(inst, mat, wall, u, y_center, w_item, h_item, protrude, part=""):
        inward = [(1, 0, 0), (-1, 0, 0), (0, 0, 1), (0, 0, -1)][wall]
        anchor = [(0, 0, u), (width, 0, u), (u, 0, 0), (u, 0, depth)][wall]
        center = np.array(anchor, float) + np.array(inward, float) * protrude / 2
        center[1] = y_center
        size = (protrude, h_item, w_item) if wall < 2 else (w_item, h_item, protrude)
        sb.box(inst, mat, center, size, part=part)

    def pick_wall():
        return int(rng.choice(walls_in_view)) if rng.random() < 0.8 else int(rng.integers(4))

    if rng.random() < 0.6:
        wall, w_item = pick_wall(), rng.uniform(0.8, 1.0)
        u = slot(wall, w_item)
        if u is not None:
            inst = sb.instance("door")
            mat, knob = _wooden(sb), sb.material(("plain",), sat=(0.0, 0.3), val=(0.3, 0.9))
            h_item = rng.uniform(1.95, 2.1)
            panel(inst, mat, wall, u, h_item / 2, w_item, h_item, 0.04)
            inward = np.array([(1, 0, 0), (-1, 0, 0), (0, 0, 1), (0, 0, -1)][wall], float)
            along = np.array([(0, 0, 1), (0, 0, 1), (1, 0, 0), (1, 0, 0)][wall], float)
            anchor = np.array([(0, 0, u), (width, 0, u), (u, 0, 0), (u, 0, depth)][wall], float)
            sb.sphere(inst, knob, anchor + inward * 0.07 + along * (w_item / 2 - 0.1) + (0, 1.0, 0), 0.035)
    for _ in range(int(rng.integers(0, 3))):
        wall, w_item = pick_wall(), rng.uniform(0.8, 1.8)
        u = slot(wall, w_item)
        if u is None:
            continue
        inst = sb.instance("window")
        frame = sb.material(("plain",), sat=(0.0, 0.2), val=(0.5, 0.95))
        glass = sb.material(("plain",), emission=0.9, hue=(0.5, 0.65), sat=(0.0, 0.35), val=(0.75, 1.0))
        h_item, bottom = rng.uniform(1.0, 1.5), rng.uniform(0.7, 1.0)
        h_item = min(h_item, height - bottom - 0.2)
        panel(inst, frame, wall, u, bottom + h_item / 2, w_item, h_item, 0.05)
        panel(inst, glass, wall, u, bottom + h_item / 2, w_item - 0.12, h_item - 0.12, 0.06)
    for _ in range(int(rng.integers(0, 4))):
        wall, w_item = pick_wall(), rng.uniform(0.35, 1.0)
        u = slot(wall, w_item)
        if u is None:
            continue
        inst = sb.instance("picture")
        frame = sb.material(("plain", "wood"), scale=(0.02, 0.05))
        canvas = sb.material(("canvas",), scale=(0.08, 0.3))
        h_item = w_item * rng.uniform(0.6, 1.3)
        y = rng.uniform(1.3, 1.8)
        panel(inst, frame, wall, u, y, w_item, h_item, 0.03)
        panel(inst, canvas, wall, u, y, w_item - 0.08, h_item - 0.08, 0.04)


def _build_scene(rng: np.random.Generator, size: tuple[int, int], layout: str, num_people: int | None) -> _Scene:
    height_px, width_px = size
    sb = _SceneBuilder(rng)
    if layout == "nyud":  # NYUD-v2 rooms are small (bedrooms, offices, kitchens): depth mostly below 6 m
        room = np.array([rng.uniform(3.5, 6.0), rng.uniform(2.5, 2.9), rng.uniform(3.5, 6.5)])
    else:
        room = np.array([rng.uniform(3.5, 7.0), rng.uniform(2.4, 3.1), rng.uniform(3.5, 8.0)])

    # Room surfaces: instances 0..5 = walls x=0, x=W, z=0, z=D, floor, ceiling.
    wall_mat = sb.material(("plain", "plain", "stripes", "checker"), sat=(0.0, 0.45), val=(0.35, 0.95),
                           scale=(0.1, 0.6))  # fmt: skip
    floor_mat = sb.material(("wood", "tiles", "checker", "plain"), scale=(0.15, 0.6))
    ceiling_mat = sb.material(("plain",), sat=(0.0, 0.15), val=(0.6, 0.95))
    for kind in ("wall", "wall", "wall", "wall", "floor", "ceiling"):
        sb.instance(kind)
    room_materials = [wall_mat] * 4 + [floor_mat, ceiling_mat]

    # Camera: near one wall, looking into the room.
    back_wall = int(rng.integers(4))
    if layout == "nyud":
        # NYUD-v2 was shot with one Kinect (fy ~ 519 px for 480 rows) held at about chest height, slightly down.
        focal = height_px * 519.0 / 480.0
        pitch_range, height_range, roll_range = (-18.0, -8.0), (1.25, 1.45), 2.0
    else:
        focal = (height_px / 2) / math.tan(math.radians(rng.uniform(45.0, 62.0)) / 2)
        pitch_range, height_range, roll_range = (-28.0, -4.0), (1.1, 1.7), 3.0
    hfov = 2 * math.atan((width_px / 2) / focal)
    near = rng.uniform(0.3, 1.2)
    if back_wall < 2:
        along = rng.uniform(0.25, 0.75) * room[2]
        cam_xz = np.array([near if back_wall == 0 else room[0] - near, along])
        inward = np.array([1.0, 0.0]) if back_wall == 0 else np.array([-1.0, 0.0])
    else:
        along = rng.uniform(0.25, 0.75) * room[0]
        cam_xz = np.array([along, near if back_wall == 2 else room[2] - near])
        inward = np.array([0.0, 1.0]) if back_wall == 2 else np.array([0.0, -1.0])
    heading = math.atan2(inward[1], inward[0]) + rng.uniform(-0.6, 0.6)
    forward_xz = np.array([math.cos(heading), math.sin(heading)])
    # yaw about +y mapping camera forward (-z) to forward_xz: R_y(yaw) @ (0, 0, -1) = (-sin, 0, -cos)
    cam_yaw = math.atan2(-forward_xz[0], -forward_xz[1])
    pitch = math.radians(rng.uniform(*pitch_range))
    roll = math.radians(rng.uniform(-roll_range, roll_range))
    cp, sp, cr, sr = math.cos(pitch), math.sin(pitch), math.cos(roll), math.sin(roll)
    rot_pitch = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rot_roll = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    rotation = _yaw_matrix(cam_yaw) @ rot_pitch @ rot_roll
    cam_pos = np.array([cam_xz[0], rng.uniform(*height_range), cam_xz[1]])
    camera = _Camera(height_px, width_px, focal, cam_pos, rotation)

    # Walls seen by the camera: the one it faces and the two side walls.
    facing = {0: 1, 1: 0, 2: 3, 3: 2}[back_wall]
    walls_in_view = [facing] + [w for w in range(4) if w not in (facing, back_wall)]
    _add_wall_items(sb, rng, room, walls_in_view)

    placer = _Placer(room, cam_xz, forward_xz, hfov)

    def wall_choice():
        return facing if rng.random() < 0.55 else int(rng.choice(walls_in_view[1:]))

    pascal = layout == "pascal"
    room_type = str(rng.choice(["bedroom", "living", "dining", "office"]))
    tables, stands = [], []
    if room_type == "bedroom":
        _add_bed(sb, placer, rng, wall_choice())
        for _ in range(int(rng.integers(1, 3))):
            cab = _add_cabinet(sb, placer, rng, wall_choice(), low=rng.random() < 0.5)
            if cab is not None and cab["height"] < 1.1:
                stands.append(cab)
        if rng.random() < 0.5:
            _add_chair(sb, placer, rng)
    elif room_type == "living":
        _add_sofa(sb, placer, rng, wall_choice())
        table = _add_table(sb, placer, rng, coffee=True)
        if table is not None:
            tables.append(table)
        for _ in range(int(rng.integers(0, 3))):
            _add_chair(sb, placer, rng)
        if rng.random() < 0.7:
            cab = _add_cabinet(sb, placer, rng, wall_choice(), low=True)
            if cab is not None:
                stands.append(cab)
    elif room_type == "dining":
        table = _add_table(sb, placer, rng)
        if table is not None:
            tables.append(table)
            _add_chairs_around(sb, placer, rng, table, int(rng.integers(2, 5)))
        for _ in range(int(rng.integers(0, 3))):
            _add_cabinet(sb, placer, rng, wall_choice())
    else:  # office
        table = _add_table(sb, placer, rng, against_wall=wall_choice())
        if table is not None:
            tables.append(table)
            _add_chairs_around(sb, placer, rng, table, 1)
        for _ in range(int(rng.integers(1, 3))):
            cab = _add_cabinet(sb, placer, rng, wall_choice(), low=rng.random() < 0.4)
            if cab is not None and cab["height"] < 1.1:
                stands.append(cab)
        if rng.random() < 0.4:
            _add_chair(sb, placer, rng)
    if rng.random() < 0.5:
        _add_lamp(sb, placer, rng)

    if pascal:
        if stands and rng.random() < 0.7:
            _add_tv(sb, rng, stands[0])
        elif tables and room_type == "office" and rng.random() < 0.6:
            _add_tv(sb, rng, tables[0])
        for table in tables:
            if rng.random() < 0.6:
                _add_bottles(sb, rng, table, int(rng.integers(1, 4)))
        for _ in range(int(rng.choice([0, 0, 1, 1, 2]))):
            _add_plant(sb, placer, rng)
        if num_people is None:
            num_people = int(rng.choice([0, 0, 1, 1, 1, 2, 2, 3]))
        for _ in range(num_people):
            _add_person(sb, placer, rng)

    lights = []
    for _ in range(int(rng.integers(1, 3))):
        pos = np.array([rng.uniform(0.2, 0.8) * room[0], room[1] - 0.25, rng.uniform(0.2, 0.8) * room[2]])
        tint = _hsv_to_rgb(rng.uniform(0.05, 0.6), rng.uniform(0.0, 0.25), 1.0)
        lights.append((pos, tint * rng.uniform(0.8, 1.6)))
    waves = np.concatenate([rng.normal(0.0, 1.2, (3, 3)), rng.uniform(0, 2 * np.pi, (3, 1))], 1)
    return _Scene(room, camera, sb.prims, sb.instances, sb.materials, room_materials, lights, rng.uniform(0.2, 0.4),
                  waves)  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# Ray casting and shading
# ----------------------------------------------------------------------------------------------------------

# Room surfaces 0..5 (walls x=0, x=W, z=0, z=D, floor, ceiling): inward normals.
_ROOM_NORMALS = np.array([[1, 0, 0], [-1, 0, 0], [0, 0, 1], [0, 0, -1], [0, 1, 0], [0, -1, 0]], dtype=float)


def _screen_windows(camera: _Camera, prims: Sequence[_Prim]) -> list[tuple[int, int, int, int] | None]:
    """Conservative pixel rectangle (r0, r1, c0, c1) covering each primitive, or None when it is off-screen."""
    if not prims:
        return []
    lo_hi = np.array([prim.bounds() for prim in prims])  # (P, 2, 3)
    pick = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)])  # (8, 3) lo/hi per axis
    corners = np.stack([lo_hi[:, pick[:, k], k] for k in range(3)], -1)  # (P, 8, 3)
    local = (corners - camera.position) @ camera.rotation  # camera frame
    behind = local[..., 2] > -0.05
    depth = np.where(behind, 1.0, -local[..., 2])
    u = camera.focal * local[..., 0] / depth + camera.width / 2
    v = -camera.focal * local[..., 1] / depth + camera.height / 2
    c0 = np.clip(np.floor(u.min(1)) - 1, 0, camera.width).astype(int).tolist()
    c1 = np.clip(np.ceil(u.max(1)) + 1, 0, camera.width).astype(int).tolist()
    r0 = np.clip(np.floor(v.min(1)) - 1, 0, camera.height).astype(int).tolist()
    r1 = np.clip(np.ceil(v.max(1)) + 1, 0, camera.height).astype(int).tolist()
    all_behind, any_behind = behind.all(1).tolist(), behind.any(1).tolist()
    windows: list[tuple[int, int, int, int] | None] = []
    for k in range(len(prims)):
        if all_behind[k]:
            windows.append(None)
        elif any_behind[k]:
            windows.append((0, camera.height, 0, camera.width))
        elif c0[k] >= c1[k] or r0[k] >= r1[k]:
            windows.append(None)
        else:
            windows.append((r0[k], r1[k], c0[k], c1[k]))
    return windows


def _cast(scene: _Scene, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cast unit world rays ``dirs`` (3, H, W) from the camera.

    Returns ray lengths ``t`` (H, W) metres and ``prim`` (H, W) int32: -1..-6 = room surface ``-prim - 1``,
    >= 0 = index into ``scene.prims``.
    """
    o = scene.camera.position
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        # Room: the ray leaves the room box through the nearest of its three "exit" planes.
        t_axes = []
        for k in range(3):
            t_axes.append(np.where(dirs[k] > 0, scene.room[k] - o[k], -o[k]) / dirs[k])
        tx, ty, tz = (np.where(np.isnan(t) | (t < 0), np.inf, t) for t in t_axes)
        t = np.minimum(np.minimum(tx, ty), tz)
        surface = np.where(tx == t, (dirs[0] > 0).astype(np.int32),
                           np.where(tz == t, 2 + (dirs[2] > 0), 4 + (dirs[1] > 0)))  # fmt: skip
        prim_map = (-surface - 1).astype(np.int32)
        for k, (prim, window) in enumerate(zip(scene.prims, _screen_windows(scene.camera, scene.prims))):
            if window is None:
                continue
            r0, r1, c0, c1 = window
            t_new = prim.intersect(o, dirs[0, r0:r1, c0:c1], dirs[1, r0:r1, c0:c1], dirs[2, r0:r1, c0:c1])
            sub_t = t[r0:r1, c0:c1]
            closer = t_new < sub_t
            sub_t[closer] = t_new[closer]
            prim_map[r0:r1, c0:c1][closer] = k
    return t, prim_map


_PATTERNS = ("plain", "checker", "stripes", "wood", "tiles", "canvas")


def _albedo(materials: Sequence[_Material], material: np.ndarray, local: np.ndarray, local_normals: np.ndarray,
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
    pattern = np.array([_PATTERNS.index(m.pattern) for m in materials])[material]

    local = local.astype(np.float32)
    ax, ay, az = np.abs(local_normals)
    along_x = (ax >= ay) & (ax >= az)
    along_y = ~along_x & (ay >= az)
    inv_scale = 1.0 / scale[material]
    u = np.where(along_x, local[2], local[0]) * inv_scale
    v = np.where(along_y, local[2], local[1]) * inv_scale
    albedo = np.empty(local.shape, dtype=np.float32)
    for code in np.flatnonzero(np.bincount(pattern, minlength=len(_PATTERNS))).tolist():
        sel = np.flatnonzero(pattern == code)
        mat = material[sel]
        a, b, su, sv = colour_a[:, mat], colour_b[:, mat], u[sel], v[sel]
        name = _PATTERNS[code]
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


def _surface(scene: _Scene, t: np.ndarray, prim_map: np.ndarray, dirs: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """World hit points (3, N) float64, outward normals (3, N) float64, albedo (3, N) float32 and emission (N,)
    float32 of every pixel (N = H * W, row-major). Pixels are processed in batches per primitive type."""
    origin = scene.camera.position
    points = origin[:, None] + t.reshape(1, -1) * dirs.reshape(3, -1)
    prim = prim_map.reshape(-1)
    n_pix = prim.size
    normals = np.empty((3, n_pix))
    local = np.empty((3, n_pix))  # texture frame
    local_normals = np.empty((3, n_pix))
    material = np.empty(n_pix, dtype=np.int64)

    room = np.flatnonzero(prim < 0)
    surface = -prim[room] - 1
    normals[:, room] = _ROOM_NORMALS[surface].T
    local[:, room] = points[:, room]
    local_normals[:, room] = normals[:, room]
    material[room] = np.asarray(scene.room_materials)[surface]

    prims = scene.prims
    if prims:
        material[prim >= 0] = np.array([p.material for p in prims])[prim[prim >= 0]]
        kinds = (_Box, _Sphere, _Cylinder, _Capsule)
        kind = np.array([kinds.index(type(p)) for p in prims] + [-1])  # the -1 entry catches room pixels
        pixel_kind = kind[np.where(prim >= 0, prim, len(prims))]
    for code, name in enumerate(("_Box", "_Sphere", "_Cylinder", "_Capsule")):
        if not prims:
            break
        sel = np.flatnonzero(pixel_kind == code)
        if not sel.size:
            continue
        group = prim[sel]
        p = points[:, sel]

        def gather(attr, cls, default, group=group):  # per-pixel parameter of this type: (n,) or (3, n), C order
            table = np.array([getattr(q, attr) if isinstance(q, cls) else default for q in prims])
            return np.ascontiguousarray(table.T)[..., group]

        if name == "_Box":
            center, half = gather("center", _Box, np.zeros(3)), gather("half", _Box, np.ones(3))
            yaw = gather("yaw", _Box, 0.0)
            cos, sin = np.cos(yaw), np.sin(yaw)
            d, od = p - center, origin[:, None] - center

            def to_box(v, cos=cos, sin=sin):  # world offset -> box frame (rotation by -yaw)
                return np.stack([cos * v[0] - sin * v[2], v[1], sin * v[0] + cos * v[2]])

            lp = to_box(d)
            q_p, q_o = lp / half, to_box(od) / half
            # An edge point is as close to two faces: take the one the camera sees (the ray entered through it).
            seen = np.sign(q_p) * (q_o - q_p) > 0
            axis = np.where(seen, np.abs(q_p), -1.0).argmax(0)
            ln = np.zeros_like(lp)
            cols = np.arange(sel.size)
            ln[axis, cols] = np.sign(q_p[axis, cols])
            n = np.stack([cos * ln[0] + sin * ln[2], ln[1], -sin * ln[0] + cos * ln[2]])
            local[:, sel], local_normals[:, sel] = lp, ln
        elif name == "_Sphere":
            center, radius = gather("center", _Sphere, np.zeros(3)), gather("radius", _Sphere, 1.0)
            n = (p - center) / radius
            local[:, sel], local_normals[:, sel] = p - center, n
        elif name == "_Cylinder":
            base, top = gather("base", _Cylinder, np.zeros(3)), gather("top", _Cylinder, 1.0)
            radius = gather("radius", _Cylinder, 1.0)
            rx, rz = p[0] - base[0], p[2] - base[2]
            radial = np.sqrt(rx * rx + rz * rz)
            n = np.stack([rx, np.zeros_like(rx), rz]) / np.maximum(radial, 1e-12)
            # Rim points are as close to the side as to a cap: keep the surface the camera can see.
            side_seen = n[0] * (origin[0] - p[0]) + n[2] * (origin[2] - p[2]) > 0
            gap_side = np.where(side_seen, np.abs(radial - radius), np.inf)
            on_top = (origin[1] > top) & (np.abs(p[1] - top) < gap_side)
            on_base = (origin[1] < base[1]) & (np.abs(p[1] - base[1]) < gap_side)
            n[:, on_top] = np.array([[0.0], [1.0], [0.0]])
            n[:, on_base] = np.array([[0.0], [-1.0], [0.0]])
            local[:, sel], local_normals[:, sel] = p - base, n
        else:
            a = gather("a", _Capsule, np.zeros(3))
            ba = gather("b", _Capsule, np.ones(3)) - a
            radius = gather("radius", _Capsule, 1.0)
            pa = p - a
            along = np.clip((pa * ba).sum(0) / (ba * ba).sum(0), 0.0, 1.0)
            n = (pa - along * ba) / radius
            local[:, sel], local_normals[:, sel] = pa, n
        normals[:, sel] = n
    normals /= np.sqrt(normals[0] ** 2 + normals[1] ** 2 + normals[2] ** 2)
    albedo = _albedo(scene.materials, material, local, local_normals, points, scene.waves)
    emission = np.array([m.emission for m in scene.materials], dtype=np.float32)[material]
    return points, normals, albedo, emission


_GAMMA_TABLE = (255.0 * np.linspace(0.0, 1.0, 4096) ** (1 / 2.2) + 0.5).astype(np.float32)


def _shade(scene: _Scene, points, normals, albedo, emission, rng: np.random.Generator) -> np.ndarray:
    """Lambertian lighting of per-pixel surfaces (3, N) -> sRGB uint8 (H, W, 3) with a little sensor noise."""
    points, normals = points.astype(np.float32), normals.astype(np.float32)
    light = np.float32(scene.ambient) * (0.85 + 0.15 * normals[1]) * np.ones((3, 1), np.float32)
    for pos, rgb in scene.lights:
        lx, ly, lz = (np.float32(pos[k]) - points[k] for k in range(3))
        dist2 = lx * lx + ly * ly + lz * lz
        dist = np.sqrt(dist2)
        lam = np.maximum(normals[0] * lx + normals[1] * ly + normals[2] * lz, 0.0) / np.maximum(dist, 1e-6)
        light += (lam / (1.0 + dist2 / np.float32(3.5**2))) * rgb.astype(np.float32)[:, None]
    colour = albedo * (light * (1 - emission) + 1.2 * emission)
    colour *= 0.85 / max(float(np.percentile(colour[:, ::7].mean(0), 97)), 1e-3)
    noise = rng.standard_normal(colour.shape, dtype=np.float32) * np.float32(1.5)
    # gamma 1/2.2 through a 4096-entry table, then sensor noise and rounding
    level = (np.minimum(colour, 1.0) * (len(_GAMMA_TABLE) - 1)).astype(np.int32)
    np.maximum(level, 0, out=level)
    encoded = np.clip(_GAMMA_TABLE[level] + noise, 0.0, 255.0).astype(np.uint8)
    h, w = scene.camera.height, scene.camera.width
    return encoded.reshape(3, h, w).transpose(1, 2, 0).copy()


def _boundaries(instances: np.ndarray, depth: np.ndarray, rel_jump: float = 0.1) -> np.ndarray:
    """1-pixel boundaries (H, W) uint8 {0, 1}.

    Between two 4-neighbours that differ in instance or whose depths differ by more than ``rel_jump`` (relative),
    the pixel nearer to the camera (the occluding side) is marked, so lines are one pixel wide.
    """
    out = np.zeros(instances.shape, dtype=bool)
    for axis in (0, 1):
        a = [slice(None), slice(None)]
        b = [slice(None), slice(None)]
        a[axis], b[axis] = slice(None, -1), slice(1, None)
        a, b = tuple(a), tuple(b)
        d_a, d_b = depth[a], depth[b]
        differ = (instances[a] != instances[b]) | (np.abs(d_a - d_b) > rel_jump * np.minimum(d_a, d_b))
        first_nearer = d_a <= d_b
        out[a] |= differ & first_nearer
        out[b] |= differ & ~first_nearer
    return out.astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------
# Public rendering API
# ----------------------------------------------------------------------------------------------------------


def _check_layout(layout) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")
    return layout


def _check_size(size) -> tuple[int, int]:
    ok = (isinstance(size, (tuple, list)) and len(size) == 2
          and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in size))  # fmt: skip
    if not ok:
        raise ValueError(f"size must be a pair of integers (height, width), got {size!r}")
    if not all(MIN_SIDE <= s <= MAX_SIDE for s in size):
        raise ValueError(f"size must have height and width in [{MIN_SIDE}, {MAX_SIDE}] pixels, got {tuple(size)}")
    return int(size[0]), int(size[1])


def render_scene(rng: np.random.Generator, size: tuple[int, int], layout: str, *,
                 num_people: int | None = None) -> dict:  # fmt: skip
    """Render one random scene and its exact ground truth.

    Args:
        rng: source of randomness (see :func:`scene_rng` for the generator used for file ``index`` of a split).
        size: (height, width) in pixels.
        layout: ``"nyud"`` (12 NYUD-40 classes) or ``"pascal"`` (adds TV monitors, plants, bottles, people).
        num_people: PASCAL only: number of people to try to place (None = random, 0..3, about 1/4 with none).
            People that do not fit in the room are skipped.

    Returns a dict (H, W = size):
        ``image``: uint8 (H, W, 3) sRGB.
        ``depth``: float32 (H, W) z-depth in metres, > 0 everywhere.
        ``normals``: float32 (H, W, 3) unit normals, x right, y down, z towards the viewer (module docstring).
        ``semseg``: uint8 (H, W) class ids: NYUD 0-based NYUD-40 ids (files store id + 1); PASCAL VOC ids 0..20.
        ``boundaries``: uint8 (H, W) {0, 1}, 1-pixel instance/occlusion boundaries.
        ``instances``: int32 (H, W) instance ids (0..5 room surfaces: walls x=0, x=W, z=0, z=D, floor, ceiling).
        ``saliency``: uint8 (H, W) {0, 1} (PASCAL only): free-standing objects and people.
        ``human_parts``: uint8 (H, W) 0..6 (PASCAL only): 0 background, 1 head, 2 torso, 3 upper arm,
            4 lower arm, 5 upper leg, 6 lower leg.
        ``fine_parts``: uint8 (H, W) (PASCAL only): index into :data:`FINE_PART_NAMES`.
        ``label_map``: uint16 (H, W) (PASCAL only): PASCAL-Context labels (the ``LabelMap`` written to disk).
        ``meta``: dict with ``kinds`` (list: instance id -> kind name), ``voc`` / ``nyud`` (int arrays: instance
            id -> class), ``camera`` (``K`` 3x3, ``rotation`` world-from-camera 3x3, ``position`` (3,) metres,
            ``fov_y_deg``), ``room`` (width, height, depth metres), ``num_people`` (people visible).
    """
    layout = _check_layout(layout)
    height, width = _check_size(size)
    if num_people is not None and (layout != "pascal" or not 0 <= int(num_people) <= 6):
        raise ValueError(f"num_people must be None or 0..6 and only with layout 'pascal', got {num_people!r}")
    scene = _build_scene(rng, (height, width), layout, num_people)
    dirs_cam = scene.camera.directions()  # (3, H, W), z = -1
    ray_len = np.sqrt((dirs_cam * dirs_cam).sum(0))
    dirs = (scene.camera.rotation @ dirs_cam.reshape(3, -1)).reshape(dirs_cam.shape) / ray_len
    t, prim_map = _cast(scene, dirs)
    points, normals_world, albedo, emission = _surface(scene, t, prim_map, dirs)
    image = _shade(scene, points, normals_world, albedo, emission, rng)

    depth = (t / ray_len).astype(np.float32)
    normals = scene.camera.rotation.T @ normals_world  # world -> camera frame, (3, H*W)
    facing = (normals * dirs_cam.reshape(3, -1)).sum(0)
    normals[:, facing > 0] *= -1.0  # only surfaces seen exactly edge-on can face away
    normals[1] *= -1.0  # y down: the NYU colouring frame
    normals = normals.T.reshape(height, width, 3)

    prim_instance = np.array([p.instance for p in scene.prims] + [5, 4, 3, 2, 1, 0], dtype=np.int32)
    instances = prim_instance[prim_map]  # negative prim ids index the room entries from the end
    kinds = scene.instances
    nyud = np.array([k.nyud for k in kinds], dtype=np.int64)
    voc = np.array([k.voc for k in kinds], dtype=np.int64)
    out = {
        "image": image,
        "depth": depth,
        "normals": normals.astype(np.float32),
        "semseg": (nyud if layout == "nyud" else voc)[instances].astype(np.uint8),
        "boundaries": _boundaries(instances, depth),
        "instances": instances,
    }
    visible = np.flatnonzero(np.bincount(instances.reshape(-1), minlength=len(kinds)))
    people = sum(1 for i in visible if kinds[i].name == "person")
    if layout == "pascal":
        prim_part = np.array([p.part for p in scene.prims] + [0] * 6, dtype=np.uint8)
        fine = prim_part[prim_map]
        out["saliency"] = np.array([k.salient for k in kinds], dtype=np.uint8)[instances]
        out["human_parts"] = _GROUP_OF_CODE[fine]
        out["fine_parts"] = fine
        out["label_map"] = np.array([k.context for k in kinds], dtype=np.uint16)[instances]
    out["meta"] = {
        "kinds": [k.name for k in kinds],
        "voc": voc,
        "nyud": nyud,
        "camera": {"K": scene.camera.intrinsics(), "rotation": scene.camera.rotation,
                   "position": scene.camera.position, "fov_y_deg": math.degrees(2 * math.atan(height / 2 /
                                                                                      scene.camera.focal))},
        "room": scene.room,
        "num_people": people,
    }  # fmt: skip
    return out


# ----------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------


def image_id(layout: str, split: str, index: int) -> str:
    """File id of image ``index`` of ``split``: NYUD ``"0001"``-style (train odd, val even numbers), PASCAL
    ``"2008_000001"``-style (train 2008, val 2009). Ids never depend on how many images are generated."""
    _check_layout(layout)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    if layout == "nyud":
        return f"{2 * index + (1 if split == 'train' else 2):04d}"
    return f"{2008 if split == 'train' else 2009}_{index + 1:06d}"


def scene_rng(seed: int, layout: str, split: str, index: int) -> np.random.Generator:
    """The generator :func:`synthesize` renders image ``index`` of ``split`` with (independent of the counts)."""
    return np.random.default_rng(np.random.SeedSequence([seed, LAYOUTS.index(layout), SPLITS.index(split), index]))


def parse_size(text: str) -> tuple[int, int]:
    """``"192x256"`` -> (192, 256) (height x width), validated like :func:`synthesize`'s ``size``."""
    parts = str(text).lower().replace("×", "x").split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"size must look like HEIGHTxWIDTH, e.g. 192x256, got {text!r}")
    return _check_size((int(parts[0]), int(parts[1])))


def _encode_normals(normals: np.ndarray) -> np.ndarray:
    """Unit normals (H, W, 3) float -> uint8 RGB with ``2 * v / 255 - 1`` ~= normal."""
    return np.clip(np.rint((normals + 1.0) * 127.5), 0, 255).astype(np.uint8)


def _save_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(array)).save(path, format="PNG", compress_level=1)


_MAT_HEADER = b"MATLAB 5.0 MAT-file, Platform: posix, Created by: pamm.data.synth".ljust(116, b" ")
_MI_COMPRESSED = 15


def _save_mat(path: Path, name: str, value: np.ndarray) -> None:
    """Write one variable as a compressed MATLAB v5 file (what MATLAB's ``save`` writes by default).

    scipy writes the matrix element; it is compressed here at zlib level 1 (scipy's fixed level 6 is several
    times slower on the large, mostly-zero part masks) and the header's creation date is replaced by a fixed
    text so that files are byte-for-byte reproducible. ``scipy.io.loadmat`` reads the result as usual.
    """
    from scipy.io import savemat

    buffer = io.BytesIO()
    savemat(buffer, {name: value}, do_compression=False, oned_as="row")
    raw = buffer.getvalue()
    packed = zlib.compress(raw[128:], 1)
    path.write_bytes(_MAT_HEADER + raw[116:128] + struct.pack("<II", _MI_COMPRESSED, len(packed)) + packed)


_OBJECT_DTYPE = [("class", "O"), ("class_ind", "O"), ("mask", "O"), ("parts", "O")]
_PART_DTYPE = [("part_name", "O"), ("mask", "O")]


def _parts_annotation(scene: dict, image_name: str) -> tuple[np.ndarray, list[int]]:
    """PASCAL-Part style ``anno`` struct (1x1) for ``human_parts/<id>.mat`` and the class of each object.

    ``anno.imname`` = file name; ``anno.objects`` = 1xN struct (class name, class_ind 1x1 double, mask uint8 HxW,
    parts = 1xP struct of (part_name, mask uint8 HxW), or a 0x0 array when the object has no parts). Objects are
    the visible VOC-class instances (people, chairs, tables, sofas, TV monitors, plants, bottles).
    """
    instances, fine = scene["instances"], scene["fine_parts"]
    voc = scene["meta"]["voc"]
    records, classes = [], []
    for inst in np.flatnonzero(np.bincount(instances.reshape(-1))):
        cls = int(voc[inst])
        if cls == 0:
            continue
        mask = instances == inst
        codes = (np.flatnonzero(np.bincount(fine[mask], minlength=len(FINE_PART_NAMES))[1:]) + 1).tolist()
        if codes:
            parts = np.empty((1, len(codes)), dtype=_PART_DTYPE)
            for k, code in enumerate(codes):
                parts[0, k] = (FINE_PART_NAMES[code], (mask & (fine == code)).astype(np.uint8))
        else:
            parts = np.zeros((0, 0))
        records.append((PASCAL_CLASSES[cls], np.array([[float(cls)]]), mask.astype(np.uint8), parts))
        classes.append(cls)
    objects = np.empty((1, len(records)), dtype=_OBJECT_DTYPE)
    for k, rec in enumerate(records):
        objects[0, k] = rec
    anno = np.empty((1, 1), dtype=[("imname", "O"), ("objects", "O")])
    anno[0, 0] = (image_name, objects)
    return anno, classes


_NYUD_DIRS = ("images", "depth", "segmentation", "normals", "edge", "gt_sets")
_PASCAL_DIRS = ("JPEGImages", "semseg/pascal-context", "pascal-context/trainval", "human_parts", "normals_distill",
                "sal_distill", "ImageSets/Context", "ImageSets/Parts")  # fmt: skip


def _write_nyud(root: Path, iid: str, scene: dict) -> None:
    _save_png(root / "images" / f"{iid}.png", scene["image"])
    np.save(root / "depth" / f"{iid}.npy", scene["depth"].astype(np.float32))
    _save_png(root / "segmentation" / f"{iid}.png", (scene["semseg"] + 1).astype(np.uint8))
    _save_png(root / "normals" / f"{iid}.png", _encode_normals(scene["normals"]))
    _save_png(root / "edge" / f"{iid}.png", (scene["boundaries"] * 255).astype(np.uint8))


def _write_pascal(root: Path, iid: str, scene: dict) -> list[int]:
    from PIL import Image

    Image.fromarray(scene["image"]).save(root / "JPEGImages" / f"{iid}.jpg", format="JPEG", quality=92)
    _save_png(root / "semseg" / "pascal-context" / f"{iid}.png", scene["semseg"])
    _save_mat(root / "pascal-context" / "trainval" / f"{iid}.mat", "LabelMap", scene["label_map"])
    anno, classes = _parts_annotation(scene, f"{iid}.jpg")
    _save_mat(root / "human_parts" / f"{iid}.mat", "anno", anno)
    _save_png(root / "normals_distill" / f"{iid}.png", _encode_normals(scene["normals"]))
    _save_png(root / "sal_distill" / f"{iid}.png", (scene["saliency"] * 255).astype(np.uint8))
    return classes


def _write_example(job: tuple) -> tuple[list[int], int]:
    """Render and write one example; returns (VOC classes of its part-annotation objects, people visible)."""
    root, layout, seed, split, index, size = job
    scene = render_scene(scene_rng(seed, layout, split, index), size, layout)
    iid = image_id(layout, split, index)
    if layout == "nyud":
        _write_nyud(root, iid, scene)
        return [], 0
    return _write_pascal(root, iid, scene), scene["meta"]["num_people"]


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _parts_list_text(ids: list[str], classes: dict[str, list[int]]) -> str:
    """``ImageSets/Parts/<split>.txt``: a JSON object id -> VOC classes of the objects in ``human_parts/<id>.mat``,
    one id per line, as the PASCAL multi-task loaders cache it."""
    if not ids:
        return "{}\n"
    lines = [f'\t"{i}": {json.dumps(classes[i])}' for i in ids]
    return "{\n" + ",\n".join(lines) + "\n}\n"


def _is_synth_output(folder: Path) -> bool:
    """Whether ``folder`` is a dataset folder this module created (and may therefore delete and regenerate)."""
    marker = folder / MARKER_FILE
    try:
        info = json.loads(marker.read_text())
        return info.get("generator") == "pamm.data.synth" and info.get("owns_folder", False) is True
    except (OSError, ValueError, AttributeError):
        return False


class SynthOutputExistsError(FileExistsError, ValueError):
    """The target dataset folder holds files that :func:`synthesize` did not write (pass ``overwrite=True``)."""


def _check_count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def synthesize(out: Path, layout: str, n_train: int, n_val: int, size: tuple[int, int], seed: int,
               preview: Path | None = None, progress: bool = True, *, overwrite: bool = False,
               workers: int = 1) -> dict:  # fmt: skip
    """Write a synthetic dataset in the real NYUDv2 or PASCAL-Context layout under ``out``.

    Files (ids from :func:`image_id`; image ``index`` of a split is rendered from :func:`scene_rng`, so the same
    seed gives byte-identical files and more images never change the earlier ones):

    ``nyud`` -> ``out/NYUDv2/``: ``gt_sets/{train,val}.txt`` (ids, one per line); ``images/<id>.png`` (RGB uint8);
    ``depth/<id>.npy`` (float32 (H, W), metres); ``segmentation/<id>.png`` (L uint8, 0 void, 1..40 = NYUD-40
    class + 1); ``normals/<id>.png`` (RGB uint8, normal = 2 v / 255 - 1); ``edge/<id>.png`` (L uint8, 0 / 255).

    ``pascal`` -> ``out/PASCALContext/``: ``ImageSets/Context/{train,val}.txt`` (ids); ``JPEGImages/<id>.jpg``
    (RGB); ``semseg/pascal-context/<id>.png`` (L uint8, VOC 0..20); ``pascal-context/trainval/<id>.mat``
    (``LabelMap`` uint16 (H, W), PASCAL-Context labels); ``human_parts/<id>.mat`` (``anno`` struct, see
    :func:`_parts_annotation`); ``ImageSets/Parts/{train,val,trainval}.txt`` (JSON: id -> list of object VOC
    classes; images without people have no 15); ``normals_distill/<id>.png`` (RGB uint8, as NYUD normals);
    ``sal_distill/<id>.png`` (L uint8, 0 / 255).

    The dataset folder also gets ``pamm_synth.json`` (generation arguments). Split lists are written last, so an
    interrupted run never lists ids whose files are missing. A dataset folder this module created (its marker says
    so) is deleted and regenerated by the next run; any other non-empty folder is refused unless
    ``overwrite=True``, and then files are only written into it (nothing else is deleted, now or later).

    Args:
        out: data root; the dataset goes to ``out / DATASET_FOLDERS[layout]``.
        layout: ``"nyud"`` or ``"pascal"``.
        n_train, n_val: number of images per split (>= 0, at least one in total).
        size: (height, width) pixels, each in [32, 4096].
        seed: non-negative integer.
        preview: optional ``.png`` path for a contact sheet of the first few images and their ground truth.
        progress: show a tqdm progress bar.
        overwrite: write into a non-empty dataset folder that this module did not create.
        workers: processes used to render (1 = in this process).

    Returns a summary dict: ``layout``, ``root`` (dataset folder), ``counts`` ({split: n}), ``images``, ``files``,
    ``size``, ``seed``, ``seconds``, ``images_per_second``, ``preview`` (path or None) and, for PASCAL,
    ``with_people`` (images whose part annotation has a person).
    """
    layout = _check_layout(layout)
    n_train, n_val = _check_count("n_train", n_train), _check_count("n_val", n_val)
    if n_train + n_val == 0:
        raise ValueError("n_train + n_val must be at least 1, got 0 images in total")
    size = _check_size(size)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an integer in [0, 2**63), got {seed!r}")
    seed = int(seed)
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    if preview is not None:
        preview = Path(preview)
        if preview.suffix.lower() != ".png":
            raise ValueError(f"preview must be a .png file path, got {str(preview)!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out must be a folder, but {str(out)!r} is a file")
    if _is_synth_output(out):
        raise ValueError(f"out must be the data root that holds {DATASET_FOLDERS[layout]}/, but {str(out)!r} is "
                         f"itself a synthetic dataset folder; pass its parent")  # fmt: skip

    root = out / DATASET_FOLDERS[layout]
    owns_folder = True  # False when writing into someone else's files (overwrite=True): never delete it later
    if root.exists():
        if not root.is_dir():
            raise ValueError(f"out: {str(root)!r} exists and is not a folder")
        if _is_synth_output(root):
            shutil.rmtree(root)
        elif any(root.iterdir()):
            owns_folder = False
            if not overwrite:
                raise SynthOutputExistsError(
                    f"out: {str(root)!r} is not empty and was not written by pamm's synthesizer (no {MARKER_FILE}); "
                    "refusing to overwrite it. Choose another --out or pass overwrite=True (--overwrite)."
                )
    root.mkdir(parents=True, exist_ok=True)
    split_dir = root / ("gt_sets" if layout == "nyud" else "ImageSets/Context")
    lists = [split_dir / f"{s}.txt" for s in SPLITS]
    if layout == "pascal":
        lists += [root / "ImageSets/Parts" / f"{s}.txt" for s in (*SPLITS, "trainval")]
    for path in lists:  # with overwrite=True: never leave an old list pointing at half-written files
        path.unlink(missing_ok=True)
    marker = {"generator": "pamm.data.synth", "format_version": _FORMAT_VERSION, "layout": layout,
              "counts": {"train": n_train, "val": n_val}, "size": list(size), "seed": seed,
              "owns_folder": owns_folder}  # fmt: skip
    _write_text_atomic(root / MARKER_FILE, json.dumps({**marker, "complete": False}, indent=1) + "\n")
    for sub in _NYUD_DIRS if layout == "nyud" else _PASCAL_DIRS:
        (root / sub).mkdir(parents=True, exist_ok=True)

    counts = {"train": n_train, "val": n_val}
    jobs = [(root, layout, seed, split, i, size) for split in SPLITS for i in range(counts[split])]
    start = time.perf_counter()
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc=f"synth {layout}", unit="img", disable=not progress)
    if workers == 1:
        results = []
        for job in jobs:
            results.append(_write_example(job))
            bar.update()
    else:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=int(workers)) as pool:
            results = []
            for res in pool.map(_write_example, jobs, chunksize=4):
                results.append(res)
                bar.update()
    bar.close()
    seconds = time.perf_counter() - start

    ids = {s: [image_id(layout, s, i) for i in range(counts[s])] for s in SPLITS}
    classes = {image_id(layout, job[3], job[4]): res[0] for job, res in zip(jobs, results)}
    if layout == "pascal":
        for name, split_ids in (("train", ids["train"]), ("val", ids["val"]), ("trainval", ids["train"] + ids["val"])):
            _write_text_atomic(root / "ImageSets/Parts" / f"{name}.txt", _parts_list_text(split_ids, classes))
    for split in SPLITS:
        _write_text_atomic(split_dir / f"{split}.txt", "".join(f"{i}\n" for i in ids[split]))
    _write_text_atomic(root / MARKER_FILE, json.dumps({**marker, "complete": True}, indent=1) + "\n")

    if preview is not None:
        preview.parent.mkdir(parents=True, exist_ok=True)
        picks = [("train", i) for i in range(min(n_train, 4))]
        picks += [("val", i) for i in range(min(n_val, 4 - len(picks)))]
        scenes = [render_scene(scene_rng(seed, layout, s, i), size, layout) for s, i in picks]
        contact_sheet(scenes, layout).save(preview, format="PNG", optimize=True)

    per_image = 5 if layout == "nyud" else 6
    summary = {
        "layout": layout,
        "root": str(root),
        "counts": counts,
        "images": len(jobs),
        "files": per_image * len(jobs) + len(lists) + 1,
        "size": size,
        "seed": seed,
        "seconds": round(seconds, 3),
        "images_per_second": round(len(jobs) / max(seconds, 1e-9), 2),
        "preview": str(preview) if preview is not None else None,
    }
    if layout == "pascal":
        summary["with_people"] = sum(1 for res in results if 15 in res[0])
    return summary


# ----------------------------------------------------------------------------------------------------------
# Contact sheet
# ----------------------------------------------------------------------------------------------------------


def _label_palette(n: int = 256) -> np.ndarray:
    """The usual VOC-style label colours (bits of the label spread over the high bits of R, G, B), (n, 3) uint8."""
    labels = np.arange(n)
    palette = np.zeros((n, 3), dtype=np.int64)
    for bit in range(8):
        for channel in range(3):
            palette[:, channel] |= ((labels >> (3 * bit + channel)) & 1) << (7 - bit)
    return palette.astype(np.uint8)


_DEPTH_STOPS = np.array([[0.07, 0.02, 0.25], [0.25, 0.2, 0.6], [0.1, 0.55, 0.6], [0.45, 0.8, 0.3], [0.98, 0.9, 0.2]])


def _colour_depth(depth: np.ndarray) -> np.ndarray:
    """Depth (H, W) metres -> RGB uint8 (near = dark blue, far = yellow), scaled to the image's range."""
    lo, hi = float(depth.min()), float(depth.max())
    x = (depth - lo) / max(hi - lo, 1e-6) * (len(_DEPTH_STOPS) - 1)
    i = np.clip(np.floor(x).astype(int), 0, len(_DEPTH_STOPS) - 2)
    f = (x - i)[..., None]
    rgb = _DEPTH_STOPS[i] * (1 - f) + _DEPTH_STOPS[i + 1] * f
    return (rgb * 255).astype(np.uint8)


def _panels(scene: dict, layout: str) -> list[tuple[str, np.ndarray, bool]]:
    """(title, RGB uint8 map, is_label) for each column of the contact sheet."""
    palette = _label_palette()
    semseg = scene["semseg"].astype(np.int64) + (1 if layout == "nyud" else 0)
    panels = [("image", scene["image"], False), ("semseg", palette[semseg], True)]
    if layout == "pascal":
        panels.append(("human parts", palette[scene["human_parts"]], True))
        panels.append(("saliency", np.repeat(scene["saliency"][..., None] * 255, 3, -1).astype(np.uint8), True))
    panels += [
        ("depth", _colour_depth(scene["depth"]), False),
        ("normals", _encode_normals(scene["normals"]), False),
        ("boundaries", np.repeat(scene["boundaries"][..., None] * 255, 3, -1).astype(np.uint8), True),
    ]
    return panels


def contact_sheet(scenes: Sequence[dict], layout: str, thumb_height: int = 96) -> object:
    """A PIL image: one row per scene (from :func:`render_scene`), one column per map, titled columns."""
    from PIL import Image, ImageDraw

    layout = _check_layout(layout)
    if not scenes:
        raise ValueError("scenes must hold at least one rendered scene")
    h, w = scenes[0]["depth"].shape
    thumb_w = max(1, round(w * thumb_height / h))
    titles = [t for t, _, _ in _panels(scenes[0], layout)]
    gap, header = 4, 16
    sheet = Image.new("RGB", (len(titles) * (thumb_w + gap) + gap, header + len(scenes) * (thumb_height + gap)),
                      (255, 255, 255))  # fmt: skip
    draw = ImageDraw.Draw(sheet)
    for col, title in enumerate(titles):
        draw.text((gap + col * (thumb_w + gap) + 2, 2), title, fill=(0, 0, 0))
    for row, scene in enumerate(scenes):
        for col, (title, rgb, is_label) in enumerate(_panels(scene, layout)):
            if title == "boundaries":  # 1-pixel lines: keep every one when shrinking (any coverage -> white)
                tile = Image.fromarray(rgb[..., 0]).resize((thumb_w, thumb_height), Image.Resampling.BOX)
                tile = tile.point(lambda v: 255 if v > 0 else 0).convert("RGB")
            else:
                resample = Image.Resampling.NEAREST if is_label else Image.Resampling.BILINEAR
                tile = Image.fromarray(rgb).resize((thumb_w, thumb_height), resample)
            sheet.paste(tile, (gap + col * (thumb_w + gap), header + row * (thumb_height + gap)))
    return sheet
