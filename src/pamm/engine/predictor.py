"""Dense predictions of a trained model for images of any size: tensors in, tensors out.

Per image (the model's own evaluation transform, ``meta.transforms()``, does steps 1 and 2):

1. **Resolution rule.** The image is resized, aspect kept, so that its area matches the model's test size
   (:meth:`~pamm.data.transforms.EvalTransform.inference_size`; ``scale`` overrides the factor, 1 = the image's own
   resolution), bilinearly (antialiased when shrinking).
2. It is normalised and padded, centred, to at least the test size and to multiples of the backbone stride.
3. ``mode="whole"`` (default): one forward pass over the whole padded image. ``mode="slide"``: windows of the
   training size (``meta.train_size``), neighbours overlapping by ``overlap`` of a window (default one third),
   blended with raised-cosine weights that fall towards every window's edges (positive everywhere), so a window's
   prediction fades into its neighbour's instead of ending in a seam.
4. The raw outputs of the valid (unpadded) region (logits, regressions) are resampled bilinearly to the image's
   **original** size and only then post-processed (:func:`pamm.tasks.postprocess`: argmax, unit normals, sigmoid,
   softmax), in strips of rows so that memory stays bounded however large the image.

Batching: images whose padded sizes are equal go through the model together, ``batch_size`` at a time; an image's
result never depends on the other images of the call. Inference runs under ``torch.inference_mode()``, with bf16
autocast on CUDA.

Results (:meth:`Predictor.predict`), CPU tensors at the image's size (H, W): ``semseg`` / ``human_parts`` uint8
class ids (H, W); ``depth`` float32 metres (H, W), ≥ 0; ``normals`` float32 unit vectors (3, H, W); ``edge`` and
``sal`` float32 probabilities (H, W).

Memory: one batch at the model's scale, plus (slide mode) accumulators of 4 · ΣK bytes per pixel of the resized
image, plus the raw outputs resampled along the columns (4 · K · h · W bytes for one task at a time: small, h being
the model's height), plus the results (1 + 4 + 12 + 4 = 21 bytes per original pixel for NYUD's four tasks).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import pair
from ..errors import InputError, ResourceError
from ..tasks import postprocess

if TYPE_CHECKING:
    from ..models.meta import ModelMeta

__all__ = [
    "DEFAULT_OVERLAP", "MODES", "Predictor", "resolve_device", "window_origins", "window_weights", "blend_windows",
    "bilinear_strips", "resample_postprocess",
]  # fmt: skip

DEFAULT_OVERLAP = 1 / 3
"""Overlap of neighbouring sliding windows, as a fraction of the window size."""

MODES = ("whole", "slide")

_STRIP_ELEMENTS = 1 << 22
"""Resampling works on strips of rows of at most this many values, all channels together (16 MB in float32)."""


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` / ``"auto"``: CUDA when available, else the CPU. An unknown device name is an
    :class:`~pamm.errors.InputError`, a CUDA device without CUDA a :class:`~pamm.errors.ResourceError`."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"device {device!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ResourceError(f"device {str(device)!r} requested but CUDA is not available; use the CPU (--device cpu)")
    return device


# ----------------------------------------------------------------------------------------------------------
# Sliding windows


def window_origins(length: int, window: int, overlap: float) -> list[int]:
    """Start offsets of windows of ``window`` covering ``length``, neighbours overlapping by at least
    ``overlap`` · window, spread evenly with the first at 0 and the last ending at ``length``."""
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be a fraction in [0, 1), got {overlap}")
    if length <= window:
        return [0]
    step = max(1, int(window * (1.0 - overlap)))
    count = math.ceil((length - window) / step) + 1
    return [round(k * (length - window) / (count - 1)) for k in range(count)]


def window_weights(height: int, width: int) -> Tensor:
    """Blending weights (height, width) of one window: a raised cosine, sin(π (i + ½) / n), along each axis;
    largest in the middle, small but positive at the edges."""

    def ramp(n: int) -> Tensor:
        return torch.sin(math.pi * (torch.arange(n, dtype=torch.float32) + 0.5) / n)

    return ramp(height)[:, None] * ramp(width)[None, :]


def blend_windows(
    run: Callable[[Tensor], Mapping[str, Tensor]],
    images: Tensor,
    window: tuple[int, int],
    overlap: float = DEFAULT_OVERLAP,
) -> dict[str, Tensor]:
    """Raw outputs of ``run`` over images larger than its window, window by window, blended.

    Every pixel's output is the weighted mean of the windows covering it, weighted by :func:`window_weights`.

    Args:
        run: (b, 3, h, w) -> {task: (b, K, h, w)} for windows of exactly ``window``.
        images: (b, 3, H, W), H >= window[0] and W >= window[1] (pad first).
        window: (h, w) of each forward pass.
        overlap: fraction of the window shared by neighbours.

    Returns:
        {task: float32 (b, K, H, W)} on the CPU.
    """
    batch, _, height, width = images.shape
    if height < window[0] or width < window[1]:
        raise ValueError(f"images {height}x{width} are smaller than the window {window[0]}x{window[1]}; pad them")
    weight = window_weights(*window)
    sums: dict[str, Tensor] = {}
    total = torch.zeros(height, width)
    for top in window_origins(height, window[0], overlap):
        for left in window_origins(width, window[1], overlap):
            rows, cols = slice(top, top + window[0]), slice(left, left + window[1])
            for task, out in run(images[:, :, rows, cols]).items():
                if task not in sums:
                    sums[task] = torch.zeros(batch, out.shape[1], height, width)
                sums[task][:, :, rows, cols] += out.float().cpu() * weight
            total[rows, cols] += weight
    return {task: value / total for task, value in sums.items()}


# ----------------------------------------------------------------------------------------------------------
# Back to the original size


def _bilinear_taps(source: int, target: int) -> tuple[Tensor, Tensor, Tensor]:
    """For each of ``target`` output positions: the two source indices and the weight of the second, as
    ``F.interpolate(mode="bilinear", align_corners=False)`` (half-pixel centres, clamped at the borders)."""
    position = ((torch.arange(target, dtype=torch.float64) + 0.5) * (source / target) - 0.5).clamp_min(0.0)
    first = position.floor().long().clamp_max(source - 1)
    second = (first + 1).clamp_max(source - 1)
    return first, second, position - first


def bilinear_strips(raw: Tensor, size: tuple[int, int], strip_elements: int = _STRIP_ELEMENTS) -> Iterator[Tensor]:
    """``F.interpolate(raw[None], size, mode="bilinear", align_corners=False)[0]`` strip by strip.

    Separably, as the full interpolation: the columns first (``F.interpolate`` to (K, h, W), small while h is the
    model's height), then each strip of rows blends its two source rows (half-pixel centres, clamped at the borders).

    Args:
        raw: (K, h, w) float.
        size: (H, W) output size.
        strip_elements: at most this many values (K · rows · W) in one strip (at least one row).

    Yields:
        consecutive strips (K, rows, W) of the resampled (K, H, W), top to bottom.
    """
    channels, height, width = raw.shape
    out_h, out_w = size
    step = max(1, strip_elements // max(channels * out_w, 1))
    if (height, width) == (out_h, out_w):  # nothing to resample (slide mode at full resolution)
        for start in range(0, out_h, step):
            yield raw[:, start : start + step]
        return
    columns = F.interpolate(raw[None], size=(height, out_w), mode="bilinear", align_corners=False)[0]
    upper, lower, weight = (t.to(raw.device) for t in _bilinear_taps(height, out_h))
    weight = weight.to(raw.dtype)
    for start in range(0, out_h, step):
        rows = slice(start, min(start + step, out_h))
        yield torch.lerp(columns.index_select(1, upper[rows]), columns.index_select(1, lower[rows]), weight[rows, None])


def resample_postprocess(
    task: str, raw: Tensor, size: tuple[int, int], strip_elements: int = _STRIP_ELEMENTS
) -> Tensor:
    """Resample raw outputs bilinearly to ``size``, then post-process them (:func:`pamm.tasks.postprocess`), a strip
    of rows at a time (:func:`bilinear_strips`): only a strip of the (K, H, W) resampled outputs exists at once. The
    work happens on ``raw``'s device; the result is on the CPU.

    Args:
        task: task name.
        raw: (K, h, w) raw outputs (float).
        size: (H, W) output size.
        strip_elements: at most this many values (K · rows · W) in one strip (at least one row).

    Returns:
        the task's prediction at ``size`` on the CPU: uint8 class ids (H, W) for classification tasks with ≤ 256
        classes, (3, H, W) for normals (a view of channels-last memory), float32 (H, W) otherwise.
    """
    out: Tensor | None = None
    row = 0
    for strip in bilinear_strips(raw, size, strip_elements):
        value = postprocess(task, strip[None])[0]
        if value.dtype == torch.int64 and raw.shape[0] <= 256:
            value = value.to(torch.uint8)
        rows = slice(row, row + strip.shape[1])
        if out is None:  # normals are kept channels-last in memory: (H, W, 3) for NumPy without a copy
            shape = (size[0], size[1], value.shape[0]) if value.ndim == 3 else tuple(size)
            out = torch.empty(shape, dtype=value.dtype)
        if value.ndim == 3:
            out[rows] = value.permute(1, 2, 0)
        else:
            out[rows] = value
        row = rows.stop
    assert out is not None  # size has at least one row: one strip or more
    return out.permute(2, 0, 1) if out.ndim == 3 else out


# ----------------------------------------------------------------------------------------------------------
# The predictor


class Predictor:
    """Runs a trained model on images of any size (see the module docstring).

    Args:
        model: a :class:`~pamm.models.PAMM`, or any module mapping (b, 3, h, w) normalised images to
            {task: (b, K, h, w)} raw outputs; put in eval mode.
        meta: its :class:`~pamm.models.meta.ModelMeta` (``model.meta`` when None): tasks, sizes, stride,
            normalisation, evaluation transform.
        device: where the model runs (``None`` / ``"auto"``: CUDA when available); results come back on the CPU.
        mode: ``"whole"`` (one pass per image) or ``"slide"`` (training-size windows, blended).
        scale: resize factor instead of the resolution rule (1 = each image's own resolution).
        overlap: sliding-window overlap, a fraction of the window in [0, 1).
        batch_size: images (whole) or images per window position (slide) in one forward pass.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        meta: ModelMeta | None = None,
        device: str | torch.device | None = "cpu",
        *,
        mode: str = "whole",
        scale: float | None = None,
        overlap: float = DEFAULT_OVERLAP,
        batch_size: int = 8,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
        if scale is not None and not scale > 0:
            raise ValueError(f"scale must be a positive factor (or None for the resolution rule), got {scale}")
        if not 0 <= overlap < 1:
            raise ValueError(f"overlap must be a fraction in [0, 1), got {overlap}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval() if isinstance(model, torch.nn.Module) else model
        self.meta: ModelMeta = meta if meta is not None else cast("ModelMeta", model.meta)
        self.transform = self.meta.transforms()
        self.mode, self.scale, self.overlap, self.batch_size = mode, scale, overlap, batch_size

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.meta.tasks)

    def check_tasks(self, tasks: Sequence[str] | None) -> tuple[str, ...]:
        """``tasks`` validated against the model's (None: all of them, in the model's order)."""
        if tasks is None:
            return self.tasks
        unknown = [t for t in tasks if t not in self.tasks]
        if unknown or not tasks:
            raise ValueError(
                f"tasks {list(tasks)}: this model predicts {list(self.tasks)}; expected a non-empty subset of them"
            )
        return tuple(tasks)

    def _run(self, images: Tensor) -> Mapping[str, Tensor]:
        images = images.to(self.device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            return self.model(images)

    def _forward(self, images: Tensor) -> dict[str, Tensor]:
        """(b, 3, H, W) prepared images -> {task: float32 (b, K, H, W)}: on the model's device (whole), on the CPU
        (slide: the accumulators of a large image stay in host memory)."""
        if self.mode == "slide":
            window = pair(self.meta.train_size)
            height, width = images.shape[-2:]
            padded = (max(height, window[0]), max(width, window[1]))
            if padded != (height, width):  # smaller than a window: zero-pad (the normalised mean colour), centred
                top, left = (padded[0] - height) // 2, (padded[1] - width) // 2
                canvas = images.new_zeros(*images.shape[:2], *padded)
                canvas[:, :, top : top + height, left : left + width] = images
                out = blend_windows(self._run, canvas, window, self.overlap)
                return {t: v[:, :, top : top + height, left : left + width] for t, v in out.items()}
            return blend_windows(self._run, images, window, self.overlap)
        return {task: value.float() for task, value in self._run(images).items()}

    def raw_outputs(self, images: Sequence[Tensor]) -> list[dict[str, Tensor]]:
        """Raw outputs at the model's resolution: per image {task: float32 (K, h, w)} of its resized region (on the
        model's device in whole mode, on the CPU in slide mode).

        Args:
            images: RGB images (3, H, W) with values in 0..255 (uint8 or float), any sizes.
        """
        samples = []
        for index, image in enumerate(images):
            if not isinstance(image, Tensor) or image.ndim != 3 or image.shape[0] != 3:
                shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
                raise ValueError(f"image {index}: expected an RGB tensor (3, H, W) with values in 0..255, got {shape}")
            samples.append(self.transform.prepare(image.detach().cpu(), self.scale))
        groups: dict[tuple[int, int], list[int]] = {}
        for index, sample in enumerate(samples):
            groups.setdefault(tuple(sample["image"].shape[-2:]), []).append(index)
        results: list[dict[str, Tensor]] = [{} for _ in samples]
        with torch.inference_mode():
            for indices in groups.values():
                for start in range(0, len(indices), self.batch_size):
                    chunk = indices[start : start + self.batch_size]
                    outputs = self._forward(torch.stack([samples[i]["image"] for i in chunk]))
                    for k, i in enumerate(chunk):
                        top, left, height, width = samples[i]["meta"]["valid"]
                        results[i] = {t: v[k, :, top : top + height, left : left + width] for t, v in outputs.items()}
        return results

    def predict(self, images: Sequence[Tensor], tasks: Sequence[str] | None = None) -> list[dict[str, Tensor]]:
        """Predictions at each image's own size (formats in the module docstring).

        Args:
            images: RGB images (3, H, W) with values in 0..255 (uint8 or float), any sizes.
            tasks: the tasks to return (None: all the model's).
        """
        tasks = self.check_tasks(tasks)
        results = []
        with torch.inference_mode():
            for image, raw in zip(images, self.raw_outputs(images)):
                size = pair(image.shape[-2:])
                results.append({task: resample_postprocess(task, raw[task], size) for task in tasks})
        return results
