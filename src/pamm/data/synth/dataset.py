"""Write a whole synthetic dataset: :func:`synthesize`, safe against interruption, a full disk and lost data.

The dataset is rendered into a hidden folder beside its destination and moved into place only when every file is
written (:class:`pamm.fs.StagedFolder`), so an interrupted or failed run never leaves a half-written dataset nor a
half-deleted old one. A dataset folder is only ever replaced when asked (``overwrite=True``) and when it holds
nothing but what an earlier :func:`synthesize` wrote: its marker file (:data:`MARKER_FILE`) names the files.
"""

from __future__ import annotations

import io
import json
import os
import signal
import time
from collections.abc import Generator, Sequence
from contextlib import closing
from pathlib import Path

import numpy as np

from pamm.errors import InputError, ResourceError
from pamm.fs import StagedFolder, atomic_write_bytes, folder_has_contents, unexpected_files

from .layouts import SPLITS, WRITERS, DatasetLayout, GenericLayout, get_layout
from .render import check_size, render_scene
from .scene import STYLES

__all__ = ["MARKER_FILE", "SynthOutputExistsError", "scene_rng", "synthesize", "read_marker"]

MARKER_FILE = "pamm_synth.json"
"""File in the dataset folder that marks it as written by :func:`synthesize` (its arguments: layout, counts, size,
seed), and so names every file of the folder that may be replaced."""

_GENERATOR = "pamm.data.synth"
_FORMAT_VERSION = 1
_MAX_IMAGES = 10**7  # per split; a marker claiming more is not one of ours


class SynthOutputExistsError(InputError, FileExistsError):
    """The destination already holds a dataset or files: refused without ``overwrite=True``, or refused because
    replacing it would delete files :func:`synthesize` did not write."""


def scene_rng(seed: int, layout: str, split: str, index: int) -> np.random.Generator:
    """The generator :func:`synthesize` renders image ``index`` of ``split`` with (independent of the counts).

    ``layout``: the scene style, ``"nyud"`` or ``"pascal"`` (the layouts of the same names render these).
    """
    return np.random.default_rng(np.random.SeedSequence([seed, STYLES.index(layout), SPLITS.index(split), index]))


def read_marker(folder: Path) -> dict | None:
    """The contents of ``folder``'s marker if it is a dataset folder written by :func:`synthesize` (possibly by an
    interrupted run of an older version) and the marker names its layout and counts, else None."""
    try:
        info = json.loads((Path(folder) / MARKER_FILE).read_text())
        counts = [info["counts"][split] for split in SPLITS]
        valid = (info["generator"] == _GENERATOR and info["layout"] in WRITERS
                 and all(type(count) is int and 0 <= count <= _MAX_IMAGES for count in counts)
                 and info.get("owns_folder", False) is True)  # fmt: skip
        get_layout(info["layout"], info.get("tasks"))  # a generic marker names valid tasks
        # (owns_folder false: an older version wrote into a folder it had not created, with overwrite=True)
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    return info if valid else None


def _expected_files(info: dict) -> set[str]:
    """Relative paths of every file the run described by marker ``info`` (from :func:`read_marker`) writes."""
    writer = get_layout(info["layout"], info.get("tasks"))
    files = {MARKER_FILE, *writer.list_paths()}
    for split in SPLITS:
        for index in range(info["counts"][split]):
            files.update(writer.example_paths(writer.image_id(split, index)))
    return files


def _describe(info: dict) -> str:
    """``"a synthetic nyud dataset (12 train + 5 val images, 96x128, seed 0)"`` from a marker."""
    what = f"synthetic {info.get('layout')} dataset"
    what = what if info.get("complete") else f"incomplete {what} (an interrupted run)"
    try:
        counts, size = info["counts"], info["size"]
        details = f" ({counts['train']} train + {counts['val']} val images, {size[0]}x{size[1]}, seed {info['seed']})"
    except (KeyError, TypeError, IndexError):
        details = ""
    return f"{'a' if info.get('complete') else 'an'} {what}{details}"


def _may_replace(root: Path, overwrite: bool) -> bool:
    """Whether ``root`` holds a dataset to replace (False: nothing there yet); raises when it may not be touched."""
    if not folder_has_contents(root):
        return False
    info = read_marker(root)
    if info is None:
        raise SynthOutputExistsError(
            f"out: {str(root)!r} is not empty and was not written by pamm data synth (no valid {MARKER_FILE}); it is "
            "never overwritten. Choose another --out, or move that folder away first"
        )
    foreign = unexpected_files(root, _expected_files(info))
    if foreign:
        raise SynthOutputExistsError(
            f"out: {str(root)!r} holds {_describe(info)} but also {len(foreign)} file(s) it did not write (e.g. "
            f"{foreign[0]!r}); it is not replaced so that they are not lost. Move them out, or choose another --out"
        )
    if not overwrite:
        raise SynthOutputExistsError(
            f"out: {str(root)!r} already holds {_describe(info)}; pass overwrite=True (--overwrite) to replace it, "
            "or choose another --out"
        )
    return True


