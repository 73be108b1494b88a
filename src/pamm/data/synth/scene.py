"""A random furnished room and the camera looking into it: what :func:`~pamm.data.synth.render.render_scene` draws.

Two scene styles: ``nyud`` (small rooms with the 12 NYUD-40 classes of :data:`.vocabulary.NYUD_KINDS`, a
Kinect-like camera) and ``pascal`` (larger rooms, a random field of view, adding TV monitors, potted plants,
bottles and articulated people). World frame: metres, y up, the room spans ``[0, width] x [0, height] x [0, depth]``;
camera conventions in :mod:`pamm.data.synth`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .furniture import (
    Placer,
    SceneBuilder,
    add_bed,
    add_bottles,
    add_cabinet,
    add_chair,
    add_chairs_around,
    add_lamp,
    add_person,
    add_plant,
    add_sofa,
    add_table,
    add_tv,
    add_wall_items,
)
from .materials import Material, hsv_to_rgb
from .primitives import Prim, yaw_matrix
from .vocabulary import Kind

__all__ = ["STYLES", "Camera", "Scene", "build_scene"]

STYLES = ("nyud", "pascal")
"""Scene styles (what a room holds and how the camera is set up), named after the dataset they imitate."""


@dataclass
class Camera:
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
class Scene:
    """Everything the renderer needs: room size, camera, primitives, instances, materials and lights.

    ``instances`` holds the kind of each instance; instances 0..5 are the room surfaces (walls x=0, x=W, z=0,
    z=D, floor, ceiling), whose materials are ``room_materials``.
    """

    room: np.ndarray  # (3,) width, height, depth in metres
    camera: Camera
    prims: list[Prim]
    instances: list[Kind]
    materials: list[Material]
    room_materials: list[int]
    lights: list[tuple[np.ndarray, np.ndarray]]  # (position (3,), rgb intensity (3,))
    ambient: float
    waves: np.ndarray  # (3, 4) wave vectors (1/m) and phases of a low-frequency brightness variation


def build_scene(rng: np.random.Generator, size: tuple[int, int], style: str, num_people: int | None) -> Scene:
    """A random room of ``style`` (one of :data:`STYLES`) seen by a camera of ``size`` (height, width) pixels.

    ``num_people``: people to try to place (``pascal`` only; None = random). Draws only from ``rng``.
    """
    height_px, width_px = size
    sb = SceneBuilder(rng)
    if style == "nyud":  # NYUD-v2 rooms are small (bedrooms, offices, kitchens): depth mostly below 6 m
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
    if style == "nyud":
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
    rotation = yaw_matrix(cam_yaw) @ rot_pitch @ rot_roll
    cam_pos = np.array([cam_xz[0], rng.uniform(*height_range), cam_xz[1]])
    camera = Camera(height_px, width_px, focal, cam_pos, rotation)

    # Walls seen by the camera: the one it faces and the two side walls.
    facing = {0: 1, 1: 0, 2: 3, 3: 2}[back_wall]
    walls_in_view = [facing] + [w for w in range(4) if w not in (facing, back_wall)]
    add_wall_items(sb, rng, room, walls_in_view)

    placer = Placer(room, cam_xz, forward_xz, hfov)

    def wall_choice():
        return facing if rng.random() < 0.55 else int(rng.choice(walls_in_view[1:]))

    pascal = style == "pascal"
    room_type = str(rng.choice(["bedroom", "living", "dining", "office"]))
    tables, stands = [], []
    if room_type == "bedroom":
        add_bed(sb, placer, rng, wall_choice())
        for _ in range(int(rng.integers(1, 3))):
            cab = add_cabinet(sb, placer, rng, wall_choice(), low=rng.random() < 0.5)
            if cab is not None and cab["height"] < 1.1:
                stands.append(cab)
        if rng.random() < 0.5:
            add_chair(sb, placer, rng)
    elif room_type == "living":
        add_sofa(sb, placer, rng, wall_choice())
        table = add_table(sb, placer, rng, coffee=True)
        if table is not None:
            tables.append(table)
        for _ in range(int(rng.integers(0, 3))):
            add_chair(sb, placer, rng)
        if rng.random() < 0.7:
            cab = add_cabinet(sb, placer, rng, wall_choice(), low=True)
            if cab is not None:
                stands.append(cab)
    elif room_type == "dining":
        table = add_table(sb, placer, rng)
        if table is not None:
            tables.append(table)
            add_chairs_around(sb, placer, rng, table, int(rng.integers(2, 5)))
        for _ in range(int(rng.integers(0, 3))):
            add_cabinet(sb, placer, rng, wall_choice())
    else:  # office
        table = add_table(sb, placer, rng, against_wall=wall_choice())
        if table is not None:
            tables.append(table)
            add_chairs_around(sb, placer, rng, table, 1)
        for _ in range(int(rng.integers(1, 3))):
            cab = add_cabinet(sb, placer, rng, wall_choice(), low=rng.random() < 0.4)
            if cab is not None and cab["height"] < 1.1:
                stands.append(cab)
        if rng.random() < 0.4:
            add_chair(sb, placer, rng)
    if rng.random() < 0.5:
        add_lamp(sb, placer, rng)

    if pascal:
        if stands and rng.random() < 0.7:
            add_tv(sb, rng, stands[0])
        elif tables and room_type == "office" and rng.random() < 0.6:
            add_tv(sb, rng, tables[0])
        for table in tables:
            if rng.random() < 0.6:
                add_bottles(sb, rng, table, int(rng.integers(1, 4)))
        for _ in range(int(rng.choice([0, 0, 1, 1, 2]))):
            add_plant(sb, placer, rng)
        if num_people is None:
            num_people = int(rng.choice([0, 0, 1, 1, 1, 2, 2, 3]))
        for _ in range(num_people):
            add_person(sb, placer, rng)

    lights = []
    for _ in range(int(rng.integers(1, 3))):
        pos = np.array([rng.uniform(0.2, 0.8) * room[0], room[1] - 0.25, rng.uniform(0.2, 0.8) * room[2]])
        tint = hsv_to_rgb(rng.uniform(0.05, 0.6), rng.uniform(0.0, 0.25), 1.0)
        lights.append((pos, tint * rng.uniform(0.8, 1.6)))
    waves = np.concatenate([rng.normal(0.0, 1.2, (3, 3)), rng.uniform(0, 2 * np.pi, (3, 1))], 1)
    return Scene(room, camera, sb.prims, sb.instances, sb.materials, room_materials, lights, rng.uniform(0.2, 0.4),
                 waves)  # fmt: skip
