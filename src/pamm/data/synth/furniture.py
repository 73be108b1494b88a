"""Furniture, people and wall items built from primitives, and the floor planner that keeps them apart.

Each ``add_*`` builder places one instance through a :class:`SceneBuilder` (which collects instances, materials and
primitives) and a :class:`Placer` (which keeps object footprints on the floor from overlapping each other and the
camera). Object-local frame: front = +z, floor at y = 0; world frame: metres, y up (see :mod:`pamm.data.synth`).
Every random draw comes from the scene's generator, in a fixed order, so a seed gives the same room.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .materials import Material, hsv_to_rgb
from .primitives import Box, Capsule, Cylinder, Prim, Sphere, yaw_matrix
from .vocabulary import KINDS, PART_CODE, Kind

__all__ = [
    "SceneBuilder", "Placer", "local_to_world", "add_table", "add_chair", "add_chairs_around", "add_sofa",
    "add_cabinet", "add_bed", "add_lamp", "add_tv", "add_bottles", "add_plant", "add_person", "add_wall_items",
]  # fmt: skip


class SceneBuilder:
    """Collects instances, materials and primitives while a scene is being assembled."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.prims: list[Prim] = []
        self.instances: list[Kind] = []
        self.materials: list[Material] = []

    def colour(self, sat=(0.0, 0.9), val=(0.15, 0.95), hue=(0.0, 1.0)) -> np.ndarray:
        r = self.rng
        return hsv_to_rgb(r.uniform(*hue) % 1.0, r.uniform(*sat), r.uniform(*val))

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
        self.materials.append(Material(pattern, a, b, scale_m, angle, emission, float(r.uniform(0, 2 * np.pi))))
        return len(self.materials) - 1

    def instance(self, kind: str) -> int:
        self.instances.append(KINDS[kind])
        return len(self.instances) - 1

    def box(self, inst, mat, center, size, yaw=0.0, part="") -> None:
        self.prims.append(Box(inst, mat, PART_CODE[part], np.asarray(center, float), np.asarray(size, float) / 2,
                              float(yaw)))  # fmt: skip

    def sphere(self, inst, mat, center, radius, part="") -> None:
        self.prims.append(Sphere(inst, mat, PART_CODE[part], np.asarray(center, float), float(radius)))

    def cylinder(self, inst, mat, base, top, radius, part="") -> None:
        self.prims.append(Cylinder(inst, mat, PART_CODE[part], np.asarray(base, float), float(top), float(radius)))

    def capsule(self, inst, mat, a, b, radius, part="") -> None:
        self.prims.append(Capsule(inst, mat, PART_CODE[part], np.asarray(a, float), np.asarray(b, float),
                                  float(radius)))  # fmt: skip


class Placer:
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


def local_to_world(xz: np.ndarray, yaw: float, local: Sequence[float]) -> np.ndarray:
    """Object-local point (x, y, z) -> world, for an object standing at floor position ``xz`` rotated by yaw."""
    p = yaw_matrix(yaw) @ np.asarray(local, float)
    return np.array([xz[0] + p[0], p[1], xz[1] + p[2]])


# --- builders: each places one instance; local frame: front = +z, floor at y = 0 ------------------------------


def _fabric(sb: SceneBuilder) -> int:
    return sb.material(("plain", "plain", "checker", "stripes"), scale=(0.05, 0.25))


def _wooden(sb: SceneBuilder) -> int:
    return sb.material(("wood", "plain", "wood"), scale=(0.04, 0.15))


def add_table(sb, placer, rng, coffee=False, against_wall=None):
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
        base = local_to_world(xz, yaw, (0, 0, 0))
        sb.cylinder(inst, mat, base + (0, height - top_t, 0), height, radius)
        sb.cylinder(inst, mat, base, height - top_t, 0.04)
        sb.cylinder(inst, mat, base, 0.03, radius * 0.5)
    else:
        sb.box(inst, mat, local_to_world(xz, yaw, (0, height - top_t / 2, 0)), (size[0], top_t, size[1]), yaw)
        leg = 0.05
        for sx in (-1, 1):
            for sz in (-1, 1):
                local = (sx * (size[0] / 2 - 0.06), (height - top_t) / 2, sz * (size[1] / 2 - 0.06))
                sb.box(inst, mat, local_to_world(xz, yaw, local), (leg, height - top_t, leg), yaw)
    return {"xz": xz, "yaw": yaw, "size": size, "height": height, "round": round_top}


