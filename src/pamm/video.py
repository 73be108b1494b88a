"""Reading and writing videos through PyAV (FFmpeg's libraries; the optional extra ``pip install 'pamm[video]'``).

A video file in gives RGB frames; frames out are encoded as H.264 (``libx264``, else MPEG-4 part 2) in an MP4
container, ``yuv420p``, at the input's frame rate. Frames must all have one size; odd sides are padded by one white
pixel (``yuv420p`` needs even sides). Writing is atomic (:func:`pamm.fs.atomic_write`): the file appears whole or
not at all.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

from .data.io import ImageReadError
from .errors import ResourceError
from .fs import atomic_write

__all__ = ["VIDEO_SUFFIXES", "VideoReadError", "is_video", "require_av", "VideoReader", "write_video"]

VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv"})
"""File name suffixes treated as videos (GIF, APNG and multi-page TIFF are images: their first frame is read)."""

DEFAULT_FPS = Fraction(25)


class VideoReadError(ImageReadError):
    """A video file is missing, corrupt or holds no video stream (an input that cannot be read, as an
    :class:`~pamm.data.io.ImageReadError`). ``path`` names it."""


def is_video(path: str | os.PathLike) -> bool:
    """Whether ``path`` is treated as a video (by its suffix, :data:`VIDEO_SUFFIXES`)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def require_av():
    """The ``av`` module; a :class:`~pamm.errors.ResourceError` saying how to install it when it is missing."""
    try:
        import av
    except ImportError:
        raise ResourceError(
            "videos need PyAV, which is not installed: pip install 'pamm[video]' (or pip install av)"
        ) from None
    return av


class VideoReader:
    """The frames of a video file, as RGB uint8 (H, W, 3) arrays; use as a context manager.

    Attributes:
        fps: frame rate (a ``Fraction``; 25 when the file does not say).
        frames: number of frames the container announces (0 when unknown).
        size: (H, W) of the frames.
    """

    def __init__(self, path: str | os.PathLike):
        av = require_av()
        self.path = Path(path)
        if self.path.is_dir():
            raise VideoReadError(f"{self.path}: is a folder, not a file (expected a video)", self.path)
        if not self.path.is_file():
            raise VideoReadError(f"{self.path}: missing file (expected a video)", self.path)
        try:
            self._container = av.open(str(self.path), mode="r")
        except (av.FFmpegError, OSError, ValueError) as e:
            raise VideoReadError(f"{self.path}: not a readable video ({e})", self.path) from None
        if not self._container.streams.video:
            self._container.close()
            raise VideoReadError(f"{self.path}: holds no video stream (expected a video)", self.path)
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.fps = Fraction(rate) if rate else DEFAULT_FPS
        self.frames = int(self._stream.frames or 0)
        self.size = (int(self._stream.codec_context.height), int(self._stream.codec_context.width))

    def __iter__(self) -> Iterator[np.ndarray]:
        av = require_av()
        try:
            for frame in self._container.decode(self._stream):
                yield frame.to_ndarray(format="rgb24")
        except (av.FFmpegError, ValueError) as e:
            raise VideoReadError(f"{self.path}: corrupt video data ({e})", self.path) from None

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _codec(av) -> str:
    for name in ("libx264", "mpeg4"):
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # noqa: BLE001 - an FFmpeg build without this encoder
            continue
    raise ResourceError("this FFmpeg build (PyAV) has neither a libx264 nor an mpeg4 encoder")


def _even(frame: np.ndarray) -> np.ndarray:
    height, width = frame.shape[:2]
    if height % 2 == 0 and width % 2 == 0:
        return frame
    out = np.full((height + height % 2, width + width % 2, 3), 255, dtype=np.uint8)
    out[:height, :width] = frame
    return out


def write_video(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: Fraction | float = DEFAULT_FPS) -> int:
    """Encode RGB uint8 (H, W, 3) ``frames`` (all of one size) into an MP4 file at ``path``, atomically.

    Returns the number of frames written. A failure (disk full, frames of another size, an error raised by the
    ``frames`` iterator) leaves no file behind and no old file changed; disk errors name ``path``.
    """
    av = require_av()
    count = 0

    def encode(tmp: str) -> None:
        nonlocal count
        try:
            with av.open(tmp, mode="w", format="mp4") as container:
                stream = None
                for frame in frames:
                    frame = _even(np.ascontiguousarray(frame, dtype=np.uint8))
                    if stream is None:
                        stream = container.add_stream(_codec(av), rate=Fraction(fps).limit_denominator(100000))
                        stream.height, stream.width = frame.shape[:2]
                        stream.pix_fmt = "yuv420p"
                    elif frame.shape[:2] != (stream.height, stream.width):
                        raise ValueError(
                            f"frame {count} is {frame.shape[0]}x{frame.shape[1]}, the video "
                            f"{stream.height}x{stream.width}; every frame must have one size"
                        )
                    container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
                    count += 1
                if stream is None:
                    raise ValueError(f"no frames to write to {path}")
                container.mux(stream.encode(None))
        except av.FFmpegError as e:
            if getattr(e, "errno", None):
                raise OSError(e.errno, e.strerror or str(e)) from e
            raise

    atomic_write(path, encode)
    return count
