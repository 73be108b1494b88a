"""Reading dataset files with errors that say which file is wrong and what was expected.

Every reader raises :class:`DatasetError` (a ``ValueError``) naming the file, never a bare PIL/NumPy/SciPy error.

Format decisions, applied the same way by the loaders and by ``pamm data check``:

* Files are decoded by their content, not their extension.
* Input images may be any format Pillow reads (a JPEG saved as ``.png`` is accepted as the JPEG it is). They are
  converted to 8-bit RGB: grayscale is replicated over the three channels, palette images are expanded through
  their palette, the alpha channel of RGBA / LA images is dropped, and 16-bit grayscale is scaled by 255/65535 and
  rounded.
* Label maps (segmentation, edges, saliency, normals) must be PNG-encoded: lossy JPEG compression would corrupt
  their values, so a label file with JPEG (or any non-PNG) content is an error. Single-channel labels are read as
  stored (a palette PNG gives its indices, not its colours); 1-bit PNGs read as 0 / 255.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")


class DatasetError(ValueError):
    """A dataset file or folder is missing, unreadable, or holds values outside what its format allows.

    The message always names the offending path. ``path`` is also kept as an attribute. The constructor accepts the
    message alone so that the error survives being re-raised from a DataLoader worker (PyTorch re-creates it as
    ``type(err)(message)``).
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        super().__init__(message)
        self.path = None if path is None else str(path)


def fail(path: str | os.PathLike, expectation: str) -> DatasetError:
    """Build the :class:`DatasetError` ``"<path>: <expectation>"``."""
    return DatasetError(f"{path}: {expectation}", path=path)


def require_file(path: str | os.PathLike, what: str) -> Path:
    """Return ``path`` as a ``Path`` if it is a non-empty file; raise :class:`DatasetError` otherwise."""
    path = Path(path)
    if not path.is_file():
        raise fail(path, f"missing file (expected the {what})")
    if path.stat().st_size == 0:
        raise fail(path, f"file is empty (0 bytes); expected the {what}")
    return path


def _open_decoded(path: Path, what: str) -> Image.Image:
    """Open and fully decode an image so that truncation is detected here, not later."""
    try:
        image = Image.open(path)
        image.load()
    except UnidentifiedImageError:
        raise fail(path, f"not a readable image (expected the {what})") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise fail(path, f"corrupt or truncated image ({err}); expected the {what}") from None
    return image


def read_rgb_image(path: str | os.PathLike, what: str = "RGB input image") -> np.ndarray:
    """Read an input image as ``uint8 (H, W, 3)`` RGB, converting other modes as the module docstring describes."""
    path = require_file(path, what)
    image = _open_decoded(path, what)
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.float64)
        if values.min() < 0 or values.max() > 65535:
            raise fail(path, f"{image.mode} image with values outside 0..65535; expected the {what}")
        gray = np.rint(values * (255.0 / 65535.0)).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode == "F":
        raise fail(path, f"floating-point image (mode F) is not supported; expected the {what}")
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


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
