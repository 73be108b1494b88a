"""Dense predictions for image files (``pamm predict``): reading any image, tiling large ones, writing maps and
panels.

Image reading (:func:`load_image`), decided by the file's content, never its extension (a JPEG named ``.png`` is
read as the JPEG it is):

- EXIF orientation is applied first, so outputs match the image as viewers show it.
- RGB as is; grayscale (``L``, ``1``) replicated over three channels; palette (``P``) expanded through its palette;
  ``CMYK`` / ``YCbCr`` converted by Pillow (ICC profiles are not applied).
- Transparency (``RGBA``, ``LA``, ``PA``, palette or RGB with a transparent colour) is composited over white, the
  usual display of transparent images; the panel shows the composited input, i.e. what the model saw.
- 16-bit grayscale (``I;16*``, or ``I`` holding 0..65535) is scaled by 255/65535 and rounded: PNG stores lower
  bit depths scaled to the full 16-bit range, so the full range is the right reference. 32-bit integer images
  with values outside 0..65535 and floating-point (``F``) images are refused.
- Multi-frame files (GIF, TIFF, APNG) give their first frame.
- Empty, truncated, corrupt or non-image files raise :class:`ImageReadError` naming the file.
- Images above ``max_pixels`` (default :data:`DEFAULT_MAX_PIXELS`, 8 MP) are refused before decoding
  (:class:`ImageTooLargeError`), unless ``resize`` (a long side in pixels) downscales them first (JPEGs are then
  decoded at a reduced scale directly). Pillow's own decompression-bomb limit still applies.

Inference (:class:`Predictor`): the image is normalised with the model's mean/std and padded (zeros after
normalisation, centred, as the evaluation transform) to at least the model's training size. If the padded image
is exactly the training size, one forward pass; otherwise sliding windows of the training size with ``overlap``
(a fraction of the window) are run one at a time and their raw outputs averaged where they overlap. The model
therefore only ever sees its training size (position embeddings and the routers' learned pooling at their native
grid); memory is one window's activations plus full-size accumulators of 4·(ΣK + 1) bytes per pixel (NYUD:
46 channels, 184 B/pixel, about 1.5 GB at 8 MP). Tiny images (even 1×1) are padded and work. Batch of 1,
``torch.inference_mode()``, bf16 autocast on CUDA. The valid (unpadded) region is cropped back, then each task is
post-processed by :func:`pamm.tasks.postprocess`.

Outputs of :func:`predict` per image, in the output folder, each written atomically: ``<stem>_panel.png``
(:func:`pamm.viz.make_panel`) and ``<stem>_<task>.npy``: ``semseg`` / ``human_parts`` uint8 class ids (H, W);
``depth`` float32 metres (H, W); ``normals`` float32 unit vectors (H, W, 3); ``edge`` / ``sal`` float32
probabilities (H, W). Inputs sharing a stem get ``<stem>-2``, ``<stem>-3``, ... (logged). An input that cannot
be read (or is too large) is skipped and reported at the end (:class:`PredictionFailed`) after the others are
done; an unwritable output folder is reported before any work; model or disk errors stop the run.
"""

from __future__ import annotations

import io
import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from ..fs import atomic_write_bytes
from ..tasks import postprocess

if TYPE_CHECKING:
    from ..models.pamm import ModelMeta

__all__ = [
    "DEFAULT_MAX_PIXELS", "DEFAULT_OVERLAP", "ImageReadError", "ImageTooLargeError", "OutputFolderError",
    "PredictionFailed", "Predictor", "load_image", "window_origins", "sliding_window_outputs", "predict",
]  # fmt: skip

DEFAULT_MAX_PIXELS = 8_000_000
"""Largest image (width × height) predicted without ``resize``: about 1.5 GB of accumulators for a NYUD model."""

DEFAULT_OVERLAP = 0.25
"""Overlap of neighbouring sliding windows, as a fraction of the window size."""

_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_WHITE = 255.0
log = logging.getLogger(__name__)


