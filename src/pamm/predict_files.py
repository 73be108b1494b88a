"""The job of ``pamm predict``: image and video files in, a folder of prediction files out.

:func:`find_inputs` turns command-line arguments into files: a file is itself; a folder gives its images and videos
(by suffix, not recursive, sorted); a pattern with ``*``, ``?`` or ``[`` is expanded (``**`` spans folders).

:func:`predict_files` then, before any work, checks that the output folder can be written and that no output file
exists already (unless ``overwrite``), and:

- reads images ``batch_size`` at a time (the one reader, :func:`pamm.data.io.read_rgb_image`), predicts them
  together and writes each image's files all or nothing (:mod:`pamm.outputs`); inputs sharing a file name stem get
  ``<stem>-2``, ``<stem>-3``, ... in input order;
- turns a video (:data:`pamm.video.VIDEO_SUFFIXES`) into ``<stem>_panel.mp4``: a panel per frame, at the input's
  frame rate, with one frame size and one depth colour range (from the first frame) throughout, so colours mean
  the same depth in every frame (the ``video`` extra, PyAV);
- skips an input that cannot be read (corrupt, truncated, too large, not an image) and, after all others are done,
  raises :class:`PredictionFailed` listing them (exit status 2). Disk and model errors stop the run at once; the
  images finished before keep their complete sets of files, the one being written leaves none.
"""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .data.io import ImageReadError
from .errors import InputError, ResourceError, describe_os_error
from .inference import ImagePredictor
from .outputs import encode_prediction, output_names, write_files
from .video import VideoReader, VideoReadError, is_video, require_av, write_video

__all__ = ["PredictionFailed", "PredictReport", "find_inputs", "image_suffixes", "predict_files"]

_VIDEO_HEADROOM = 28
"""Extra panel height (pixels) of video frames: room for two more legend rows than the first frame needed."""


@dataclass
class PredictReport:
    """What :func:`predict_files` did: files written (in input order), images and videos predicted, and the
    inputs that failed as (path, one-line message) pairs."""

    written: list[Path] = field(default_factory=list)
    images: int = 0
    videos: int = 0
    frames: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)


class PredictionFailed(InputError):
    """Some inputs could not be predicted (the others were). ``report`` says what was written and what failed."""

    def __init__(self, report: PredictReport):
        lines = [f"{len(report.failures)} input(s) failed:"] + [f"  {message}" for _, message in report.failures]
        super().__init__("\n".join(lines))
        self.report = report


def image_suffixes() -> frozenset[str]:
    """File name suffixes of the image formats Pillow can open (how folders are listed)."""
    Image.init()
    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def find_inputs(arguments: Sequence[str | os.PathLike]) -> list[Path]:
    """Files named by ``arguments`` (module docstring), each once, in order.

    Raises:
        InputError: an argument names nothing, a folder holds no image or video, or a pattern matches no file.
    """
    suffixes = image_suffixes()
    found: list[Path] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            listed = sorted(p for p in path.iterdir() if p.is_file() and (p.suffix.lower() in suffixes or is_video(p)))
            if not listed:
                raise InputError(
                    f"{path}: a folder without images or videos (looked for files named *.jpg, *.png, *.mp4, ...)"
                )
            found += listed
        elif any(c in str(argument) for c in "*?["):
            matches = sorted(Path(p) for p in glob.glob(str(argument), recursive=True) if Path(p).is_file())
            if not matches:
                raise InputError(f"{argument}: no file matches this pattern")
            found += matches
        else:
            raise InputError(f"{path}: no such file or folder (expected an image, a video, a folder or a pattern)")
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def _unique_stems(paths: Sequence[Path]) -> list[str]:
    seen: dict[str, int] = {}
    stems = []
    for path in paths:
        seen[path.stem] = seen.get(path.stem, 0) + 1
        stems.append(path.stem if seen[path.stem] == 1 else f"{path.stem}-{seen[path.stem]}")
    return stems


def _prepare_folder(folder: Path) -> None:
    """Create ``folder`` and prove it writable, before any work."""
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder}: is a file, not a folder (expected the output folder)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".pamm-write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise ResourceError(f"cannot write the output folder {describe_os_error(e, folder)}", e.errno) from None


def _as_tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb).permute(2, 0, 1).float()


