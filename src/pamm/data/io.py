"""Reading images and dataset files, with errors that say which file is wrong and what was expected.

Every reader raises :class:`DatasetError` (a ``ValueError``) naming the file, never a bare PIL/NumPy/SciPy error;
unreadable input images raise its subclass :class:`ImageReadError`.

**The one image reader** (:func:`read_rgb_image`; :func:`rgb_from_pil` for an image decoded already) serves the
dataset loaders, ``pamm data check``, ``pamm predict`` and :func:`pamm.load`'s predictor alike, so training and
inference see the same pixels. One rule set:

* Files are decoded by their content, not their extension (a JPEG named ``.png`` is read as the JPEG it is).
* The EXIF orientation is applied first, so images come out as viewers show them (a malformed EXIF block is
  ignored).
* RGB stays as is; grayscale (``L``, ``1``) is replicated over three channels; palette (``P``) images are expanded
  through their palette; ``CMYK`` and ``YCbCr`` are converted by Pillow (ICC profiles are not applied).
* Transparency (``RGBA``, ``LA``, ``PA``, or a palette / RGB / gray image with a transparent colour) is composited
  over white, as images are usually displayed.
* 16-bit grayscale (``I;16*``, or ``I`` holding 0..65535) is scaled by 255/65535 and rounded: PNG stores lower bit
  depths scaled to the full 16-bit range, so the full range is the right reference. 32-bit integer images with
  values outside 0..65535 and floating-point (``F``) images are refused.
* Multi-frame files (GIF, TIFF, APNG) give their first frame.
* Missing, empty, truncated, corrupt or non-image files, and folders, raise :class:`ImageReadError`.
* ``max_pixels`` refuses larger images from their header, before decoding (:class:`ImageTooLargeError`);
  ``resize`` downscales to a long side first (JPEGs are then decoded at a reduced scale directly). Pillow's
  decompression-bomb warning is not shown (the size is checked here); its hard limit (about 179 megapixels) still
  refuses larger files.

Label maps (segmentation, edges, saliency, normals) must be PNG-encoded: lossy JPEG compression would corrupt their
values, so a label file with JPEG (or any non-PNG) content is an error. Single-channel labels are read as stored (a
palette PNG gives its indices, not its colours); 1-bit PNGs read as 0 / 255.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_TRANSPARENT_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_WHITE = 255.0


class DatasetError(ValueError):
    """A dataset file or folder is missing, unreadable, or holds values outside what its format allows.

    The message always names the offending path. ``path`` is also kept as an attribute. The constructor accepts the
    message alone so that the error survives being re-raised from a DataLoader worker (PyTorch re-creates it as
    ``type(err)(message)``).
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        super().__init__(message)
        self.path = None if path is None else str(path)


class ImageReadError(DatasetError):
    """An image is missing, empty, corrupt, not an image, a folder, or of an unsupported kind."""


class ImageTooLargeError(ImageReadError):
    """An image has more pixels than allowed (see ``max_pixels`` and ``resize`` of :func:`read_rgb_image`)."""


def fail(path: str | os.PathLike, expectation: str, error: type[DatasetError] = DatasetError) -> DatasetError:
    """Build the error ``"<path>: <expectation>"`` (a :class:`DatasetError` unless ``error`` says otherwise)."""
    return error(f"{path}: {expectation}", path=path)


def require_file(path: str | os.PathLike, what: str, error: type[DatasetError] = DatasetError) -> Path:
    """Return ``path`` as a ``Path`` if it is a non-empty file; raise ``error`` naming it otherwise."""
    path = Path(path)
    if path.is_dir():
        raise fail(path, f"is a folder, not a file (expected the {what})", error)
    if not path.is_file():
        raise fail(path, f"missing file (expected the {what})", error)
    if path.stat().st_size == 0:
        raise fail(path, f"file is empty (0 bytes); expected the {what}", error)
    return path


