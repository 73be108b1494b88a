"""Contact sheet of rendered scenes: one row per scene, one titled column per map.

Maps are coloured by :mod:`pamm.viz`, exactly as ``pamm predict`` draws predictions and ground truth: the dataset's
label palettes, Turbo depth (each scene over its own 1st-99th percentile range), normals as ``(n + 1) / 2``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from pamm.tasks import DatasetSpec
from pamm.viz import colorize_depth, colorize_labels, colorize_normals, colorize_probability, depth_range, palette_for

from .render import check_layout

__all__ = ["contact_sheet"]

_COLUMNS = ("semseg", "human_parts", "saliency", "depth", "normals", "boundaries")
"""The maps a sheet shows, in this order, when a scene holds them (a generic layout's scenes hold its tasks')."""


def _panels(scene: Mapping[str, Any], labels: str | DatasetSpec) -> list[tuple[str, np.ndarray, bool]]:
    """(title, RGB uint8 (H, W, 3) map, is_label) of each column for one scene, classes coloured as ``labels``."""
    panels = [("image", scene["image"], False)]
    for key in (k for k in _COLUMNS if k in scene):
        value = scene[key]
        if key in ("semseg", "human_parts"):
            title = "human parts" if key == "human_parts" else key
            panels.append((title, colorize_labels(value, palette_for(labels, key)), True))
        elif key == "depth":
            panels.append(("depth", colorize_depth(value, *depth_range(value)), False))
        elif key == "normals":
            panels.append(("normals", colorize_normals(value), False))
        else:
            panels.append((key, colorize_probability(value), True))
    return panels


def contact_sheet(scenes: Sequence[Mapping[str, Any]], layout: str | DatasetSpec,
                  thumb_height: int = 96) -> Image.Image:  # fmt: skip
    """A PIL image: one row per scene (from :func:`~pamm.data.synth.render_scene` with ``layout``), one column
    per map (image, semseg, [human parts, saliency,] depth, normals, boundaries), titled columns.

    ``layout`` may instead be a :class:`~pamm.tasks.DatasetSpec` whose palettes colour the classes; the scenes then
    hold the maps to show under the keys above (a generic layout's ``preview_scene``)."""
    labels = layout if isinstance(layout, DatasetSpec) else check_layout(layout)
    if not scenes:
        raise ValueError("scenes must hold at least one rendered scene")
    h, w = scenes[0]["image"].shape[:2]
    thumb_w = max(1, round(w * thumb_height / h))
    titles = [t for t, _, _ in _panels(scenes[0], labels)]
    gap, header = 4, 16
    sheet = Image.new("RGB", (len(titles) * (thumb_w + gap) + gap, header + len(scenes) * (thumb_height + gap)),
                      (255, 255, 255))  # fmt: skip
    draw = ImageDraw.Draw(sheet)
    for col, title in enumerate(titles):
        draw.text((gap + col * (thumb_w + gap) + 2, 2), title, fill=(0, 0, 0))
    for row, scene in enumerate(scenes):
        for col, (title, rgb, is_label) in enumerate(_panels(scene, labels)):
            if title == "boundaries":  # 1-pixel lines: keep every one when shrinking (any coverage -> white)
                tile = Image.fromarray(rgb[..., 0]).resize((thumb_w, thumb_height), Image.Resampling.BOX)
                tile = tile.point(lambda v: 255 if v > 0 else 0).convert("RGB")
            else:
                resample = Image.Resampling.NEAREST if is_label else Image.Resampling.BILINEAR
                tile = Image.fromarray(rgb).resize((thumb_w, thumb_height), resample)
            sheet.paste(tile, (gap + col * (thumb_w + gap), header + row * (thumb_height + gap)))
    return sheet
