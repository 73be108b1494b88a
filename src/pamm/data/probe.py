"""Fast integrity checks of image files, for validating a dataset before training (:func:`pamm.data.check.
validate_dataset`): the checks of :mod:`pamm.data.io`'s readers that need no pixel values, made without decoding
the pixels.

A PNG is verified by reading every chunk and checking its CRC (a truncated or corrupted file fails) without
inflating the image data; a JPEG is decoded at 1/8 scale (the whole entropy-coded stream is still read, so a
truncated file fails) — both several times faster than a full decode. Other formats are fully decoded. The format
and mode rules are those of the readers (an 8-bit RGB input image may be of any mode but ``F``; a label map must be
a PNG of the right channel count). For 16-bit images the probe answers None: their value checks need the pixels,
so the caller decodes them with the full reader.
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from pamm.data.io import fail, require_file

__all__ = ["probe_image", "PROBE_KINDS"]

PROBE_KINDS = ("rgb", "label", "label3")
"""What a probed file must be: an input image (any mode Pillow reads), a single-channel label PNG, an RGB label
PNG."""

_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I")
_LABEL_MODES = {"label": ("1", "L", "P"), "label3": ("RGB",)}


def _verify(path: Path, what: str) -> Image.Image:
    """Open ``path`` and check its integrity without a full decode; returns the image (header read)."""
    try:
        image = Image.open(path)
        if image.format == "PNG":
            Image.open(path).verify()  # verify() leaves its image unusable: check a second handle
        elif image.format == "JPEG":
            probe = Image.open(path)
            probe.draft(probe.mode, (max(1, probe.width // 8), max(1, probe.height // 8)))
            probe.load()
        else:
            Image.open(path).load()
    except UnidentifiedImageError:
        raise fail(path, f"not a readable image (expected the {what})") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise fail(path, f"corrupt or truncated image ({err}); expected the {what}") from None
    return image


def probe_image(path: str | os.PathLike, kind: str, what: str) -> tuple[int, int] | None:
    """Check image file ``path`` as the reader of ``kind`` (:data:`PROBE_KINDS`) would, fast; returns its
    (height, width), or None when only the full reader can tell (16-bit images). Raises
    :class:`~pamm.data.io.DatasetError` naming the file."""
    if kind not in PROBE_KINDS:
        raise ValueError(f"unknown probe kind {kind!r}; expected one of {PROBE_KINDS}")
    path = require_file(path, what)
    image = _verify(path, what)
    if image.mode in _SIXTEEN_BIT:  # value checks need the pixels: the full reader decides
        return None
    if kind == "rgb":
        if image.mode == "F":
            raise fail(path, f"floating-point image (mode F) is not supported; expected the {what}")
        return image.height, image.width
    if image.format != "PNG":
        raise fail(path, f"label file holds {image.format} data; expected a lossless PNG with the {what}")
    if image.mode not in _LABEL_MODES[kind]:
        expected = f"a single-channel {what}" if kind == "label" else f"an 8-bit RGB {what}"
        raise fail(path, f"{image.mode} PNG; expected {expected}")
    return image.height, image.width