class ImageReadError(ValueError):
    """An input image is missing, empty, corrupt, not an image, or of an unsupported kind. ``path`` names it."""

    def __init__(self, path: str | os.PathLike, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = str(path)


class ImageTooLargeError(ImageReadError):
    """An input image exceeds the pixel limit (see ``max_pixels`` and ``resize``)."""


class OutputFolderError(RuntimeError):
    """The output folder cannot be created or written."""


class PredictionFailed(RuntimeError):
    """Some images could not be predicted (the others were). ``written``: paths written; ``failures``: (input
    path, message) pairs."""

    def __init__(self, written: list[Path], failures: list[tuple[str, str]]):
        lines = [f"{len(failures)} image(s) failed:"] + [f"  {message}" for _, message in failures]
        super().__init__("\n".join(lines))
        self.written, self.failures = written, failures


# ----------------------------------------------------------------------------------------------------------
# Reading images


def _composite_over_white(image: Image.Image) -> np.ndarray:
    rgba = np.asarray(image.convert("RGBA"), dtype=np.float32)
    alpha = rgba[..., 3:] / 255.0
    return np.rint(rgba[..., :3] * alpha + _WHITE * (1.0 - alpha)).astype(np.uint8)


def _has_transparency(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def _to_rgb(image: Image.Image, path: Path) -> np.ndarray:
    """Decoded image of any mode -> RGB uint8 (H, W, 3), as the module docstring describes."""
    if image.mode in _SIXTEEN_BIT:
        values = np.asarray(image, dtype=np.float64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ImageReadError(path, f"{image.mode} image with values outside 0..65535 is not supported "
                                       f"(expected 8- or 16-bit intensities)")
        gray = np.rint(values * (255.0 / 65535.0)).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    if image.mode == "F":
        raise ImageReadError(path, "floating-point (mode F) images are not supported; save it as 8- or 16-bit")
    if _has_transparency(image):
        return _composite_over_white(image)
    try:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (ValueError, OSError) as e:
        raise ImageReadError(path, f"cannot convert a {image.mode} image to RGB ({e})") from None


def _oriented(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation (a malformed EXIF block is ignored)."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - broken metadata must not make a readable image unusable
        return image


def load_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS, resize: int | None = None
               ) -> np.ndarray:
    """Read an image file as RGB uint8 (H, W, 3) for prediction (rules in the module docstring).

    Args:
        path: any image file Pillow reads.
        max_pixels: refuse larger images (after ``resize``); None means :data:`DEFAULT_MAX_PIXELS`.
        resize: downscale so the long side is at most this many pixels (never upscales).

    Raises:
        ImageReadError: missing / empty / corrupt / not an image / unsupported mode.
        ImageTooLargeError: more than ``max_pixels`` pixels.
    """
    path = Path(path)
    max_pixels = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    if resize is not None and resize < 1:
        raise ValueError(f"resize must be a positive long side in pixels, got {resize}")
    if not path.is_file():
        raise ImageReadError(path, "no such file")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "file is empty (0 bytes)")
    try:
        image = Image.open(path)
    except UnidentifiedImageError:
        raise ImageReadError(path, "not an image format Pillow can read") from None
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(path, f"refused by Pillow's decompression-bomb limit ({e})") from None
    except OSError as e:
        raise ImageReadError(path, f"cannot open the image ({e})") from None
    with image:
        width, height = image.size
        scale = 1.0 if resize is None else min(1.0, resize / max(width, height))
        out_w, out_h = max(1, round(width * scale)), max(1, round(height * scale))
        if out_w * out_h > max_pixels:
            if resize is None:
                long_side = int(math.sqrt(max_pixels * max(width, height) / min(width, height)))
                hint = f"pass resize=LONG_SIDE (--resize, e.g. {long_side}) to downscale it first"
            else:
                hint = f"pass a smaller resize than {resize}"
            raise ImageTooLargeError(path, f"{out_w}x{out_h} = {out_w * out_h:,} pixels is above the limit of "
                                           f"{max_pixels:,} pixels (max_pixels); {hint}")
        if scale < 1.0 and image.format == "JPEG":
            image.draft("RGB", (out_w, out_h))  # decode at a reduced DCT scale (still >= the requested size)
        try:
            image.load()
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise ImageReadError(path, f"corrupt or truncated {image.format or 'image'} data ({e})") from None
        rgb = _to_rgb(_oriented(image), path)
    if scale < 1.0:  # to the requested long side, in the EXIF-oriented frame
        factor = max(out_w, out_h) / max(rgb.shape[:2])
        size = (max(1, round(rgb.shape[1] * factor)), max(1, round(rgb.shape[0] * factor)))
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))
    return rgb


