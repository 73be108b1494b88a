"""Colour maps, label palettes and prediction panels, with NumPy and Pillow only (no matplotlib).

Map formats (what :func:`make_panel` and the ``colorize_*`` functions take; the predictor's ``.npy`` outputs):

- ``semseg`` / ``human_parts``: class ids (H, W), any integer dtype; 255 (ignore) is drawn in :data:`IGNORE_RGB`.
- ``depth``: metres (H, W) float; values <= 0 or non-finite are invalid (ground truth marks missing depth with 0).
- ``normals``: (H, W, 3) (or channel-first (3, H, W)) vectors in [-1, 1]; zero, non-finite or 255-valued vectors are
  invalid (the ground truth's ignore value).
- ``edge`` / ``sal``: probabilities (H, W) in [0, 1] (ground truth: {0, 1}); values outside [0, 1] (e.g. 255) are
  invalid.

Torch tensors are accepted too (moved to the CPU); a leading channel of size 1 is squeezed.

Palettes: PASCAL-Context semantic classes and human parts use the PASCAL VOC colour map (background black,
aeroplane dark red, ...: what the community's visualisations use); NYUD-40 uses 40 colours chosen by farthest-point
sampling in CIELAB (maximally distinct, far from white and from :data:`IGNORE_RGB`); a generic dataset's classes
follow its manifest (``colors``: those colours, ``distinct`` (the default for semseg) or ``voc``). Depth uses
Turbo (Google's rainbow map designed for depth, evaluated from its published polynomial fit).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .tasks import IGNORE_INDEX, TASKS, DatasetSpec, dataset_spec

__all__ = [
    "IGNORE_RGB", "voc_palette", "distinct_palette", "label_space", "palette_for", "turbo", "colorize_labels",
    "colorize_depth", "colorize_normals", "colorize_probability", "colorize_maps", "scale_bar", "legend", "make_panel",
    "depth_range",
]  # fmt: skip

IGNORE_RGB = (224, 224, 192)
"""Colour of ignored / invalid pixels (the PASCAL VOC 'void' colour)."""

_BACKGROUND = (255, 255, 255)
_TEXT = (0, 0, 0)
_LINE = 13  # text line height of the default font, pixels
_MIN_COLUMN = 168  # narrowest panel column: room for a legend entry or a scale bar with its labels

# Turbo, polynomial fit by R. Du of A. Mikhailov's colour map (Google, 2019): channel = sum_k c_k x^k, k = 0..5.
_TURBO = np.array([
    [0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943],
    [0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604],
    [0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973],
])  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# Palettes


def voc_palette(n: int) -> np.ndarray:
    """The PASCAL VOC colour map: label bits spread over the high bits of R, G, B. (n, 3) uint8."""
    labels = np.arange(n)
    colours = np.zeros((n, 3), dtype=np.int64)
    for bit in range(8):
        for channel in range(3):
            colours[:, channel] |= ((labels >> (3 * bit + channel)) & 1) << (7 - bit)
    return colours.astype(np.uint8)


def _srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB uint8 (..., 3) -> CIELAB (D65) float (..., 3)."""
    c = rgb.astype(np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = linear @ np.array([[0.4124564, 0.2126729, 0.0193339], [0.3575761, 0.7151522, 0.1191920],
                             [0.1804375, 0.0721750, 0.9503041]])  # fmt: skip
    xyz = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


@cache
def distinct_palette(n: int) -> np.ndarray:
    """``n`` mutually distinct colours (n, 3) uint8, deterministic: greedy farthest-point sampling in CIELAB over
    a 9-level sRGB grid, starting from white and :data:`IGNORE_RGB` (so no colour is close to either)."""
    levels = np.array([0, 32, 64, 96, 128, 160, 192, 224, 255])
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(-1, 3)
    if n > len(grid) - 2:
        raise ValueError(f"distinct_palette supports up to {len(grid) - 2} colours, got {n}")
    lab = _srgb_to_lab(grid)
    avoid = _srgb_to_lab(np.array([_BACKGROUND, IGNORE_RGB]))
    nearest = np.min(np.linalg.norm(lab[:, None] - avoid[None], axis=-1), axis=1)
    chosen = []
    for _ in range(n):
        best = int(np.argmax(nearest))
        chosen.append(best)
        nearest = np.minimum(nearest, np.linalg.norm(lab - lab[best], axis=-1))
    return grid[chosen].astype(np.uint8)


def label_space(meta: Any) -> DatasetSpec:
    """The label space that colours and names classes: ``meta`` is a dataset name, a
    :class:`~pamm.tasks.DatasetSpec`, or a model's :class:`~pamm.models.meta.ModelMeta` (its ``spec``; anything with a
    ``dataset`` name will do)."""
    if isinstance(meta, (str, DatasetSpec)):
        return dataset_spec(meta)
    spec = getattr(meta, "spec", None)
    return spec if isinstance(spec, DatasetSpec) else dataset_spec(meta.dataset)


def palette_for(dataset: str | DatasetSpec, task: str) -> np.ndarray:
    """The palette (K, 3) uint8 of a classification task of a dataset (a name or a
    :class:`~pamm.tasks.DatasetSpec`): its ``palettes`` entry, explicit colours or ``"distinct"`` (NYUD-40, and a
    generic dataset's semseg unless its manifest says otherwise), else the PASCAL VOC colour map."""
    spec = dataset_spec(dataset)
    classes = len(spec.class_names[task])
    palette = spec.palettes.get(task, "voc")
    if not isinstance(palette, str):
        return np.asarray(palette, dtype=np.uint8).reshape(classes, 3)
    return distinct_palette(classes) if palette == "distinct" else voc_palette(classes)


# ----------------------------------------------------------------------------------------------------------
# Maps to colours


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().float().cpu().numpy() if value.is_floating_point() else value.detach().cpu().numpy()
    return np.asarray(value)


def _plane(value: Any, what: str) -> np.ndarray:
    """A single-channel map (H, W) from (H, W) or (1, H, W)."""
    array = _to_numpy(value)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise ValueError(f"{what} must be a (H, W) map, got shape {array.shape}")
    return array


def turbo(x: np.ndarray) -> np.ndarray:
    """Turbo colours of values ``x`` in [0, 1] (clipped): float (..., 3) in [0, 1]."""
    x = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
    powers = x[..., None] ** np.arange(6)
    return np.clip(powers @ _TURBO.T, 0.0, 1.0)


def colorize_labels(labels: Any, palette: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Class ids (H, W) -> RGB uint8 (H, W, 3) through ``palette`` (K, 3); ``ignore_index`` and ids outside the
    palette are drawn in :data:`IGNORE_RGB`."""
    labels = _plane(labels, "a label map").astype(np.int64)
    table = np.concatenate([np.asarray(palette, dtype=np.uint8), np.array([IGNORE_RGB], dtype=np.uint8)])
    index = np.where((labels >= 0) & (labels < len(palette)) & (labels != ignore_index), labels, len(palette))
    return table[index]


def colorize_depth(depth: Any, vmin: float, vmax: float, zero_is_missing: bool = True) -> np.ndarray:
    """Depth (H, W) metres -> RGB uint8 (H, W, 3) in Turbo, ``vmin`` (near, dark blue) to ``vmax`` (far, dark
    red); non-finite depth, and depth <= 0 when ``zero_is_missing`` (the ground truth's convention; predictions
    are clamped at 0, a valid value), in :data:`IGNORE_RGB`."""
    depth = _plane(depth, "a depth map").astype(np.float64)
    valid = np.isfinite(depth) & ((depth > 0) if zero_is_missing else (depth >= 0))
    scaled = (np.where(valid, depth, vmin) - vmin) / max(vmax - vmin, 1e-6)
    rgb = np.rint(turbo(scaled) * 255).astype(np.uint8)
    rgb[~valid] = IGNORE_RGB
    return rgb


def colorize_normals(normals: Any) -> np.ndarray:
    """Surface normals (H, W, 3) or (3, H, W) in [-1, 1] -> RGB uint8 (H, W, 3) = (n + 1) / 2 · 255; invalid
    vectors (zero, non-finite, or the ignore value 255) in :data:`IGNORE_RGB`."""
    n = _to_numpy(normals).astype(np.float64)
    if n.ndim == 3 and n.shape[0] == 3 and n.shape[-1] != 3:
        n = n.transpose(1, 2, 0)
    if n.ndim != 3 or n.shape[-1] != 3:
        raise ValueError(f"normals must be (H, W, 3) or (3, H, W), got shape {n.shape}")
    valid = np.isfinite(n).all(-1) & (np.abs(n) <= 1.0 + 1e-3).all(-1) & (np.abs(n).sum(-1) > 0)
    rgb = np.rint((np.clip(np.where(valid[..., None], n, 0.0), -1, 1) + 1) / 2 * 255).astype(np.uint8)
    rgb[~valid] = IGNORE_RGB
    return rgb


def colorize_probability(prob: Any) -> np.ndarray:
    """Probabilities (H, W) in [0, 1] -> gray RGB uint8 (H, W, 3) (1 = white); other values (e.g. the ignore
    value 255) in :data:`IGNORE_RGB`."""
    p = _plane(prob, "a probability map").astype(np.float64)
    valid = np.isfinite(p) & (p >= 0) & (p <= 1)
    gray = np.rint(np.where(valid, p, 0) * 255).astype(np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    rgb[~valid] = IGNORE_RGB
    return rgb


def depth_range(*depths: Any, low: float = 1.0, high: float = 99.0) -> tuple[float, float]:
    """A shared colour range (metres) for depth maps: the ``low``-th and ``high``-th percentiles of their finite,
    non-negative values together (robust to a few outliers); (0, 1) when there are none."""
    parts = [d[np.isfinite(d) & (d >= 0)] for d in (_plane(x, "a depth map") for x in depths if x is not None)]
    values = np.concatenate(parts) if parts else np.zeros(0)
    if values.size == 0:
        return 0.0, 1.0
    vmin, vmax = (float(v) for v in np.percentile(values, [low, high]))
    return vmin, max(vmax, vmin + 1e-3)


def colorize_maps(
    maps: Mapping[str, Any], meta: Any, depth_limits: tuple[float, float] | None = None
) -> dict[str, np.ndarray]:
    """Colour pictures RGB uint8 (H, W, 3) of predicted maps (formats of the module docstring), as panels show them.

    Args:
        maps: task -> map.
        meta: the model's :class:`~pamm.models.meta.ModelMeta`, or a dataset (name or
            :class:`~pamm.tasks.DatasetSpec`): sets the palettes (:func:`label_space`).
        depth_limits: depth colour range in metres (default: the map's 1st-99th percentiles, :func:`depth_range`).

    Returns:
        task -> RGB: class palettes for semseg / human_parts, Turbo for depth (predictions: 0 m is a valid depth),
        (n + 1) / 2 for normals, gray levels for edge / sal probabilities.
    """
    dataset = label_space(meta)
    colours = {}
    for task, value in maps.items():
        if task in ("semseg", "human_parts"):
            colours[task] = colorize_labels(value, palette_for(dataset, task))
        elif task == "depth":
            colours[task] = colorize_depth(value, *(depth_limits or depth_range(value)), zero_is_missing=False)
        elif task == "normals":
            colours[task] = colorize_normals(value)
        elif task in ("edge", "sal"):
            colours[task] = colorize_probability(value)
        else:
            raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASKS)}")
    return colours


# ----------------------------------------------------------------------------------------------------------
# Legends and scale bars


@cache
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()


def _text_width(text: str) -> int:
    return int(np.ceil(_font().getlength(text)))


def scale_bar(vmin: float, vmax: float, width: int, unit: str = "m", height: int = 10) -> Image.Image:
    """A horizontal Turbo colour bar ``width`` px wide from ``vmin`` to ``vmax`` with labelled ends and middle
    (values in ``unit``). Returns an RGB image of ``height + 16`` px."""
    width = max(int(width), 2)
    bar = np.rint(turbo(np.linspace(0.0, 1.0, width)) * 255).astype(np.uint8)
    out = Image.new("RGB", (width, height + 3 + _LINE), _BACKGROUND)
    out.paste(Image.fromarray(np.repeat(bar[None], height, axis=0)), (0, 0))
    draw = ImageDraw.Draw(out)
    labels = [(0.0, f"{vmin:.2f} {unit}"), (0.5, f"{(vmin + vmax) / 2:.2f}"), (1.0, f"{vmax:.2f} {unit}")]
    for fraction, text in labels:
        x = int(round(fraction * (width - 1)))
        draw.line([(x, height), (x, height + 2)], fill=_TEXT)
        left = min(max(x - _text_width(text) // 2, 0), width - _text_width(text))
        draw.text((max(left, 0), height + 3), text, fill=_TEXT, font=_font())
    return out


def legend(class_ids: Sequence[int], names: Sequence[str], palette: np.ndarray, width: int) -> Image.Image:
    """Swatches and names of ``class_ids`` flowed into rows of at most ``width`` px. RGB image (height grows
    with the number of rows; 1 px high when there is nothing to show)."""
    width = max(int(width), 1)
    swatch, gap = 9, 8
    entries = [(int(c), names[int(c)] if 0 <= int(c) < len(names) else str(int(c))) for c in class_ids]
    positions, x, y = [], 0, 0
    for class_id, name in entries:
        size = swatch + 3 + _text_width(name)
        if x > 0 and x + size > width:
            x, y = 0, y + _LINE
        positions.append((x, y, class_id, name))
        x += size + gap
    out = Image.new("RGB", (width, (y + _LINE) if entries else 1), _BACKGROUND)
    draw = ImageDraw.Draw(out)
    for x, y, class_id, name in positions:
        colour = tuple(int(v) for v in palette[class_id]) if 0 <= class_id < len(palette) else IGNORE_RGB
        draw.rectangle([x, y + 2, x + swatch - 1, y + 1 + swatch], fill=colour, outline=(96, 96, 96))
        draw.text((x + swatch + 3, y), name, fill=_TEXT, font=_font())
    return out


# ----------------------------------------------------------------------------------------------------------
# Panels


def _present(labels: np.ndarray, classes: int) -> list[int]:
    """Class ids in ``[0, classes)`` that occur in ``labels``."""
    counts = np.bincount(labels[(labels >= 0) & (labels < classes)].ravel().astype(np.int64), minlength=classes)
    return [int(c) for c in np.flatnonzero(counts)]


def _display_size(height: int, width: int, tile_size: int) -> tuple[int, int]:
    scale = tile_size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _channels_last(task: str, value: Any) -> np.ndarray:
    """A map as (H, W) or, for normals, (H, W, 3)."""
    array = _to_numpy(value)
    if task == "normals":
        return array.transpose(1, 2, 0) if array.ndim == 3 and array.shape[0] == 3 and array.shape[-1] != 3 else array
    return _plane(array, f"the {task} map")


def _sample(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour sampling of (H, W, ...) at ``size`` (pixel centres): exact values, no blending of
    labels or invalid pixels, cost independent of the input size."""
    rows = ((np.arange(size[0]) + 0.5) * array.shape[0] / size[0]).astype(np.int64)
    cols = ((np.arange(size[1]) + 0.5) * array.shape[1] / size[1]).astype(np.int64)
    return array[rows][:, cols]


def _block_max(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) -> ``size``, each output pixel the maximum of the input pixels it covers (nearest when enlarging):
    one-pixel boundaries stay visible when a large map is shrunk for display."""
    rows = (np.arange(size[0]) * array.shape[0] // size[0]).astype(np.int64)
    cols = (np.arange(size[1]) * array.shape[1] // size[1]).astype(np.int64)
    return np.maximum.reduceat(np.maximum.reduceat(array, rows, axis=0), cols, axis=1)


def _render(
    task: str,
    full: np.ndarray,
    size: tuple[int, int],
    dataset: str | DatasetSpec,
    depth_limits: tuple[float, float],
    width: int,
    target: bool,
) -> tuple[Image.Image, Image.Image | None]:
    """(display tile, legend or scale bar) of one task map ``full`` (``target``: ground truth)."""
    shown = _block_max(full, size) if task == "edge" else _sample(full, size)
    if task in ("semseg", "human_parts"):
        palette, names = palette_for(dataset, task), dataset_spec(dataset).class_names[task]
        key = legend(_present(full, len(names)), names, palette, width)
        return Image.fromarray(colorize_labels(shown, palette)), key
    if task == "depth":
        tile = colorize_depth(shown, *depth_limits, zero_is_missing=target)
        return Image.fromarray(tile), scale_bar(*depth_limits, width)
    if task == "normals":
        return Image.fromarray(colorize_normals(shown)), None
    if task in ("edge", "sal"):
        return Image.fromarray(colorize_probability(shown)), None
    raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASKS)}")


def make_panel(
    image: Any,
    predictions: Mapping[str, Any],
    targets: Mapping[str, Any] | None = None,
    *,
    meta: Any,
    tile_size: int = 320,
    depth_limits: tuple[float, float] | None = None,
) -> Image.Image:
    """One picture of an image's predictions (and ground truth).

    Args:
        image: the input, RGB (H, W, 3) or (3, H, W): uint8, or float in [0, 1] (de-normalise model inputs first).
        predictions: task -> map in the formats of the module docstring, each (H, W) like the image.
        targets: optional ground truth, same formats (ignore values allowed); drawn as a second row.
        meta: the model's :class:`~pamm.models.meta.ModelMeta` (or anything with ``tasks`` and ``spec`` or
            ``dataset``), or a dataset (name or :class:`~pamm.tasks.DatasetSpec`); sets class names, palettes and the
            column order.
        tile_size: long side of each map in the panel, pixels. Maps are sampled (nearest neighbour) at that size
            before colouring, so the cost does not grow with the image; the input is resized smoothly.
        depth_limits: depth colour range in metres (default: from the maps; fix it to compare panels, e.g. the
            frames of a video).

    Returns:
        an RGB ``PIL.Image``: titled columns (input, then each task), label maps with a legend of the classes
        present, depth with a Turbo scale bar in metres shared by both rows (1st-99th percentile range).
    """
    dataset = label_space(meta)
    order = list(dataset.tasks if isinstance(meta, (str, DatasetSpec)) else meta.tasks)
    tasks = [t for t in order if t in predictions] + [t for t in predictions if t not in order]
    rgb = _to_numpy(image)
    if rgb.ndim == 3 and rgb.shape[0] == 3 and rgb.shape[-1] != 3:
        rgb = rgb.transpose(1, 2, 0)
    if np.issubdtype(rgb.dtype, np.floating):
        rgb = np.rint(np.clip(rgb, 0, 1) * 255)
    rgb = rgb.astype(np.uint8)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"image must be RGB (H, W, 3) or (3, H, W), got shape {rgb.shape}")
    height, width = rgb.shape[:2]
    rows = [{t: _channels_last(t, v) for t, v in row.items()} for row in [predictions] + ([targets] if targets else [])]
    for row in rows:
        for task, value in row.items():
            if value.shape[:2] != (height, width):
                raise ValueError(f"the {task} map is {value.shape[:2]}, the image is {(height, width)}")
    size = _display_size(height, width, tile_size)
    column = max(size[1], _MIN_COLUMN)
    depths = [_sample(row["depth"], size).astype(np.float64) for row in rows if "depth" in row]
    if len(rows) > 1 and "depth" in rows[1]:
        depths[-1][depths[-1] <= 0] = np.nan  # missing ground truth takes no part in the colour range
    depth_limits = depth_limits or depth_range(*depths)
    header, gap = _LINE + 4, 6
    smooth = Image.fromarray(rgb).resize((size[1], size[0]), Image.Resampling.BILINEAR)
    cells: list[list[tuple[str, Image.Image | None, Image.Image | None]]] = []
    for r, row in enumerate(rows):
        cells.append([("input", smooth, None) if r == 0 else ("ground truth", None, None)])
        for task in tasks:
            title = (TASKS[task].title if task in TASKS else task) + (" (ground truth)" if r else "")
            if task not in row:
                cells[-1].append((title, None, None))
                continue
            tile, extra = _render(task, row[task], size, dataset, depth_limits, column, target=r > 0)
            cells[-1].append((title, tile, extra))
    row_heights = [
        header + size[0] + max((3 + e.height for _, _, e in row if e is not None), default=0) for row in cells
    ]
    panel = Image.new(
        "RGB", (gap + (len(tasks) + 1) * (column + gap), gap + sum(h + gap for h in row_heights)), _BACKGROUND
    )
    draw = ImageDraw.Draw(panel)
    y = gap
    for cell_row, row_height in zip(cells, row_heights):
        for c, (title, picture, legend) in enumerate(cell_row):
            x = gap + c * (column + gap)
            draw.text((x, y + 1), title, fill=_TEXT, font=_font())
            if picture is not None:
                panel.paste(picture, (x + (column - size[1]) // 2, y + header))
            if legend is not None:
                panel.paste(legend, (x, y + header + size[0] + 3))
        y += row_height + gap
    return panel