class _VideoPanels:
    """Panels of a video's frames at one size and with one depth colour range (those of the first frame)."""

    def __init__(self, predictor: ImagePredictor, tasks: Sequence[str]):
        self.predictor, self.tasks = predictor, tasks
        self.size: tuple[int, int] | None = None
        self.depth_limits: tuple[float, float] | None = None

    def __call__(self, frames: list[np.ndarray]) -> Iterator[np.ndarray]:
        from .viz import depth_range, make_panel

        predictions = self.predictor.predict_images([_as_tensor(f) for f in frames], frames, self.tasks)
        for frame, prediction in zip(frames, predictions):
            if self.depth_limits is None and "depth" in prediction:
                self.depth_limits = depth_range(prediction["depth"])
            panel = make_panel(frame, prediction, meta=self.predictor.meta, depth_limits=self.depth_limits)
            if self.size is None:
                self.size = (panel.height + _VIDEO_HEADROOM, panel.width)
            canvas = np.full((*self.size, 3), 255, dtype=np.uint8)
            height, width = min(panel.height, self.size[0]), min(panel.width, self.size[1])
            canvas[:height, :width] = np.asarray(panel)[:height, :width]
            yield canvas


def _predict_video(predictor: ImagePredictor, path: Path, target: Path, tasks: Sequence[str]) -> int:
    """Write the panel video of ``path`` to ``target``; returns the number of frames."""
    panels = _VideoPanels(predictor, tasks)
    with VideoReader(path) as reader:

        def frames() -> Iterator[np.ndarray]:
            batch: list[np.ndarray] = []
            for frame in reader:
                batch.append(frame)
                if len(batch) == predictor.predictor.batch_size:
                    yield from panels(batch)
                    batch = []
            if batch:
                yield from panels(batch)
            if panels.size is None:
                raise VideoReadError(f"{path}: holds no frames (expected a video)", path)

        return write_video(target, frames(), reader.fps)


def predict_files(
    predictor: ImagePredictor,
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    tasks: Sequence[str] | None = None,
    panel: bool = True,
    overwrite: bool = False,
    progress: bool = False,
) -> PredictReport:
    """Predict image and video files and write the results into ``out_dir`` (module docstring).

    Args:
        predictor: from :func:`pamm.load`.
        inputs: files (see :func:`find_inputs` for folders and patterns).
        out_dir: output folder (created).
        tasks: tasks to write (None: all the model's).
        panel: write image panels (videos always give their panel video).
        overwrite: replace existing output files instead of refusing to start.
        progress: show a progress bar on stderr.

    Returns:
        a :class:`PredictReport` when every input succeeded.

    Raises:
        InputError: unknown tasks, an output folder that is a file, or outputs that exist (before any work).
        ResourceError: the output folder cannot be written (before any work), the disk is full (naming the file),
            videos without PyAV.
        PredictionFailed: after all inputs were tried, if some could not be read.
    """
    from tqdm import tqdm

    paths = [Path(p) for p in inputs]
    tasks = predictor.predictor.check_tasks(tasks)
    out = Path(out_dir)
    stems = _unique_stems(paths)
    targets = [
        [f"{stem}_panel.mp4"] if is_video(path) else output_names(stem, tasks, panel)
        for path, stem in zip(paths, stems)
    ]
    if any(is_video(p) for p in paths):
        require_av()
    _prepare_folder(out)
    if not overwrite:
        existing = [out / name for names in targets for name in names if (out / name).exists()]
        if existing:
            more = f" and {len(existing) - 1} more output file(s)" if len(existing) > 1 else ""
            raise InputError(
                f"{existing[0]}{more} exist already; pass --overwrite (overwrite=True) to replace them, "
                f"or choose another output folder"
            )
    report = PredictReport()
    pending: list[tuple[Path, str, torch.Tensor, np.ndarray]] = []
    bar = tqdm(total=len(paths), unit="file", desc="predict", disable=not progress, dynamic_ncols=True, file=sys.stderr)

    def flush() -> None:
        if not pending:
            return
        predictions = predictor.predict_images([p[2] for p in pending], [p[3] for p in pending], tasks)
        for (_, stem, _, rgb), prediction in zip(pending, predictions):
            report.written += write_files(out, encode_prediction(stem, prediction, rgb, predictor.meta, panel))
            report.images += 1
            bar.update(1)
        pending.clear()

    try:
        for path, stem in zip(paths, stems):
            if is_video(path):
                flush()
                try:
                    report.frames += _predict_video(predictor, path, out / f"{stem}_panel.mp4", tasks)
                except ImageReadError as e:
                    report.failures.append((str(path), str(e)))
                else:
                    report.written.append(out / f"{stem}_panel.mp4")
                    report.videos += 1
                bar.update(1)
                continue
            try:
                tensor, rgb = predictor.read(path)
            except ImageReadError as e:
                report.failures.append((str(path), str(e)))
                bar.update(1)
                continue
            pending.append((path, stem, tensor, rgb))
            if len(pending) == predictor.predictor.batch_size:
                flush()
        flush()
    finally:
        bar.close()
    if report.failures:
        raise PredictionFailed(report)
    return report