def _open(path: Path, what: str, error: type[DatasetError]) -> Image.Image:
    """Open an image (header only); Pillow's decompression-bomb warning is silenced (callers check sizes)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(path)
    except UnidentifiedImageError:
        raise fail(path, f"not a readable image (expected the {what})", error) from None
    except Image.DecompressionBombError as err:
        raise fail(
            path, f"refused by Pillow's decompression-bomb limit ({err}); expected the {what}", ImageTooLargeError
        ) from None
    except OSError as err:
        raise fail(path, f"cannot open the image ({err}); expected the {what}", error) from None


def _decode(image: Image.Image, path: Path, what: str, error: type[DatasetError]) -> None:
    """Decode the pixels now, so that truncation is detected here, not later."""
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise fail(
            path, f"corrupt or truncated image ({image.format or 'unknown format'}: {err}); expected the {what}", error
        ) from None


def _open_decoded(path: Path, what: str) -> Image.Image:
    """Open and fully decode a label image."""
    image = _open(path, what, DatasetError)
    _decode(image, path, what, DatasetError)
    return image


def _oriented(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation (a malformed EXIF block is ignored)."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - broken metadata must not make a readable image unusable
        return image


def rgb_from_pil(
    image: Image.Image, source: str | os.PathLike = "PIL image", what: str = "RGB input image"
) -> np.ndarray:
    """A decoded image of any mode -> RGB ``uint8 (H, W, 3)`` by the module's rules (EXIF orientation included).

    ``source`` names the image in error messages (:class:`ImageReadError`)."""
    image = _oriented(image)
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.float64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise fail(
                source,
                f"{image.mode} image with values outside 0..65535; expected the {what} with 8- or 16-bit intensities",
                ImageReadError,
            )
        gray = np.rint(values * (255.0 / 65535.0)).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode == "F":
        raise fail(
            source,
            f"floating-point image (mode F) is not supported; expected the {what} in 8 or 16 bits",
            ImageReadError,
        )
    try:
        if image.mode in _TRANSPARENT_MODES or "transparency" in image.info:
            rgba = np.asarray(image.convert("RGBA"), dtype=np.float32)
            alpha = rgba[..., 3:] / 255.0
            return np.rint(rgba[..., :3] * alpha + _WHITE * (1.0 - alpha)).astype(np.uint8)
        return np.array(image.convert("RGB"), dtype=np.uint8)
    except (ValueError, OSError) as err:
        raise fail(
            source, f"cannot convert a {image.mode} image to RGB ({err}); expected the {what}", ImageReadError
        ) from None


def _too_large_hint(width: int, height: int, max_pixels: int, resize: int | None) -> str:
    if resize is not None:
        return f"pass a smaller resize than {resize}"
    long_side = max(1, int(math.sqrt(max_pixels * max(width, height) / max(min(width, height), 1))))
    return f"pass resize=LONG_SIDE (--resize, e.g. {long_side}) to downscale it first, or raise max_pixels"


def check_read_options(max_pixels: int | None, resize: int | None) -> None:
    """Raise ``ValueError`` unless ``max_pixels`` and ``resize`` of :func:`read_rgb_image` are None or positive."""
    if max_pixels is not None and max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive number of pixels, got {max_pixels}")
    if resize is not None and resize < 1:
        raise ValueError(f"resize must be a positive long side in pixels, got {resize}")


def read_rgb_image(
    path: str | os.PathLike, what: str = "RGB input image", *, max_pixels: int | None = None, resize: int | None = None
) -> np.ndarray:
    """Read an image file as RGB ``uint8 (H, W, 3)`` (rules in the module docstring).

    Args:
        path: any image file Pillow reads.
        what: what the file should be, for messages.
        max_pixels: refuse images with more pixels (after ``resize``), checked before decoding; None: no limit.
        resize: downscale so that the long side is at most this many pixels (never upscales); None: as stored.

    Raises:
        ImageReadError: missing / a folder / empty / corrupt / not an image / unsupported mode.
        ImageTooLargeError: more than ``max_pixels`` pixels.
        ValueError: ``max_pixels`` or ``resize`` below 1.
    """
    check_read_options(max_pixels, resize)
    path = require_file(path, what, ImageReadError)
    with _open(path, what, ImageReadError) as image:
        width, height = image.size
        scale = 1.0 if resize is None else min(1.0, resize / max(width, height))
        out_w, out_h = max(1, round(width * scale)), max(1, round(height * scale))
        if max_pixels is not None and out_w * out_h > max_pixels:
            raise fail(
                path,
                f"{out_w}x{out_h} = {out_w * out_h:,} pixels is above the limit of {max_pixels:,} "
                f"pixels (max_pixels); {_too_large_hint(width, height, max_pixels, resize)}",
                ImageTooLargeError,
            )
        if scale < 1.0 and image.format == "JPEG":
            image.draft("RGB", (out_w, out_h))  # decode at a reduced DCT scale (still >= the requested size)
        _decode(image, path, what, ImageReadError)
        rgb = rgb_from_pil(image, path, what)
    if scale < 1.0:  # to the requested long side, in the EXIF-oriented frame
        factor = max(out_w, out_h) / max(rgb.shape[:2])
        size = (max(1, round(rgb.shape[1] * factor)), max(1, round(rgb.shape[0] * factor)))
        rgb = np.array(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))
    return rgb


def read_label_png(path: str | os.PathLike, what: str, channels: int = 1) -> np.ndarray:
    """Read a PNG label map as stored: ``(H, W)`` for ``channels=1``, ``(H, W, 3)`` for ``channels=3``.

    Single-channel results are ``uint8`` or, for 16-bit PNGs, ``int32``; three-channel results are ``uint8``.
    """
    path = require_file(path, what)
    image = _open_decoded(path, what)
    if image.format != "PNG":
        raise fail(path, f"label file holds {image.format} data; expected a lossless PNG with the {what}")
    if channels == 1:
        if image.mode == "1":
            return np.asarray(image.convert("L"), dtype=np.uint8).copy()
        if image.mode in ("L", "P"):
            return np.asarray(image, dtype=np.uint8).copy()
        if image.mode in _SIXTEEN_BIT_MODES:
            return np.asarray(image, dtype=np.int32).copy()
        raise fail(path, f"{image.mode} PNG with {len(image.getbands())} channels; expected a single-channel {what}")
    if image.mode != "RGB":
        raise fail(path, f"{image.mode} PNG; expected an 8-bit RGB {what}")
    return np.asarray(image, dtype=np.uint8).copy()


def read_depth_npy(path: str | os.PathLike, what: str = "depth map in metres") -> np.ndarray:
    """Read a ``.npy`` depth map as ``float32 (H, W)``; values must be finite and ≥ 0 (0 = invalid)."""
    path = require_file(path, what)
    try:
        depth = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise fail(path, f"unreadable .npy file ({err}); expected the {what}") from None
    if depth.ndim == 3 and depth.shape[2] == 1:
        depth = depth[:, :, 0]
    if depth.ndim != 2 or not np.issubdtype(depth.dtype, np.number):
        raise fail(path, f"array of shape {depth.shape} and dtype {depth.dtype}; expected a 2-D numeric {what}")
    depth = depth.astype(np.float32)
    if not np.isfinite(depth).all():
        raise fail(path, f"{int((~np.isfinite(depth)).sum())} non-finite values; expected a finite {what}")
    if (depth < 0).any():
        raise fail(path, f"negative values (min {float(depth.min()):.4g}); expected a {what} ≥ 0 (0 = invalid)")
    return depth


def read_mat(path: str | os.PathLike, key: str, what: str) -> np.ndarray:
    """Read the variable ``key`` of a MATLAB (≤ v7.2) ``.mat`` file."""
    from scipy.io import loadmat

    path = require_file(path, what)
    try:
        contents = loadmat(path)
    except NotImplementedError:
        raise fail(path, f"MATLAB v7.3 (HDF5) files are not supported; expected a v5 .mat with the {what}") from None
    except Exception as err:  # scipy raises a zoo of types (MatReadError, ValueError, TypeError, OSError ...)
        raise fail(path, f"unreadable .mat file ({type(err).__name__}: {err}); expected the {what}") from None
    if key not in contents:
        variables = sorted(k for k in contents if not k.startswith("__"))
        raise fail(path, f"no variable {key!r} (found {variables}); expected the {what}")
    return contents[key]


def check_range(values: np.ndarray, path: str | os.PathLike, allowed: str, valid: np.ndarray) -> None:
    """Raise :class:`DatasetError` unless ``valid`` (a boolean mask over ``values``) holds everywhere.

    ``allowed`` describes the permitted values for the message, e.g. ``"0..40"``.
    """
    if not valid.all():
        bad = np.unique(values[~valid])
        shown = ", ".join(str(v) for v in bad[:8]) + (" ..." if bad.size > 8 else "")
        raise fail(path, f"label values {shown} out of range; expected {allowed}")