def _check_preview(preview: Path, root: Path, overwrite: bool) -> None:
    if preview.suffix.lower() != ".png":
        raise InputError(f"preview must be a .png file path, got {str(preview)!r}")
    resolved_root = Path(os.path.abspath(root))
    if resolved_root in Path(os.path.abspath(preview)).parents:
        raise InputError(f"preview: {str(preview)!r} is inside the dataset folder {str(root)!r}, which is written "
                         "as a whole; put the preview elsewhere")  # fmt: skip
    if preview.is_dir():
        raise InputError(f"preview: {str(preview)!r} is a folder; expected a .png file path")
    if preview.exists() and not overwrite:
        raise SynthOutputExistsError(f"preview: {str(preview)!r} already exists; pass overwrite=True (--overwrite) "
                                     "to replace it, or choose another path")  # fmt: skip


def _check_count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise InputError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _render_example(job: tuple) -> tuple[str, dict[str, bytes], dict]:
    """Render and encode one example: (image id, relative path -> file bytes, record for the split lists)."""
    layout, seed, split, index, size, tasks = job
    writer = get_layout(layout, tasks)
    scene = render_scene(scene_rng(seed, writer.style, split, index), size, writer.style)
    iid = writer.image_id(split, index)
    files, record = writer.encode(iid, scene)
    return iid, files, record


