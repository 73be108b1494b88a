"""The Python API of inference: ``pamm.load(...)`` gives a predictor that takes anything image-like.

>>> predictor = pamm.load("runs/demo")        # a run folder, weights file, pretrained folder or Hub id
>>> result = predictor("photo.jpg")                    # {"semseg": uint8 (H, W), "depth": float32 (H, W), ...}
>>> results = predictor([image_a, image_b], colorize=True)   # a list in, a list out; result.colors: RGB pictures

Inputs, alone or in a list (batched):

- a path (``str`` / ``os.PathLike``): read by the one image reader :func:`pamm.data.io.read_rgb_image` (EXIF
  orientation, alpha over white, palette, 16-bit, grayscale, CMYK), refused above ``max_pixels`` unless ``resize``
  downscales it first;
- a ``PIL.Image.Image``: converted by the same rules (:func:`pamm.data.io.rgb_from_pil`);
- a NumPy array (H, W, 3), RGB, ``uint8`` or floating point in [0, 1];
- a ``torch.Tensor`` (3, H, W) or a batch (N, 3, H, W), RGB, ``uint8`` or floating point in [0, 1] (torchvision's
  convention); a batch gives a list of N results.

A wrong type is a ``TypeError``, a wrong shape or value range a ``ValueError``, each naming what was expected.

Each result is a :class:`Prediction`: task -> NumPy map at the input's own size (semseg / human_parts uint8 class
ids (H, W); depth float32 metres (H, W); normals float32 unit vectors (H, W, 3); edge / sal float32 probabilities
(H, W)); with ``colorize=True`` its ``colors`` hold RGB uint8 (H, W, 3) pictures of each map
(:func:`pamm.viz.colorize_maps`). How an image is resized, predicted and brought back to its size:
:mod:`pamm.engine.predictor`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .data.io import check_read_options, read_rgb_image, rgb_from_pil
from .engine.predictor import DEFAULT_OVERLAP, Predictor, resolve_device

__all__ = ["DEFAULT_MAX_PIXELS", "ImagePredictor", "Prediction", "load"]

DEFAULT_MAX_PIXELS = 40_000_000
"""Largest image file (width × height) read without ``resize``: its results take about 1 GB (NYUD's tasks)."""


class Prediction(dict):
    """One image's predictions: task -> NumPy map at the image's own size (formats in the module docstring).

    Attributes:
        image: the RGB uint8 (H, W, 3) picture that was predicted (as read: EXIF-oriented, alpha over white).
        colors: task -> RGB uint8 (H, W, 3) picture of the map, when asked for (``colorize=True``), else empty.
    """

    def __init__(self, maps: dict[str, np.ndarray], image: np.ndarray, colors: dict[str, np.ndarray] | None = None):
        super().__init__(maps)
        self.image = image
        self.colors = colors or {}


def _describe(item: Any) -> str:
    if isinstance(item, (np.ndarray, torch.Tensor)):
        return f"{type(item).__name__} of shape {tuple(item.shape)} and dtype {item.dtype}"
    return type(item).__name__


_EXPECTED = "a path, a PIL image, a NumPy array (H, W, 3), a tensor (3, H, W) or (N, 3, H, W), or a list of these"


def _from_values(values: np.ndarray | torch.Tensor, what: str) -> torch.Tensor:
    """Channel-first RGB values (3, H, W), uint8 or float in [0, 1] -> uint8 as it is, float32 in 0..255."""
    dtype = values.dtype
    with warnings.catch_warnings():  # a read-only array (np.asarray of a PIL image) is only read here
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensor = torch.as_tensor(values)
    if tensor.dtype == torch.uint8:
        return tensor
    if not tensor.is_floating_point():
        raise ValueError(f"{what}: dtype {dtype}; expected uint8 (0..255) or floating point in [0, 1]")
    tensor = tensor.detach().float().cpu()
    if tensor.numel() and not (torch.isfinite(tensor).all() and tensor.min() >= 0 and tensor.max() <= 1):
        low, high = float(tensor.nan_to_num().min()), float(tensor.nan_to_num().max())
        raise ValueError(
            f"{what}: floating-point values must be finite and in [0, 1], got {low:.4g}..{high:.4g} "
            f"(scale 0..255 values by 1/255 or pass uint8)"
        )
    return tensor * 255.0


def _check_size(height: int, width: int, what: str) -> None:
    if height < 1 or width < 1:
        raise ValueError(f"{what}: an empty image ({height}x{width}); expected at least 1x1 pixels")


class ImagePredictor:
    """What :func:`load` returns: call it on images of any kind and size (see the module docstring).

    Args:
        predictor: the engine's :class:`~pamm.engine.predictor.Predictor` (model, device, mode, batch size).
        max_pixels: refuse image files with more pixels (after ``resize``), checked before decoding.
        resize: downscale image files so that their long side is at most this (results at the downscaled size).
    """

    def __init__(self, predictor: Predictor, *, max_pixels: int | None = DEFAULT_MAX_PIXELS, resize: int | None = None):
        check_read_options(max_pixels, resize)
        self.predictor, self.max_pixels, self.resize = predictor, max_pixels, resize

    @property
    def meta(self):
        """The model's :class:`~pamm.models.meta.ModelMeta` (dataset, tasks, sizes, normalisation)."""
        return self.predictor.meta

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.predictor.tasks

    @property
    def device(self) -> torch.device:
        return self.predictor.device

    def __repr__(self) -> str:
        p = self.predictor
        return (
            f"ImagePredictor(dataset={p.meta.dataset!r}, tasks={list(p.tasks)}, device={str(p.device)!r}, "
            f"mode={p.mode!r}, scale={p.scale}, batch_size={p.batch_size})"
        )

    def read(self, item: Any, what: str = "input") -> tuple[torch.Tensor, np.ndarray]:
        """One image-like input -> (the image for the engine: (3, H, W), uint8 or float32 in 0..255; its RGB uint8
        (H, W, 3) picture). uint8 inputs are not copied."""
        if isinstance(item, (str, os.PathLike)):
            rgb = read_rgb_image(item, max_pixels=self.max_pixels, resize=self.resize)
            return torch.from_numpy(rgb).permute(2, 0, 1), rgb
        from PIL import Image

        if isinstance(item, Image.Image):
            rgb = rgb_from_pil(item, what)
            _check_size(rgb.shape[0], rgb.shape[1], what)
            return torch.from_numpy(rgb).permute(2, 0, 1), rgb
        if isinstance(item, np.ndarray):
            if item.ndim != 3 or item.shape[2] != 3:
                raise ValueError(
                    f"{what}: NumPy array of shape {item.shape}; expected an RGB image (H, W, 3) (a PIL "
                    f"image converts grayscale and alpha)"
                )
            _check_size(item.shape[0], item.shape[1], what)
            values = _from_values(np.ascontiguousarray(item).transpose(2, 0, 1), what)
        elif isinstance(item, torch.Tensor):
            if item.ndim != 3 or item.shape[0] != 3:
                raise ValueError(
                    f"{what}: tensor of shape {tuple(item.shape)}; expected an RGB image (3, H, W) or a "
                    f"batch (N, 3, H, W)"
                )
            _check_size(item.shape[1], item.shape[2], what)
            values = _from_values(item.detach().cpu(), what)
        else:
            raise TypeError(f"{what}: got {_describe(item)}; expected {_EXPECTED}")
        if values.dtype == torch.uint8:
            return values, values.permute(1, 2, 0).numpy()
        return values, values.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()

    def _items(self, inputs: Any) -> tuple[list[Any], bool]:
        """(single images, whether the call returns a list)."""
        if isinstance(inputs, torch.Tensor) and inputs.ndim == 4:
            if inputs.shape[1] != 3:
                raise ValueError(f"input: tensor of shape {tuple(inputs.shape)}; expected a batch (N, 3, H, W)")
            return list(inputs.unbind(0)), True
        if isinstance(inputs, (list, tuple)):
            for index, item in enumerate(inputs):
                if isinstance(item, torch.Tensor) and item.ndim == 4:
                    raise ValueError(
                        f"input {index}: a batch tensor inside a list; pass the (N, 3, H, W) tensor "
                        f"on its own, or a list of (3, H, W) tensors"
                    )
            return list(inputs), True
        return [inputs], False

    def predict_images(
        self,
        images: Sequence[torch.Tensor],
        pictures: Sequence[np.ndarray],
        tasks: Sequence[str] | None = None,
        colorize: bool = False,
    ) -> list[Prediction]:
        """Predictions for images already read (:meth:`read`): one batch of the engine."""
        results = []
        for maps, picture in zip(self.predictor.predict(images, tasks), pictures):
            arrays = {}
            for task, value in maps.items():  # normals: (3, H, W) views of (H, W, 3) memory, no copy here
                arrays[task] = np.ascontiguousarray(
                    value.permute(1, 2, 0).numpy() if task == "normals" else value.numpy()
                )
            colors = None
            if colorize:
                from .viz import colorize_maps

                colors = colorize_maps(arrays, self.meta)
            results.append(Prediction(arrays, picture, colors))
        return results

    def __call__(
        self, inputs: Any, *, tasks: Sequence[str] | None = None, colorize: bool = False
    ) -> Prediction | list[Prediction]:
        """Predict every task (or ``tasks``) for one input or a list / batch of inputs (module docstring).

        Returns:
            a :class:`Prediction` for a single input; a list of them, in input order, for a list or an (N, 3, H, W)
            tensor. Inputs are read and predicted ``batch_size`` at a time.
        """
        items, many = self._items(inputs)
        tasks = self.predictor.check_tasks(tasks)
        results: list[Prediction] = []
        size = self.predictor.batch_size
        for start in range(0, len(items), size):
            read = [
                self.read(item, f"input {start + k}" if many else "input")
                for k, item in enumerate(items[start : start + size])
            ]
            results += self.predict_images([r[0] for r in read], [r[1] for r in read], tasks, colorize)
        return results if many else results[0]


def load(
    source: str | os.PathLike,
    device: str | torch.device | None = None,
    *,
    mode: str = "whole",
    scale: float | None = None,
    overlap: float = DEFAULT_OVERLAP,
    batch_size: int = 8,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    resize: int | None = None,
) -> ImagePredictor:
    """Load a trained model as an :class:`ImagePredictor`.

    Args:
        source: any model source (:func:`pamm.interop.hub.load_trained`): a run folder (its best checkpoint), a
            pamm weights file, a pretrained folder (``save_pretrained``) or a Hugging Face Hub model id.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...; None: CUDA when available, else the CPU.
        mode: ``"whole"`` (default: one pass per image at the model's scale) or ``"slide"`` (training-size
            windows, blended); see :mod:`pamm.engine.predictor`.
        scale: resize factor instead of the resolution rule (1 = each image's own resolution).
        overlap: sliding-window overlap, a fraction of the window.
        batch_size: images per forward pass.
        max_pixels: refuse larger image files (after ``resize``); None: no limit of ours.
        resize: downscale image files so that their long side is at most this.

    Raises:
        InputError: nothing usable at ``source``, or a damaged checkpoint (one line naming it); ResourceError: CUDA
        asked for but not available, or the Hub unreachable.
    """
    from .interop.hub import load_trained

    device = resolve_device(device)
    model = load_trained(source, device=device).model
    predictor = Predictor(model, model.meta, device, mode=mode, scale=scale, overlap=overlap, batch_size=batch_size)
    return ImagePredictor(predictor, max_pixels=max_pixels, resize=resize)