# ----------------------------------------------------------------------------------------------------------
# Inference


def window_origins(length: int, window: int, overlap: float) -> list[int]:
    """Start offsets of sliding windows of ``window`` covering ``length`` (>= window), neighbours overlapping by at
    least ``overlap`` · window, spread evenly with the last one ending at ``length``."""
    if length <= window:
        return [0]
    step = max(1, int(window * (1.0 - overlap)))
    count = math.ceil((length - window) / step) + 1
    return [round(k * (length - window) / (count - 1)) for k in range(count)]


def sliding_window_outputs(run: Callable[[Tensor], Mapping[str, Tensor]], image: Tensor, window: tuple[int, int],
                           overlap: float = DEFAULT_OVERLAP) -> dict[str, Tensor]:
    """Raw outputs of ``run`` over a large image, window by window, averaged where windows overlap.

    Args:
        run: (1, 3, h, w) -> {task: (1, K, h, w)} for windows of exactly ``window``.
        image: (3, H, W), H >= window[0] and W >= window[1] (pad first).
        window: (h, w) of each forward pass.
        overlap: fraction of the window shared by neighbours.

    Returns:
        {task: float32 (K, H, W)} on the CPU.
    """
    _, height, width = image.shape
    if height < window[0] or width < window[1]:
        raise ValueError(f"image {height}x{width} is smaller than the window {window[0]}x{window[1]}; pad it first")
    sums: dict[str, Tensor] = {}
    count = torch.zeros(height, width)
    for top in window_origins(height, window[0], overlap):
        for left in window_origins(width, window[1], overlap):
            crop = image[:, top: top + window[0], left: left + window[1]].unsqueeze(0)
            for task, out in run(crop).items():
                if task not in sums:
                    sums[task] = torch.zeros(out.shape[1], height, width)
                sums[task][:, top: top + window[0], left: left + window[1]] += out[0].float().cpu()
            count[top: top + window[0], left: left + window[1]] += 1
    return {task: total / count for task, total in sums.items()}


