"""File formats of the real datasets, encoded in memory: PNG, JPEG, NumPy ``.npy`` and compressed MATLAB v5 ``.mat``.

Every encoder returns the file's bytes, so that a dataset writer only decides names and contents and the files
themselves are written in one place (:class:`pamm.fs.StagedFolder`), where a full disk is reported by file name.
The same arrays always give the same bytes. Used by the synthetic datasets (:mod:`pamm.data.synth`) and by
:func:`pamm.data.generic.encode_targets` (``pamm data convert``).
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np

__all__ = ["png_bytes", "jpeg_bytes", "npy_bytes", "mat_bytes", "encode_normals"]


def png_bytes(array: np.ndarray) -> bytes:
    """PNG of a uint8 (H, W) (mode L) or (H, W, 3) (RGB) array, zlib level 1 (fast; the files stay small)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def jpeg_bytes(array: np.ndarray, quality: int = 92) -> bytes:
    """JPEG of a uint8 RGB (H, W, 3) array."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    """``.npy`` file of ``array`` (what ``np.save`` writes)."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


# the text written since the synthetic datasets introduced it (a seed keeps giving byte-identical files)
_MAT_HEADER = b"MATLAB 5.0 MAT-file, Platform: posix, Created by: pamm.data.synth".ljust(116, b" ")
_MI_COMPRESSED = 15


def mat_bytes(name: str, value: np.ndarray) -> bytes:
    """One variable as a compressed MATLAB v5 file (what MATLAB's ``save`` writes by default).

    ``scipy.io.savemat`` encodes the variable (the matrix element); only the 128-byte header and the compression are
    done here, because ``savemat`` writes the current time into the header, so its files differ from run to run
    and a seed would no longer give byte-identical datasets. The header gets a fixed text instead of the date, and
    the element is compressed at zlib level 1: measured by ``benchmarks/synth_speed.py`` (BENCHMARKS.md), scipy's
    level 6 makes the ``.mat`` files about half as large and their encoding 1.2x to 2.4x slower (96x128 to 240x320).
    ``scipy.io.loadmat`` reads both identically.
    """
    from scipy.io import savemat

    buffer = io.BytesIO()
    savemat(buffer, {name: value}, do_compression=False, oned_as="row")
    raw = buffer.getvalue()
    packed = zlib.compress(raw[128:], 1)
    return _MAT_HEADER + raw[116:128] + struct.pack("<II", _MI_COMPRESSED, len(packed)) + packed


def encode_normals(normals: np.ndarray) -> np.ndarray:
    """Unit normals (H, W, 3) float -> uint8 RGB with ``2 * v / 255 - 1`` ~= normal (the datasets' encoding)."""
    return np.clip(np.rint((normals + 1.0) * 127.5), 0, 255).astype(np.uint8)