def add_chair(sb, placer, rng, spot=None):
    w, d = rng.uniform(0.4, 0.5), rng.uniform(0.4, 0.5)
    if spot is None:
        spot = placer.free_spot(rng, (w, d), dist=(1.3, 4.0))
        if spot is None:
            return
    xz, yaw = spot
    inst = sb.instance("chair")
    mat = _wooden(sb) if rng.random() < 0.5 else _fabric(sb)
    seat_h, seat_t = rng.uniform(0.42, 0.5), 0.05
    sb.box(inst, mat, local_to_world(xz, yaw, (0, seat_h - seat_t / 2, 0)), (w, seat_t, d), yaw)
    leg = 0.04
    for sx in (-1, 1):
        for sz in (-1, 1):
            local = (sx * (w / 2 - leg / 2), (seat_h - seat_t) / 2, sz * (d / 2 - leg / 2))
            sb.box(inst, mat, local_to_world(xz, yaw, local), (leg, seat_h - seat_t, leg), yaw)
    back_h = rng.uniform(0.35, 0.5)
    sb.box(inst, mat, local_to_world(xz, yaw, (0, seat_h + back_h / 2, -d / 2 + 0.025)), (w, back_h, 0.05), yaw)


def add_chairs_around(sb, placer, rng, table, count):
    sides = rng.permutation(4)[:count]
    for side in sides:
        sx, sz = table["size"]
        offset_local = [(0, sz / 2 + 0.28), (0, -sz / 2 - 0.28), (sx / 2 + 0.28, 0), (-sx / 2 - 0.28, 0)][side]
        p = yaw_matrix(table["yaw"]) @ np.array([offset_local[0], 0, offset_local[1]])
        xz = table["xz"] + np.array([p[0], p[2]])
        to_table = table["xz"] - xz
        yaw = math.atan2(to_table[0], to_table[1]) + rng.uniform(-0.25, 0.25)  # chair front (+z) faces the table
        box = placer.footprint(xz, (0.5, 0.5), yaw)
        if placer.fits(box, margin=0.02):
            placer.taken.append(box)
            add_chair(sb, placer, rng, spot=(xz, yaw))


def add_sofa(sb, placer, rng, wall):
    size = np.array([rng.uniform(1.5, 2.4), rng.uniform(0.8, 0.95)])
    spot = placer.wall_spot(rng, size, wall)
    if spot is None:
        return None
    xz, yaw = spot
    inst, mat = sb.instance("sofa"), _fabric(sb)
    w, d = size
    seat_h, back_h, arm_h, arm_w, back_d = rng.uniform(0.38, 0.46), rng.uniform(0.75, 0.9), 0.62, 0.17, 0.2
    sb.box(inst, mat, local_to_world(xz, yaw, (0, seat_h / 2, back_d / 2)), (w - 2 * arm_w, seat_h, d - back_d), yaw)
    sb.box(inst, mat, local_to_world(xz, yaw, (0, back_h / 2, -d / 2 + back_d / 2)), (w, back_h, back_d), yaw)
    for sx in (-1, 1):
        sb.box(inst, mat, local_to_world(xz, yaw, (sx * (w / 2 - arm_w / 2), arm_h / 2, back_d / 2)),
               (arm_w, arm_h, d - back_d), yaw)  # fmt: skip
    return {"xz": xz, "yaw": yaw, "size": size}


def add_cabinet(sb, placer, rng, wall, low=False):
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
    sb.box(inst, mat, local_to_world(xz, yaw, (0, height / 2, 0)), (w, height, d), yaw)
    n_doors = 2 if w > 0.8 else 1
    door_w = (w - 0.06 - 0.02 * (n_doors - 1)) / n_doors
    for k in range(n_doors):
        x = -w / 2 + 0.03 + door_w / 2 + k * (door_w + 0.02)
        sb.box(inst, panel, local_to_world(xz, yaw, (x, height / 2, d / 2 + 0.01)), (door_w, height - 0.08, 0.02),
               yaw)  # fmt: skip
    return {"xz": xz, "yaw": yaw, "size": size, "height": height}