class Predictor:
    """Runs a model on images of any size (see the module docstring).

    Args:
        model: a :class:`~pamm.models.PAMM` in eval mode, or any module/callable mapping (1, 3, h, w) to
            {task: (1, K, h, w)}.
        meta: the model's :class:`~pamm.models.pamm.ModelMeta` (``model.meta`` when None): tasks, training size,
            mean and std.
        device: where the model runs; inputs are moved there, outputs back to the CPU.
        overlap: sliding-window overlap fraction.
    """

    def __init__(self, model: Callable, meta: ModelMeta | None = None, device: str | torch.device = "cpu",
                 overlap: float = DEFAULT_OVERLAP):
        self.model, self.meta = model, meta if meta is not None else model.meta
        self.device = torch.device(device)
        self.overlap = overlap
        self.window = tuple(self.meta.train_size)

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike, device: str | torch.device = "cpu",
                        overlap: float = DEFAULT_OVERLAP) -> Predictor:
        """Load a pamm weights file (:func:`~pamm.engine.checkpoint.load_model`) onto ``device``."""
        from .checkpoint import load_model

        model, _ = load_model(Path(checkpoint), device=device)
        return cls(model, model.meta, device, overlap)

    def _run(self, window: Tensor) -> Mapping[str, Tensor]:
        window = window.to(self.device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            return self.model(window)

    def raw_outputs(self, image: np.ndarray) -> dict[str, Tensor]:
        """RGB uint8 (H, W, 3) -> raw head outputs {task: float32 (K, H, W)} on the CPU."""
        height, width = image.shape[:2]
        mean = torch.tensor(self.meta.mean).view(3, 1, 1)
        std = torch.tensor(self.meta.std).view(3, 1, 1)
        x = (torch.tensor(image, dtype=torch.float32).permute(2, 0, 1) / 255.0 - mean) / std
        padded_h, padded_w = max(height, self.window[0]), max(width, self.window[1])
        top, left = (padded_h - height) // 2, (padded_w - width) // 2
        canvas = torch.zeros(3, padded_h, padded_w)
        canvas[:, top: top + height, left: left + width] = x
        with torch.inference_mode():
            if (padded_h, padded_w) == self.window:
                outputs = {t: v[0].float().cpu() for t, v in self._run(canvas.unsqueeze(0)).items()}
            else:
                outputs = sliding_window_outputs(self._run, canvas, self.window, self.overlap)
        return {t: v[:, top: top + height, left: left + width] for t, v in outputs.items()}

    def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """RGB uint8 (H, W, 3) -> predictions in the formats of the module docstring."""
        predictions = {}
        for task, raw in self.raw_outputs(image).items():
            value = postprocess(task, raw.unsqueeze(0))[0]
            if task in ("semseg", "human_parts"):
                predictions[task] = value.numpy().astype(np.uint8)
            elif task == "normals":
                predictions[task] = value.permute(1, 2, 0).numpy().astype(np.float32)
            else:
                predictions[task] = value.numpy().astype(np.float32)
        return predictions


# ----------------------------------------------------------------------------------------------------------
# Files


def _check_output_folder(folder: Path) -> None:
    """Create ``folder`` and prove it writable, before any work."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".pamm-write-test-"):
            pass
    except OSError as e:
        raise OutputFolderError(f"output folder {folder} is not writable: {e.strerror or e}") from None


def _unique_stems(paths: Sequence[Path]) -> list[str]:
    seen: dict[str, int] = {}
    stems = []
    for path in paths:
        n = seen.get(path.stem, 0) + 1
        seen[path.stem] = n
        stems.append(path.stem if n == 1 else f"{path.stem}-{n}")
        if n > 1:
            log.info("%s shares its name with an earlier input; its outputs are named %s_*", path, stems[-1])
    return stems


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def predict(checkpoint: str | os.PathLike, images: Iterable[str | os.PathLike], out_dir: str | os.PathLike,
            device: str = "cpu", *, resize: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
            overlap: float = DEFAULT_OVERLAP, panel: bool = True, predictor: Predictor | None = None
            ) -> list[Path]:
    """Predict every task of a checkpoint's model for image files and write the results (module docstring).

    Args:
        checkpoint: a pamm weights file.
        images: input image paths; each is processed even if others fail.
        out_dir: output folder (created); ``<stem>_panel.png`` and ``<stem>_<task>.npy`` per image.
        device: ``cpu`` or ``cuda`` (``cuda:N``).
        resize: downscale inputs so their long side is at most this (outputs are at the downscaled size).
        max_pixels: refuse larger inputs (after ``resize``); None means :data:`DEFAULT_MAX_PIXELS`.
        overlap: sliding-window overlap for inputs larger than the training size.
        panel: also write the PNG panel.
        predictor: use this predictor instead of loading ``checkpoint`` (tests, notebooks).

    Returns:
        the written paths, in input order.

    Raises:
        OutputFolderError: the output folder cannot be written (raised before any work).
        RuntimeError: ``cuda`` requested without a GPU; CheckpointError (a RuntimeError) for a bad checkpoint.
        PredictionFailed: after all images were tried, if any failed (its ``written`` and ``failures`` say which).
    """
    from ..viz import make_panel

    paths = [Path(p) for p in images]
    if resize is not None and resize < 1:
        raise ValueError(f"resize must be a positive long side in pixels, got {resize}")
    out = Path(out_dir)
    _check_output_folder(out)
    if predictor is None:
        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} requested but CUDA is not available; use --device cpu")
        predictor = Predictor.from_checkpoint(checkpoint, device=device, overlap=overlap)
    written: list[Path] = []
    failures: list[tuple[str, str]] = []
    for path, stem in zip(paths, _unique_stems(paths)):
        try:
            image = load_image(path, max_pixels=max_pixels, resize=resize)
            predictions = predictor(image)
        except ImageReadError as e:
            failures.append((str(path), str(e)))
            log.info("skipped %s", e)
            continue
        files = {out / f"{stem}_{task}.npy": _npy_bytes(value) for task, value in predictions.items()}
        if panel:
            files[out / f"{stem}_panel.png"] = _png_bytes(make_panel(image, predictions, meta=predictor.meta))
        for target, data in files.items():
            atomic_write_bytes(target, data)
            written.append(target)
        log.info("%s -> %s_*.npy%s (%dx%d)", path, out / stem, " + panel" if panel else "", *image.shape[1::-1])
    if failures:
        raise PredictionFailed(written, failures)
    return written
