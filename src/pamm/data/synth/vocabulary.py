"""What the synthetic scenes contain, in every label space the dataset layouts use.

Each object kind (wall, chair, person, ...) has a NYUD-40 class, a PASCAL VOC class, a PASCAL-Context label and a
saliency flag; person pieces carry PASCAL-Part names, grouped into the six human parts of the multi-task loaders.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pamm.tasks import NYUD_CLASSES, PASCAL_CLASSES

__all__ = ["Kind", "KINDS", "NYUD_KINDS", "FINE_PART_NAMES", "HUMAN_PART_GROUP", "PART_CODE", "GROUP_OF_CODE"]


@dataclass(frozen=True)
class Kind:
    """What an instance is, in every label space the layouts use.

    Attributes:
        name: short name used inside this package.
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


def _kind(name: str, nyud_name: str, voc_name: str, context: int, salient: bool) -> Kind:
    return Kind(name, NYUD_CLASSES.index(nyud_name), PASCAL_CLASSES.index(voc_name), context, salient)


# Context ids are those of PASCAL-Context's 459-label list; the VOC objects use the labels the real loader maps
# VOC classes to (chair 72, table 397, sofa 368, tvmonitor 427, pottedplant 308, bottle 34, person 284).
KINDS: dict[str, Kind] = {
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

PART_CODE = {name: i for i, name in enumerate(FINE_PART_NAMES)}
"""Part name -> its index in :data:`FINE_PART_NAMES`."""

GROUP_OF_CODE = np.array([HUMAN_PART_GROUP.get(n, 0) for n in FINE_PART_NAMES], dtype=np.uint8)
"""Index into :data:`FINE_PART_NAMES` -> the 6-part label (0 = not a person part), (19,) uint8."""