def add_bed(sb, placer, rng, wall):
    size = np.array([rng.uniform(1.0, 1.8), rng.uniform(1.9, 2.1)])
    spot = placer.wall_spot(rng, size, wall)
    if spot is None:
        return
    xz, yaw = spot
    inst = sb.instance("bed")
    frame, sheet, pillow = _wooden(sb), _fabric(sb), sb.material(("plain",), sat=(0.0, 0.3), val=(0.5, 0.95))
    w, d = size
    base_h, mattress_h = rng.uniform(0.25, 0.35), rng.uniform(0.15, 0.25)
    sb.box(inst, frame, local_to_world(xz, yaw, (0, base_h / 2, 0)), (w, base_h, d), yaw)
    sb.box(inst, sheet, local_to_world(xz, yaw, (0, base_h + mattress_h / 2, 0.03)), (w - 0.04, mattress_h, d - 0.1),
           yaw)  # fmt: skip
    head_h = rng.uniform(0.9, 1.2)
    sb.box(inst, frame, local_to_world(xz, yaw, (0, head_h / 2, -d / 2 + 0.03)), (w, head_h, 0.06), yaw)
    top = base_h + mattress_h
    n_pillows = 2 if w > 1.3 else 1
    for k in range(n_pillows):
        x = (k - (n_pillows - 1) / 2) * w / 2
        sb.box(inst, pillow, local_to_world(xz, yaw, (x, top + 0.06, -d / 2 + 0.3)), (min(0.55, w / n_pillows - 0.08),
               0.12, 0.35), yaw)  # fmt: skip


def add_lamp(sb, placer, rng):
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


def add_tv(sb, rng, stand):
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
    sb.box(inst, body, local_to_world(xz, yaw, (0, top + foot_h / 2, z_off)), (0.25, foot_h, 0.18), yaw)
    center_y = top + foot_h + h / 2
    sb.box(inst, body, local_to_world(xz, yaw, (0, center_y, z_off)), (w, h, 0.05), yaw)
    sb.box(inst, screen, local_to_world(xz, yaw, (0, center_y, z_off + 0.03)), (w - 0.05, h - 0.05, 0.012), yaw,
           part="screen")  # fmt: skip


def add_bottles(sb, rng, table, count):
    for _ in range(count):
        inst = sb.instance("bottle")
        mat = sb.material(("plain",), emission=0.1)
        r_body, h_body = rng.uniform(0.03, 0.045), rng.uniform(0.17, 0.27)
        if table["round"]:
            ang, rad = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.6) * table["size"][0] / 2
            local = (rad * math.cos(ang), 0.0, rad * math.sin(ang))
        else:
            local = (rng.uniform(-0.4, 0.4) * table["size"][0], 0.0, rng.uniform(-0.35, 0.35) * table["size"][1])
        base = local_to_world(table["xz"], table["yaw"], local) + (0, table["height"], 0)
        sb.cylinder(inst, mat, base, base[1] + h_body, r_body)
        sb.cylinder(inst, mat, base + (0, h_body, 0), base[1] + h_body + rng.uniform(0.06, 0.09), r_body * 0.4)


def add_plant(sb, placer, rng):
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
    return yaw_matrix(yaw) @ local


def add_person(sb, placer, rng):
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
        return local_to_world(xz, yaw, np.asarray(local) * s)

    hip_y, shoulder_y = 0.93, 1.42
    # Legs: upper leg swings in a walking range, the knee only bends backwards.
    feet = []
    for side, name in ((1.0, "l"), (-1.0, "r")):
        hip = world((side * 0.1, hip_y, 0))
        swing = rng.uniform(-0.45, 0.45)
        knee = hip + 0.44 * s * _limb_dir(swing, rng.uniform(0.0, 0.12), yaw, side)
        ankle = knee + 0.42 * s * _limb_dir(swing - rng.uniform(0.0, 0.7), 0.0, yaw, side)
        toe = ankle + 0.16 * s * (yaw_matrix(yaw) @ np.array([0, 0, 1.0]))
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


def add_wall_items(sb, rng, room, walls_in_view):
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
