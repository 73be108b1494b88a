"""Training and test transforms of PAMM (reference notes §3), on raw samples of :mod:`pamm.data.dataset`.

Every transform is called as ``transform(sample, rng)`` with a ``numpy.random.Generator``; all randomness comes
from ``rng`` (deterministic transforms ignore it). Samples hold tensors throughout (``image`` (3, H, W), dense
targets (C, H, W) or (H, W)); geometric transforms act on the last two dimensions of every tensor alike and keep
``meta["valid"] = (top, left, height, width)``, the region of real content, up to date.

Train pipeline (as the authors'): random scale in [0.5, 2.0] → random crop to the train size (cat_max_ratio 0.75)
→ horizontal flip (p 0.5) → photometric distortion → ImageNet normalisation → centred padding to the train size
→ ignore regions. Test pipeline (:class:`EvalTransform`, which a trained model's metadata provides:
``model.meta.transforms()``): normalisation → centred padding to the test size and to a multiple of the backbone
stride → ignore regions; for photos it also gives the resolution rule of inference
(:meth:`EvalTransform.inference_size`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pamm.config import pair
from pamm.tasks import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
"""RGB mean and standard deviation (of images in [0, 1]) that inputs are normalised with: the one definition."""

PAD_VALUES = {
    "image": 0.0,
    "semseg": IGNORE_INDEX,
    "human_parts": IGNORE_INDEX,
    "sal": IGNORE_INDEX,
    "edge": float(IGNORE_INDEX),
    "depth": 0.0,
    "normals": 0.0,
}
"""Fill value of each key in padded regions (normals padded with 0 become 255 in :class:`AddIgnoreRegions`)."""


def _tensor_keys(sample: dict) -> list[str]:
    return [key for key in sample if key != "meta"]


def _content_size(sample: dict) -> tuple[int, int]:
    return tuple(sample["image"].shape[-2:])


class Compose:
    """Apply transforms in order, passing the same generator to each."""

    def __init__(self, transforms: Sequence):
        self.transforms = list(transforms)

    def __call__(self, sample: dict, rng: np.random.Generator | None) -> dict:
        for transform in self.transforms:
            sample = transform(sample, rng)
        return sample

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(repr(t) for t in self.transforms) + ")"


def _nearest_indices(source: int, target: int) -> torch.Tensor:
    """Source index of each of ``target`` output positions under nearest-neighbour resizing (OpenCV convention)."""
    return torch.clamp((torch.arange(target, dtype=torch.float64) * (source / target)).floor().long(), max=source - 1)


class RandomScale:
    """Resize by a factor drawn uniformly from ``scale_range``.

    The image is resized bilinearly (half-pixel centres); every target by nearest neighbour, so labels stay
    integral and normals stay unit vectors. Depth values are divided by the factor (an object seen larger is
    nearer). New size = ``int(H · s) × int(W · s)``.
    """

    def __init__(self, scale_range: tuple[float, float] = (0.5, 2.0)):
        self.scale_range = scale_range

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        scale = float(rng.uniform(*self.scale_range))
        height, width = _content_size(sample)
        new_height, new_width = max(1, int(height * scale)), max(1, int(width * scale))
        rows = _nearest_indices(height, new_height)
        cols = _nearest_indices(width, new_width)
        out = dict(sample)
        for key in _tensor_keys(sample):
            value = sample[key]
            if key == "image":
                out[key] = F.interpolate(
                    value[None], size=(new_height, new_width), mode="bilinear", align_corners=False
                )[0]
            else:
                out[key] = value[..., rows[:, None], cols[None, :]]
            if key == "depth":
                out[key] = out[key] / scale
        out["meta"] = {**sample["meta"], "valid": (0, 0, new_height, new_width)}
        return out

    def __repr__(self) -> str:
        return f"RandomScale({self.scale_range})"


class RandomCrop:
    """Crop a random ``size`` window (smaller sides are kept whole, to be padded later).

    With ``cat_max_ratio`` < 1 and a ``semseg`` target, a window is accepted only if it holds at least two
    non-ignored classes and no class covers ``cat_max_ratio`` or more of its non-ignored pixels; a rejected window is
    redrawn, at most ``max_retries`` times, and the last draw is kept unchecked (as mmseg / the authors).
    """

    def __init__(self, size: tuple[int, int], cat_max_ratio: float = 0.75, max_retries: int = 10):
        self.size = tuple(size)
        self.cat_max_ratio = cat_max_ratio
        self.max_retries = max_retries

    def _draw(self, height: int, width: int, rng: np.random.Generator) -> tuple[int, int]:
        top = int(rng.integers(0, max(height - self.size[0], 0) + 1))
        left = int(rng.integers(0, max(width - self.size[1], 0) + 1))
        return top, left

    def _acceptable(self, semseg: torch.Tensor) -> bool:
        _, counts = torch.unique(semseg[semseg != IGNORE_INDEX], return_counts=True)
        return counts.numel() > 1 and counts.max().item() / counts.sum().item() < self.cat_max_ratio

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        height, width = _content_size(sample)
        crop_height, crop_width = min(self.size[0], height), min(self.size[1], width)
        top, left = self._draw(height, width, rng)
        if self.cat_max_ratio < 1.0 and "semseg" in sample:
            for _ in range(self.max_retries):
                if self._acceptable(sample["semseg"][top : top + crop_height, left : left + crop_width]):
                    break
                top, left = self._draw(height, width, rng)
        out = {key: sample[key][..., top : top + crop_height, left : left + crop_width] for key in _tensor_keys(sample)}
        out["meta"] = {**sample["meta"], "valid": (0, 0, crop_height, crop_width)}
        return out

    def __repr__(self) -> str:
        return f"RandomCrop({self.size}, cat_max_ratio={self.cat_max_ratio})"


class RandomHorizontalFlip:
    """Mirror every tensor left-right with probability ``p``; the x component of the normals changes sign."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        if rng.random() >= self.p:
            return sample
        out = {key: sample[key].flip(-1) for key in _tensor_keys(sample)}
        if "normals" in out:
            out["normals"] = out["normals"] * torch.tensor([-1.0, 1.0, 1.0]).view(3, 1, 1)
        top, left, height, width = sample["meta"]["valid"]
        out["meta"] = {**sample["meta"], "valid": (top, _content_size(sample)[1] - left - width, height, width)}
        return out

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB (H, W, 3) → uint8 HSV in OpenCV's 8-bit convention: hue in 0..179 (degrees / 2), S and V in 0..255."""
    rgb = rgb.astype(np.float64)
    value = rgb.max(axis=2)
    spread = value - rgb.min(axis=2)
    saturation = np.divide(spread * 255.0, value, out=np.zeros_like(value), where=value > 0)
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    safe = np.where(spread > 0, spread, 1.0)
    hue = np.where(
        value == red,
        60.0 * (green - blue) / safe,
        np.where(value == green, 120.0 + 60.0 * (blue - red) / safe, 240.0 + 60.0 * (red - green) / safe),
    )
    hue = np.where(spread > 0, np.mod(hue, 360.0), 0.0)
    hsv = np.stack([np.mod(np.rint(hue / 2.0), 180.0), np.rint(saturation), value], axis=2)
    return hsv.astype(np.uint8)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_hsv`: uint8 HSV (OpenCV 8-bit convention) → uint8 RGB."""
    hsv = hsv.astype(np.float64)
    sector_position = hsv[..., 0] * 2.0 / 60.0
    saturation, value = hsv[..., 1] / 255.0, hsv[..., 2]
    sector = np.floor(sector_position).astype(np.int64) % 6
    fraction = sector_position - np.floor(sector_position)
    low = value * (1.0 - saturation)
    falling = value * (1.0 - saturation * fraction)
    rising = value * (1.0 - saturation * (1.0 - fraction))
    # (red, green, blue) for hue sectors 0..5 of 60 degrees each.
    choices = [
        (value, rising, low),
        (falling, value, low),
        (low, value, rising),
        (low, falling, value),
        (rising, low, value),
        (value, low, falling),
    ]
    rgb = np.zeros(hsv.shape, dtype=np.float64)
    for index, channels in enumerate(choices):
        mask = sector == index
        for channel, values in enumerate(channels):
            rgb[..., channel][mask] = values[mask]
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _scale_and_shift(values: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """``clip(values · alpha + beta, 0, 255)`` truncated to uint8 (as the authors' distortion)."""
    return np.clip(values.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


class PhotometricDistortion:
    """mmseg-style colour jitter of the uint8 image, each step with probability 0.5, in this order:

    brightness (+U(−32, 32)); contrast (×U(0.5, 1.5)) here *or* at the end (50/50); saturation (S ×U(0.5, 1.5) in
    HSV); hue (H + an integer in [−18, 17], modulo 180 in OpenCV's half-degree units); the deferred contrast.
    Each step clips to 0..255 and truncates to integers.
    """

    def __init__(
        self,
        brightness_delta: float = 32,
        contrast_range: tuple[float, float] = (0.5, 1.5),
        saturation_range: tuple[float, float] = (0.5, 1.5),
        hue_delta: int = 18,
    ):
        self.brightness_delta = brightness_delta
        self.contrast_range = contrast_range
        self.saturation_range = saturation_range
        self.hue_delta = hue_delta

    def _contrast(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.random() < 0.5:
            return _scale_and_shift(image, alpha=rng.uniform(*self.contrast_range))
        return image

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        image = sample["image"].clamp(0, 255).permute(1, 2, 0).numpy().astype(np.uint8)
        if rng.random() < 0.5:
            image = _scale_and_shift(image, beta=rng.uniform(-self.brightness_delta, self.brightness_delta))
        contrast_first = rng.random() < 0.5
        if contrast_first:
            image = self._contrast(image, rng)
        if rng.random() < 0.5:
            hsv = rgb_to_hsv(image)
            hsv[..., 1] = _scale_and_shift(hsv[..., 1], alpha=rng.uniform(*self.saturation_range))
            image = hsv_to_rgb(hsv)
        if rng.random() < 0.5:
            hsv = rgb_to_hsv(image)
            shift = int(rng.integers(-self.hue_delta, self.hue_delta))
            hsv[..., 0] = np.mod(hsv[..., 0].astype(np.int64) + shift, 180).astype(np.uint8)
            image = hsv_to_rgb(hsv)
        if not contrast_first:
            image = self._contrast(image, rng)
        return {**sample, "image": torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1).contiguous()}

    def __repr__(self) -> str:
        return (
            f"PhotometricDistortion(brightness_delta={self.brightness_delta}, contrast_range={self.contrast_range}, "
            f"saturation_range={self.saturation_range}, hue_delta={self.hue_delta})"
        )


class Normalize:
    """Image in 0..255 → ``(image / 255 − mean) / std`` per channel (ImageNet statistics by default)."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, sample: dict, rng: np.random.Generator | None = None) -> dict:
        return {**sample, "image": (sample["image"].float() / 255.0 - self.mean) / self.std}

    def __repr__(self) -> str:
        return f"Normalize(mean={tuple(self.mean.flatten().tolist())}, std={tuple(self.std.flatten().tolist())})"


class PadCentered:
    """Pad every tensor, centred, to at least ``size`` and then to multiples of ``multiple`` (larger sides stay).

    Fill values are :data:`PAD_VALUES`. The original content starts at row ``(H_out − H) // 2`` and column
    ``(W_out − W) // 2``; ``meta["valid"]`` is shifted accordingly. ``size=None`` pads only to the multiple.
    """

    def __init__(self, size: tuple[int, int] | None, multiple: int = 1):
        self.size = None if size is None else tuple(size)
        self.multiple = multiple

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Padded size for content of ``height`` × ``width``."""
        if self.size is not None:
            height, width = max(height, self.size[0]), max(width, self.size[1])
        return -(-height // self.multiple) * self.multiple, -(-width // self.multiple) * self.multiple

    def __call__(self, sample: dict, rng: np.random.Generator | None = None) -> dict:
        height, width = _content_size(sample)
        out_height, out_width = self.output_size(height, width)
        if (out_height, out_width) == (height, width):
            return sample
        top, left = (out_height - height) // 2, (out_width - width) // 2
        out: dict[str, Any] = {}
        for key in _tensor_keys(sample):
            value = sample[key]
            padded = torch.full((*value.shape[:-2], out_height, out_width), PAD_VALUES[key], dtype=value.dtype)
            padded[..., top : top + height, left : left + width] = value
            out[key] = padded
        valid_top, valid_left, valid_height, valid_width = sample["meta"]["valid"]
        out["meta"] = {**sample["meta"], "valid": (valid_top + top, valid_left + left, valid_height, valid_width)}
        return out

    def __repr__(self) -> str:
        return f"PadCentered({self.size}, multiple={self.multiple})"


class AddIgnoreRegions:
    """Mark unusable targets as ignored (255), as the authors:

    * normals: pixels whose normal is the zero vector (invalid or padding) get 255 in all three channels;
    * human_parts: a map holding only background (0) and ignore (255), e.g. an image without annotated people,
      becomes entirely 255.
    """

    def __call__(self, sample: dict, rng: np.random.Generator | None = None) -> dict:
        out = dict(sample)
        if "normals" in sample:
            normals = sample["normals"]
            invalid = (normals == 0).all(dim=0, keepdim=True).expand_as(normals)
            out["normals"] = normals.masked_fill(invalid, float(IGNORE_INDEX))
        if "human_parts" in sample:
            parts = sample["human_parts"]
            if ((parts == 0) | (parts == IGNORE_INDEX)).all():
                out["human_parts"] = torch.full_like(parts, IGNORE_INDEX)
        return out

    def __repr__(self) -> str:
        return "AddIgnoreRegions()"


class EvalTransform(Compose):
    """A trained model's evaluation transform, torchvision-weights style (``model.meta.transforms()``).

    ``transform(sample)`` on a raw dataset sample: normalisation with ``mean`` / ``std`` → centred padding to at
    least ``size`` and to multiples of ``multiple`` → ignore regions; the paper's test pipeline (no resizing).

    For photos of any size, :meth:`prepare` first resizes the image by the resolution rule of
    :meth:`inference_size` (the model's test scale), then applies the same steps.

    Args:
        size: (H, W) the test size: minimum padded size and reference scale of the resolution rule; None pads
            only to ``multiple`` and keeps every image at its own size.
        multiple: padded sides are multiples of this (the backbone stride).
        mean, std: normalisation of RGB in [0, 1].
    """

    def __init__(
        self,
        size: tuple[int, int] | None,
        multiple: int = 16,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ):
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.multiple = int(multiple)
        super().__init__([Normalize(mean, std), PadCentered(self.size, self.multiple), AddIgnoreRegions()])

    def __call__(self, sample: dict, rng: np.random.Generator | None = None) -> dict:
        return super().__call__(sample, rng)

    def inference_size(self, height: int, width: int, scale: float | None = None) -> tuple[int, int]:
        """The resolution rule: the size (h, w) an image of ``height`` × ``width`` is resized to before inference.

        ``scale=None``: the aspect ratio is kept and the area matched to the test size's, h · w ≈ H_test · W_test
        (factor ``sqrt(H_test · W_test / (height · width))``, up or down): a photo is seen at the scale the model
        was trained and tested at, in the same number of tokens, whatever its resolution or orientation. A number
        resizes by that factor instead (1 = the image's own resolution). Sides are rounded, at least 1.
        """
        if scale is None:
            if self.size is None:
                return height, width
            scale = math.sqrt(self.size[0] * self.size[1] / (height * width))
        if not scale > 0:
            raise ValueError(f"scale must be a positive factor, got {scale}")
        return max(1, round(height * scale)), max(1, round(width * scale))

    def prepare(self, image: torch.Tensor, scale: float | None = None) -> dict:
        """An image (3, H, W) with values in 0..255 -> the model-ready sample ``{"image": (3, h', w'), "meta":
        {"size": (H, W), "valid": (top, left, h, w)}}``: resized to :meth:`inference_size` (bilinear, antialiased
        when shrinking), normalised and padded; ``valid`` is where the resized image lies in the padded one."""
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected an image (3, H, W), got shape {tuple(image.shape)}")
        height, width = image.shape[-2:]
        size = self.inference_size(height, width, scale)
        image = image.float()
        if size != (height, width):
            image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
        sample = {"image": image, "meta": {"size": (height, width), "valid": (0, 0, *size)}}
        return self(sample)

    def __repr__(self) -> str:
        return f"EvalTransform(size={self.size}, multiple={self.multiple}, {self.transforms[0]!r})"


def build_transforms(
    train: bool, size: tuple[int, int] | None, multiple: int = 16, scale_range: tuple[float, float] = (0.5, 2.0)
) -> Compose:
    """The PAMM augmentation pipeline.

    Args:
        train: training pipeline (random scale, crop, flip, photometric distortion) or test pipeline (none).
        size: (H, W). Training: crop and pad size (required, a multiple of ``multiple``); every training sample
            has exactly this size. Test: minimum padded size; ``None`` pads only to ``multiple``.
        multiple: test samples' H and W are padded up to multiples of this (16 = the ViT patch; 1 disables).
        scale_range: the training pipeline's random rescale factors (paper: 0.5 to 2).

    Returns:
        ``transform(sample, rng) -> sample`` mapping a raw sample to the training/evaluation sample format.
    """
    if train:
        if size is None:
            raise ValueError("the training transforms need a crop size (H, W)")
        if size[0] % multiple or size[1] % multiple:
            raise ValueError(f"training size {tuple(size)} must be a multiple of {multiple} (or pass multiple=1)")
        return Compose(
            [
                RandomScale(pair(scale_range)),
                RandomCrop(size, cat_max_ratio=0.75, max_retries=10),
                RandomHorizontalFlip(0.5),
                PhotometricDistortion(),
                Normalize(),
                PadCentered(size),
                AddIgnoreRegions(),
            ]
        )
    return EvalTransform(size, multiple)
