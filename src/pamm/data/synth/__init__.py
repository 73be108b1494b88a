"""Procedural indoor scenes written in the exact NYUDv2 and PASCAL-Context (ATRC / MTI-Net) file layouts.

Real NYUD-v2 and PASCAL-Context data cannot be downloaded everywhere, so this package renders small synthetic
datasets whose files have exactly the names, image modes, dtypes, value encodings and ``.mat`` structures of
the real ones. The real loaders read them through the same code path they use for real data.

Scenes are rendered by vectorised ray casting in NumPy: a pinhole camera with a random pose and field of view
stands inside a box-shaped room (floor, ceiling, four walls with doors, windows and pictures) furnished with
objects built from boxes, spheres, vertical cylinders and capsules (cabinets, beds, chairs, sofas, tables,
lamps; for PASCAL also TV monitors, potted plants, bottles and articulated people). Surfaces carry procedural
textures (plain, checker, stripes, wood, tiles) in per-scene random colours and are lit by a couple of point
lights plus ambient light (Lambertian, no shadows). The ray caster gives exact ground truth.

One job per module:

* :mod:`.vocabulary`: object kinds in every label space (NYUD-40, VOC, PASCAL-Context, saliency, body parts);
* :mod:`.primitives`: ray-castable boxes, spheres, cylinders and capsules;
* :mod:`.materials`: procedural textures;
* :mod:`.furniture`: furniture, people and wall items, and the floor planner;
* :mod:`.scene`: the room, its furnishing by room type, the camera and the lights;
* :mod:`.render`: ray casting, shading and the ground truth (:func:`render_scene`);
* :mod:`.layouts`: the NYUD and PASCAL dataset layouts (file names, encodings by :mod:`pamm.data.formats`, split
  lists);
* :mod:`.dataset`: :func:`synthesize`, which writes a whole dataset safely;
* :mod:`.preview`: the contact sheet, coloured by :mod:`pamm.viz`.

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

from .dataset import MARKER_FILE, SynthOutputExistsError, read_marker, scene_rng, synthesize
from .layouts import DATASET_FOLDERS, LAYOUTS, SPLITS, image_id
from .preview import contact_sheet
from .render import MAX_SIDE, MIN_SIDE, parse_size, render_scene
from .vocabulary import FINE_PART_NAMES, HUMAN_PART_GROUP, KINDS, NYUD_KINDS

__all__ = [
    "LAYOUTS",
    "DATASET_FOLDERS",
    "SPLITS",
    "FINE_PART_NAMES",
    "HUMAN_PART_GROUP",
    "KINDS",
    "MARKER_FILE",
    "MIN_SIDE",
    "MAX_SIDE",
    "NYUD_KINDS",
    "SynthOutputExistsError",
    "image_id",
    "scene_rng",
    "parse_size",
    "read_marker",
    "render_scene",
    "synthesize",
    "contact_sheet",
]
