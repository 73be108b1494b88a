"""Contact sheet of rendered scenes: one row per scene, one titled column per map.

Maps are coloured by :mod:`pamm.viz`, exactly as ``pamm predict`` draws predictions and ground truth: the dataset's
label palettes, Turbo depth (each scene over its own 1st-99th percentile range), normals as ``(n + 1) / 2``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from pamm.viz import colorize_depth, colorize_labels, colorize_normals, colorize_probability, depth_range, palette_for

from .render import check_layout

__all__ = ["contact_sheet"]


def _panels(scene: Mapping[str, Any], style: str) -> list[tuple[str, np.ndarray, bool]]:
    """(title, RGB uint8 (H, W, 3) map, is_label) of each column for one scene of ``style``."""
    panels = [("image", scene["image"], False),
              ("semseg", colorize_labels(scene["semseg"], palette_for(style, "semseg")), True)]  # fmt: skip
    if style == "pascal":
        panels.append(("human parts", colorize_labels(scene["human_parts"], palette_for(style, "human_parts")), True))
        panels.append(("saliency", colorize_probability(scene["saliency"]), True))
    panels += [
        ("depth", colorize_depth(scene["depth"], *depth_range(scene["depth"])), False),
        ("normals", colorize_normals(scene["normals"]), False),
        ("boundaries", colorize_probability(scene["boundaries"]), True),
    ]
    return panels


def contact_sheet(scenes: Sequence[Mapping[str, Any]], layout: str, thumb_height: int = 96) -> Image.Image:
    """A PIL image: one row per scene (from :func:`~pamm.data.synth.render_scene` with ``layout``), one column
    per map (image, semseg, [human parts, saliency,] depth, normals, boundaries), titled columns."""
    style = check_layout(layout)
    if not scenes:
        raise ValueError("scenes must hold at least one rendered scene")
    h, w = scenes[0]["depth"].shape
    thumb_w = max(1, round(w * thumb_height / h))
    titles = [t for t, _, _ in _panels(scenes[0], style)]
    gap, header = 4, 16
    sheet = Image.new("RGB", (len(titles) * (thumb_w + gap) + gap, header + len(scenes) * (thumb_height + gap)),
                      (255, 255, 255))  # fmt: skip
    draw = ImageDraw.Draw(sheet)
    for col, title in enumerate(titles):
        draw.text((gap + col * (thumb_w + gap) + 2, 2), title, fill=(0, 0, 0))
    for row, scene in enumerate(scenes):
        for col, (title, rgb, is_label) in enumerate(_panels(scene, style)):
            if title == "boundaries":  # 1-pixel lines: keep every one when shrinking (any coverage -> white)
                tile = Image.fromarray(rgb[..., 0]).resize((thumb_w, thumb_height), Image.Resampling.BOX)
                tile = tile.point(lambda v: 255 if v > 0 else 0).convert("RGB")
            else:
                resample = Image.Resampling.NEAREST if is_label else Image.Resampling.BILINEAR
                tile = Image.fromarray(rgb).resize((thumb_w, thumb_height), resample)
            sheet.paste(tile, (gap + col * (thumb_w + gap), header + row * (thumb_height + gap)))
    return sheet