def _ignore_sigint() -> None:
    """Worker processes leave Ctrl-C to the main process, which stops them and cleans up."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _rendered(jobs: Sequence[tuple], workers: int) -> Generator[tuple[str, dict[str, bytes], dict], None, None]:
    """:func:`_render_example` of every job, in order, in ``workers`` processes (1: this one)."""
    if workers == 1:
        for job in jobs:
            yield _render_example(job)
        return
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(max_workers=workers, initializer=_ignore_sigint)
    try:
        yield from pool.map(_render_example, jobs, chunksize=4)
    finally:  # on an error or Ctrl-C: drop the queued images instead of rendering them all first
        pool.shutdown(wait=True, cancel_futures=True)


def _missing_ancestors(folder: Path) -> list[Path]:
    """``folder`` and its parents that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def synthesize(out: Path, layout: str, n_train: int, n_val: int, size: tuple[int, int], seed: int,
               preview: Path | None = None, progress: bool = True, *, overwrite: bool = False,
               workers: int = 1, tasks: Sequence[str] | None = None) -> dict:  # fmt: skip
    """Write a synthetic dataset in the real NYUDv2 or PASCAL-Context layout, or the generic manifest format
    (``docs/dataset-format.md``), under ``out``.

    Files: see :mod:`pamm.data.synth.layouts` (ids from :func:`~pamm.data.synth.image_id`). Image ``index`` of a
    split is rendered from :func:`scene_rng`, so the same seed gives byte-identical files and more images never
    change the earlier ones. The dataset folder also gets :data:`MARKER_FILE` (the generation arguments).

    Safety: the dataset is rendered into a hidden folder beside ``out / DATASET_FOLDERS[layout]`` and moved into
    place at the end; if the run fails or is interrupted (Ctrl-C, disk full) that folder is deleted and nothing else
    has changed. An existing dataset folder is refused unless ``overwrite=True``, and even then it is only replaced
    when it holds exactly the files of an earlier ``synthesize`` (its marker file says which); a folder with any
    other file is never touched. The old dataset is deleted only once the new one is in place.

    Args:
        out: data root; the dataset goes to ``out / DATASET_FOLDERS[layout]``.
        layout: ``"nyud"``, ``"pascal"`` or ``"generic"``.
        n_train, n_val: number of images per split (>= 0, at least one in total).
        size: (height, width) pixels, each in [32, 4096].
        seed: non-negative integer.
        preview: optional ``.png`` path (outside the dataset folder) for a contact sheet of the first few images
            and their ground truth; an existing file is replaced only with ``overwrite=True``.
        progress: show a tqdm progress bar.
        overwrite: replace an existing synthetic dataset (and preview file) as described above.
        workers: processes used to render (1 = in this process).
        tasks: ``generic`` only: the tasks to write (default: all six, see
            :class:`~pamm.data.synth.layouts.GenericLayout`).

    Returns a summary dict: ``layout``, ``root`` (dataset folder), ``counts`` ({split: n}), ``images``, ``files``,
    ``size``, ``seed``, ``seconds``, ``images_per_second``, ``preview`` (path or None), ``replaced`` (whether an
    earlier dataset was replaced), for PASCAL ``with_people`` (images whose part annotation has a person) and for
    generic ``tasks``.

    Raises:
        InputError (a ValueError): a bad argument; :class:`SynthOutputExistsError` when the destination may not be
        written. ResourceError (an OSError): the disk filled up or a folder is not writable (names the file).
    """
    writer: DatasetLayout = get_layout(layout, tasks)
    n_train, n_val = _check_count("n_train", n_train), _check_count("n_val", n_val)
    if n_train + n_val == 0:
        raise InputError("n_train + n_val must be at least 1, got 0 images in total")
    size = check_size(size)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
        raise InputError(f"seed must be an integer in [0, 2**63), got {seed!r}")
    seed = int(seed)
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise InputError(f"workers must be a positive integer, got {workers!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"out must be a folder, but {str(out)!r} is a file")
    if read_marker(out) is not None:
        raise InputError(f"out must be the data root that holds {writer.folder}/, but {str(out)!r} is itself a "
                         "synthetic dataset folder; pass its parent")  # fmt: skip
    root = out / writer.folder
    if preview is not None:
        preview = Path(preview)
        _check_preview(preview, root, overwrite)
    replacing = _may_replace(root, overwrite)

    counts = {"train": n_train, "val": n_val}
    tasks = list(writer.tasks) if isinstance(writer, GenericLayout) else None
    jobs = [(writer.name, seed, split, i, size, tasks and tuple(tasks)) for split in SPLITS
            for i in range(counts[split])]  # fmt: skip
    marker = {"generator": _GENERATOR, "format_version": _FORMAT_VERSION, "layout": writer.name, "counts": counts,
              "size": list(size), "seed": seed, "owns_folder": True, "complete": True}  # fmt: skip
    if tasks is not None:
        marker["tasks"] = tasks
    from tqdm import tqdm

    created = _missing_ancestors(out)
    start = time.perf_counter()
    files = 0
    try:
        with StagedFolder(root, replace=replacing) as stage:
            records: dict[str, dict] = {}
            with (
                tqdm(total=len(jobs), desc=f"synth {writer.name}", unit="img", disable=not progress) as bar,
                closing(_rendered(jobs, workers)) as rendered,
            ):
                for iid, example, record in rendered:
                    for relative, data in example.items():
                        stage.write_bytes(relative, data)
                    files += len(example)
                    records[iid] = record
                    bar.update()
            ids = {split: [writer.image_id(split, i) for i in range(counts[split])] for split in SPLITS}
            for relative, data in writer.lists(ids, records).items():
                stage.write_bytes(relative, data)
                files += 1
            stage.write_bytes(MARKER_FILE, (json.dumps(marker, indent=1) + "\n").encode())
            files += 1
            seconds = time.perf_counter() - start
            if preview is not None:
                from .preview import contact_sheet

                picks = [("train", i) for i in range(min(n_train, 4))]
                picks += [("val", i) for i in range(min(n_val, 4 - len(picks)))]
                scenes = [writer.preview_scene(render_scene(scene_rng(seed, writer.style, s, i), size, writer.style))
                          for s, i in picks]  # fmt: skip
                buffer = io.BytesIO()
                contact_sheet(scenes, writer.labels).save(buffer, format="PNG", optimize=True)
                atomic_write_bytes(preview, buffer.getvalue())
    except BaseException as e:
        for folder in created:  # folders this run created for ``out``, if still empty
            try:
                folder.rmdir()
            except OSError:
                break
        if isinstance(e, ResourceError):
            kept = f", and the dataset already in {str(root)!r} is unchanged" if replacing else ""
            raise ResourceError(f"{e}; the partial dataset was removed{kept}", e.errno) from e
        raise

    summary = {
        "layout": writer.name,
        "root": str(root),
        "counts": counts,
        "images": len(jobs),
        "files": files,
        "size": size,
        "seed": seed,
        "seconds": round(seconds, 3),
        "images_per_second": round(len(jobs) / max(seconds, 1e-9), 2),
        "preview": str(preview) if preview is not None else None,
        "replaced": replacing,
    }
    if tasks is not None:
        summary["tasks"] = tasks
    summary.update(writer.summary(records))
    return summary
