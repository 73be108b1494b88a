"""Vectorised ray casting of a scene: the picture and its exact ground truth (:func:`render_scene`).

Every pixel's ray is intersected with the room box and, inside each primitive's conservative screen rectangle, with
the primitive; the nearest hit gives depth, normal, instance and part. Surfaces are lit by the scene's point lights
plus ambient light (Lambertian, no shadows), tone-mapped with a little sensor noise and encoded as sRGB.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .materials import surface_albedo
from .primitives import Box, Capsule, Cylinder, Prim, Sphere
from .scene import STYLES, Camera, Scene, build_scene
from .vocabulary import GROUP_OF_CODE

__all__ = ["MIN_SIDE", "MAX_SIDE", "render_scene", "boundaries", "check_layout", "check_size", "parse_size"]

MIN_SIDE, MAX_SIDE = 32, 4096
"""Smallest and largest image side :func:`render_scene` accepts, pixels."""


# Room surfaces 0..5 (walls x=0, x=W, z=0, z=D, floor, ceiling): inward normals.
_ROOM_NORMALS = np.array([[1, 0, 0], [-1, 0, 0], [0, 0, 1], [0, 0, -1], [0, 1, 0], [0, -1, 0]], dtype=float)


def _screen_windows(camera: Camera, prims: Sequence[Prim]) -> list[tuple[int, int, int, int] | None]:
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


def _cast(scene: Scene, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


def _surface(scene: Scene, t: np.ndarray, prim_map: np.ndarray, dirs: np.ndarray
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
        kinds = (Box, Sphere, Cylinder, Capsule)
        kind = np.array([kinds.index(type(p)) for p in prims] + [-1])  # the -1 entry catches room pixels
        pixel_kind = kind[np.where(prim >= 0, prim, len(prims))]
    for code, name in enumerate(("Box", "Sphere", "Cylinder", "Capsule")):
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

        if name == "Box":
            center, half = gather("center", Box, np.zeros(3)), gather("half", Box, np.ones(3))
            yaw = gather("yaw", Box, 0.0)
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
        elif name == "Sphere":
            center, radius = gather("center", Sphere, np.zeros(3)), gather("radius", Sphere, 1.0)
            n = (p - center) / radius
            local[:, sel], local_normals[:, sel] = p - center, n
        elif name == "Cylinder":
            base, top = gather("base", Cylinder, np.zeros(3)), gather("top", Cylinder, 1.0)
            radius = gather("radius", Cylinder, 1.0)
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
            a = gather("a", Capsule, np.zeros(3))
            ba = gather("b", Capsule, np.ones(3)) - a
            radius = gather("radius", Capsule, 1.0)
            pa = p - a
            along = np.clip((pa * ba).sum(0) / (ba * ba).sum(0), 0.0, 1.0)
            n = (pa - along * ba) / radius
            local[:, sel], local_normals[:, sel] = pa, n
        normals[:, sel] = n
    normals /= np.sqrt(normals[0] ** 2 + normals[1] ** 2 + normals[2] ** 2)
    albedo = surface_albedo(scene.materials, material, local, local_normals, points, scene.waves)
    emission = np.array([m.emission for m in scene.materials], dtype=np.float32)[material]
    return points, normals, albedo, emission


_GAMMA_TABLE = (255.0 * np.linspace(0.0, 1.0, 4096) ** (1 / 2.2) + 0.5).astype(np.float32)


def _shade(scene: Scene, points, normals, albedo, emission, rng: np.random.Generator) -> np.ndarray:
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


def boundaries(instances: np.ndarray, depth: np.ndarray, rel_jump: float = 0.1) -> np.ndarray:
    """1-pixel boundaries (H, W) uint8 {0, 1}.

    Between two 4-neighbours that differ in instance or whose depths differ by more than ``rel_jump`` (relative),
    the pixel nearer to the camera (the occluding side) is marked, so lines are one pixel wide.
    """
    out = np.zeros(instances.shape, dtype=bool)
    for axis in (0, 1):
        a = [slice(None), slice(None)]
        b = [slice(None), slice(None)]
        a[axis], b[axis] = slice(None, -1), slice(1, None)
        first, second = tuple(a), tuple(b)
        d_a, d_b = depth[first], depth[second]
        differ = (instances[first] != instances[second]) | (np.abs(d_a - d_b) > rel_jump * np.minimum(d_a, d_b))
        first_nearer = d_a <= d_b
        out[first] |= differ & first_nearer
        out[second] |= differ & ~first_nearer
    return out.astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------
# Public rendering API
# ----------------------------------------------------------------------------------------------------------


def check_layout(layout) -> str:
    """``layout`` if it names a scene style (:data:`~pamm.data.synth.scene.STYLES`), else a ValueError."""
    if layout not in STYLES:
        raise ValueError(f"layout must be one of {list(STYLES)}, got {layout!r}")
    return layout


def check_size(size) -> tuple[int, int]:
    """``size`` as (height, width) ints if it is a pair of integers in [MIN_SIDE, MAX_SIDE], else a ValueError."""
    ok = (isinstance(size, (tuple, list)) and len(size) == 2
          and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in size))  # fmt: skip
    if not ok:
        raise ValueError(f"size must be a pair of integers (height, width), got {size!r}")
    if not all(MIN_SIDE <= s <= MAX_SIDE for s in size):
        raise ValueError(f"size must have height and width in [{MIN_SIDE}, {MAX_SIDE}] pixels, got {tuple(size)}")
    return int(size[0]), int(size[1])


def parse_size(text: str) -> tuple[int, int]:
    """``"192x256"`` -> (192, 256) (height x width), validated like :func:`check_size`."""
    parts = str(text).lower().replace("×", "x").split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"size must look like HEIGHTxWIDTH, e.g. 192x256, got {text!r}")
    return check_size((int(parts[0]), int(parts[1])))


def render_scene(rng: np.random.Generator, size: tuple[int, int], layout: str, *,
                 num_people: int | None = None) -> dict:  # fmt: skip
    """Render one random scene and its exact ground truth.

    Args:
        rng: source of randomness (:func:`~pamm.data.synth.scene_rng` gives the one of image ``index`` of a split).
        size: (height, width) in pixels.
        layout: ``"nyud"`` (12 NYUD-40 classes) or ``"pascal"`` (adds TV monitors, plants, bottles, people).
        num_people: PASCAL only: number of people to try to place (None = random, 0..3, about 1/4 with none).
            People that do not fit in the room are skipped.

    Returns a dict (H, W = size):
        ``image``: uint8 (H, W, 3) sRGB.
        ``depth``: float32 (H, W) z-depth in metres, > 0 everywhere.
        ``normals``: float32 (H, W, 3) unit normals, x right, y down, z towards the viewer (see :mod:`pamm.data.synth`).
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
    layout = check_layout(layout)
    height, width = check_size(size)
    if num_people is not None and (layout != "pascal" or not 0 <= int(num_people) <= 6):
        raise ValueError(f"num_people must be None or 0..6 and only with layout 'pascal', got {num_people!r}")
    scene = build_scene(rng, (height, width), layout, num_people)
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
        "boundaries": boundaries(instances, depth),
        "instances": instances,
    }
    visible = np.flatnonzero(np.bincount(instances.reshape(-1), minlength=len(kinds)))
    people = sum(1 for i in visible if kinds[i].name == "person")
    if layout == "pascal":
        prim_part = np.array([p.part for p in scene.prims] + [0] * 6, dtype=np.uint8)
        fine = prim_part[prim_map]
        out["saliency"] = np.array([k.salient for k in kinds], dtype=np.uint8)[instances]
        out["human_parts"] = GROUP_OF_CODE[fine]
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
