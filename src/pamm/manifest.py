"""The ``dataset.yaml`` manifest: a dataset folder of your own, with any subset of the six tasks.

A *generic* dataset (``data.dataset: generic``) is a folder holding a ``dataset.yaml`` that says which tasks it
annotates, how each is encoded, its classes and its splits; the model's heads, the losses, the metrics and the
visualisation follow it. The format is documented in ``docs/dataset-format.md``; in short::

    version: 1                          # optional, the format version
    name: rooms                         # label-space name (default: the folder's name)
    images: {folder: images, suffix: .jpg}          # optional; default images/<id>.png
    splits: {train: splits/train.txt, val: splits/val.txt}   # list files, one image id per line
    tasks:
      semseg: {classes: [wall, floor, chair, table, other], ignore: 255, colors: distinct}
      depth: {encoding: png16, scale: 1000, max_depth: 80}  # or encoding: npy (float metres)
      normals: {}                       # RGB PNG, n = 2 v / 255 - 1; (0, 0, 0) = not annotated
      edge: {tolerance: 0.0075, pos_weight: 0.95, gt_boundary: thin}   # PNG 0 / 255
      sal: {}                           # PNG 0 / 255
      human_parts: {classes: [background, head, torso, ...], ignore: 255}

Task files live in ``<folder>/<id><suffix>`` (folder = the task's name unless given). :func:`read_manifest` checks the
whole manifest and reports every problem at once (:class:`ManifestError`, one line naming the file and each key);
it reads no other file. The loader (:class:`pamm.data.generic.GenericDataset`) and ``pamm data check`` check the
files themselves.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from .errors import InputError
from .tasks import EDGE_GT_CONVENTIONS, IGNORE_INDEX, TASKS, DatasetSpec

__all__ = [
    "MANIFEST_FILE", "FORMAT_VERSION", "DEPTH_ENCODINGS", "PALETTES", "DEFAULT_EDGE_TOLERANCE",
    "DEFAULT_EDGE_POS_WEIGHT", "ManifestError", "TaskStorage", "Manifest", "read_manifest", "parse_manifest",
    "manifest_yaml",
]  # fmt: skip

MANIFEST_FILE = "dataset.yaml"
"""Name of the manifest in a generic dataset folder."""

FORMAT_VERSION = 1
"""The manifest format this version of pamm reads and writes."""

DEPTH_ENCODINGS = ("png16", "npy")
"""``png16``: single-channel 16-bit PNG holding ``scale`` units per metre (default 1000: millimetres), 0 = no
measurement; ``npy``: float array (H, W) in metres, 0 = no measurement."""

PALETTES = ("distinct", "voc")
"""Named palettes of a classification task's ``colors`` (or give one RGB triple per class)."""

DEFAULT_EDGE_TOLERANCE = 0.0075
"""Default boundary matching distance, as a fraction of the image diagonal (BSDS's and PASCAL-Context's)."""

DEFAULT_EDGE_POS_WEIGHT = 0.95
"""Default weight of boundary pixels in the edge loss (PASCAL-Context's; NYUD-v2 uses 0.88)."""

MAX_CLASSES = IGNORE_INDEX
"""Classification tasks have at most 255 classes (ids 0..254; 255 is the ignore value inside pamm)."""

_CLASS_TASKS = ("semseg", "human_parts")
_FIXED_CLASSES = {"sal": ("background", "salient")}
_TASK_KEYS = {
    "semseg": ("folder", "classes", "ignore", "colors"),
    "human_parts": ("folder", "classes", "ignore", "colors"),
    "depth": ("folder", "encoding", "scale", "max_depth"),
    "normals": ("folder",),
    "edge": ("folder", "tolerance", "pos_weight", "gt_boundary"),
    "sal": ("folder",),
}
_TOP_KEYS = ("version", "name", "images", "splits", "tasks")


class ManifestError(InputError):
    """A ``dataset.yaml`` is missing or malformed. ``problems``: every ``"key: what is wrong"`` found; ``path``:
    the manifest. The message is one line naming the file and every problem."""

    def __init__(self, path: str | os.PathLike, problems: list[str]):
        self.path, self.problems = str(path), list(problems)
        shown = self.problems[0] if len(problems) == 1 else f"{len(problems)} problems: " + "; ".join(problems)
        super().__init__(f"{path}: {shown}")


@dataclass(frozen=True)
class TaskStorage:
    """Where and how one task's files are stored: ``<root>/<folder>/<id><suffix>``.

    Attributes:
        task: the task.
        folder: folder of its files, relative to the dataset root.
        suffix: file name ending (``.png`` or ``.npy``).
        encoding: ``labels`` (single-channel PNG of class ids), ``binary`` (single-channel PNG, 0 / 255),
            ``normals`` (RGB PNG), ``png16`` or ``npy`` (depth).
        ignore: the stored label value of pixels without annotation (``labels`` only; read as 255).
        scale: ``png16`` depth: stored units per metre.
    """

    task: str
    folder: str
    suffix: str
    encoding: str
    ignore: int | None = None
    scale: float = 1000.0


@dataclass(frozen=True)
class Manifest:
    """A parsed, validated ``dataset.yaml``.

    Attributes:
        root: the dataset folder.
        spec: the label space (tasks in the manifest's order, classes, edge and depth constants).
        images: folder and suffix of the input images.
        storage: task -> where and how its files are stored.
        splits: split name -> its list file, relative to ``root``.
    """

    root: Path
    spec: DatasetSpec
    images: TaskStorage
    storage: dict[str, TaskStorage]
    splits: dict[str, str]

    @property
    def path(self) -> Path:
        """The manifest file."""
        return self.root / MANIFEST_FILE

    def to_dict(self) -> dict:
        """The manifest as plain data with every default written out (:func:`parse_manifest` reads it back)."""
        spec = self.spec
        tasks: dict[str, dict] = {}
        for task in spec.tasks:
            store = self.storage[task]
            entry: dict[str, Any] = {"folder": store.folder}
            if task in _CLASS_TASKS:
                palette = spec.palettes.get(task, "voc")
                entry.update(
                    classes=list(spec.class_names[task]),
                    ignore=store.ignore,
                    colors=palette if isinstance(palette, str) else [list(c) for c in palette],
                )
            elif task == "depth":
                entry["encoding"] = store.encoding
                if store.encoding == "png16":
                    entry["scale"] = store.scale
                entry["max_depth"] = spec.max_depth
            elif task == "edge":
                entry.update(tolerance=spec.edge_max_dist, pos_weight=spec.edge_pos_weight, gt_boundary=spec.edge_gt)
            tasks[task] = entry
        return {
            "version": FORMAT_VERSION,
            "name": spec.name,
            "images": {"folder": self.images.folder, "suffix": self.images.suffix},
            "splits": dict(self.splits),
            "tasks": tasks,
        }


# ----------------------------------------------------------------------------------------------------------
# parsing


class _Problems:
    """Collects ``"key: what is wrong"`` lines while the manifest is read."""

    def __init__(self):
        self.lines: list[str] = []

    def add(self, key: str, message: str) -> None:
        self.lines.append(f"{key}: {message}")

    def mapping(self, value: Any, key: str, allowed: tuple[str, ...], *, null_is_empty: bool = False) -> dict:
        """``value`` as a mapping with only ``allowed`` keys (unknown keys are problems), or {} after a problem."""
        if value is None and null_is_empty:
            return {}
        if not isinstance(value, Mapping):
            self.add(key, f"expected a mapping with keys among {list(allowed)}, got {_show(value)}")
            return {}
        for k in value:
            if k not in allowed:
                self.add(f"{key}.{k}" if key else str(k), f"unknown key; allowed here: {', '.join(allowed)}")
        return {k: v for k, v in value.items() if k in allowed}

    def number(
        self, value: Any, key: str, low: float, high: float, *, low_open: bool = True, high_open: bool = True
    ) -> float | None:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if ok:
            ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
        if not ok:
            interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            self.add(key, f"expected a number in {interval}, got {_show(value)}")
            return None
        return float(value)

    def relative_path(self, value: Any, key: str) -> str | None:
        """A path inside the dataset folder, written with ``/`` (no absolute path, no ``..``)."""
        if not isinstance(value, str) or not value.strip():
            self.add(key, f"expected a path relative to the dataset folder, got {_show(value)}")
            return None
        path = PurePosixPath(value.replace("\\", "/"))
        if path.is_absolute() or ".." in path.parts or Path(value).is_absolute():
            self.add(key, f"{value!r} leaves the dataset folder; expected a path relative to it, without '..'")
            return None
        return path.as_posix()


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _classes(p: _Problems, value: Any, key: str) -> tuple[str, ...] | None:
    if value is None:
        p.add(key, "missing; expected the list of class names, one per label value 0, 1, 2, ...")
        return None
    if not isinstance(value, list) or not all(isinstance(n, str) and n.strip() for n in value):
        p.add(key, f"expected a list of class names (non-empty strings), got {_show(value)}")
        return None
    if not 2 <= len(value) <= MAX_CLASSES:
        p.add(key, f"expected 2 to {MAX_CLASSES} class names, got {len(value)}")
        return None
    duplicates = sorted({n for n in value if value.count(n) > 1})
    if duplicates:
        p.add(key, f"duplicate class name(s) {duplicates}; every label value needs its own name")
        return None
    return tuple(value)


def _is_rgb(colour: Any) -> bool:
    return isinstance(colour, list) and len(colour) == 3 and all(type(v) is int and 0 <= v <= 255 for v in colour)


def _colors(p: _Problems, value: Any, key: str, classes: int | None, default: str):
    if value is None:
        return default
    if isinstance(value, str):
        if value not in PALETTES:
            p.add(key, f"expected one of {list(PALETTES)} or a list of [r, g, b] (one per class), got {value!r}")
            return default
        return value
    if not isinstance(value, list) or not all(_is_rgb(c) for c in value):
        p.add(key, f"expected one of {list(PALETTES)} or a list of [r, g, b] triples of 0..255, got {_show(value)}")
        return default
    if classes is not None and len(value) != classes:
        p.add(key, f"{len(value)} colours for {classes} classes; expected one [r, g, b] per class")
        return default
    return tuple(tuple(c) for c in value)


def _ignore(p: _Problems, value: Any, key: str, classes: int | None) -> int:
    if value is None:
        value = IGNORE_INDEX
    elif isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        p.add(key, f"expected the label value of unannotated pixels, an integer in 0..65535, got {_show(value)}")
        return IGNORE_INDEX
    if classes is not None and value < classes:
        p.add(key, f"{value} is the id of class {value}; expected a value outside 0..{classes - 1} (default 255)")
    return value


def parse_manifest(data: Any, root: str | os.PathLike, source: str | os.PathLike | None = None) -> Manifest:
    """Validate manifest ``data`` (the parsed YAML) of the dataset folder ``root``; every problem found is reported
    in one :class:`ManifestError` (``source`` names the file in it; default ``root/dataset.yaml``)."""
    root = Path(root)
    source = source if source is not None else root / MANIFEST_FILE
    if not isinstance(data, Mapping):
        raise ManifestError(source, [f"expected a mapping with keys among {', '.join(_TOP_KEYS)}, got {_show(data)}"])
    p = _Problems()
    top = p.mapping(data, "", _TOP_KEYS)

    version = top.get("version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        p.add("version", f"this pamm reads format version {FORMAT_VERSION}, got {_show(version)}")
    name = top.get("name", root.resolve().name or "dataset")
    if not isinstance(name, str) or not name.strip():
        p.add("name", f"expected a non-empty string, got {_show(name)}")
        name = "dataset"

    images_entry = p.mapping(top.get("images"), "images", ("folder", "suffix"), null_is_empty=True)
    image_folder = p.relative_path(images_entry.get("folder", "images"), "images.folder") or "images"
    suffix = images_entry.get("suffix", ".png")
    if not isinstance(suffix, str) or not suffix.startswith(".") or "/" in suffix or len(suffix) < 2:
        p.add("images.suffix", f"expected a file name ending such as '.jpg' or '.png', got {_show(suffix)}")
        suffix = ".png"
    images = TaskStorage("image", image_folder, suffix, "image")

    splits: dict[str, str] = {}
    if "splits" not in top:
        p.add(
            "splits",
            "missing; expected a mapping of split name -> list file, e.g. {train: splits/train.txt, "
            "val: splits/val.txt}",
        )
    elif not isinstance(top["splits"], Mapping) or not top["splits"]:
        p.add("splits", f"expected a mapping of split name -> list file, got {_show(top['splits'])}")
    else:
        for split, path in top["splits"].items():
            if not isinstance(split, str) or not split or "/" in split:
                p.add(f"splits.{split}", "expected a split name (a word such as train, val, test)")
                continue
            relative = p.relative_path(path, f"splits.{split}")
            if relative is not None:
                splits[split] = relative

    tasks_entry = top.get("tasks")
    storage: dict[str, TaskStorage] = {}
    num_outputs: dict[str, int] = {}
    class_names: dict[str, tuple[str, ...]] = {}
    palettes: dict[str, Any] = {}
    edge: dict[str, Any] = {
        "edge_max_dist": DEFAULT_EDGE_TOLERANCE,
        "edge_pos_weight": DEFAULT_EDGE_POS_WEIGHT,
        "edge_gt": "thin",
    }
    max_depth = 80.0
    if tasks_entry is None:
        p.add("tasks", f"missing; expected a mapping of task -> its encoding, tasks among {', '.join(TASKS)}")
    elif not isinstance(tasks_entry, Mapping) or not tasks_entry:
        p.add(
            "tasks",
            f"expected a non-empty mapping of task -> its encoding (tasks among {', '.join(TASKS)}), "
            f"got {_show(tasks_entry)}",
        )
    else:
        for task, options in tasks_entry.items():
            key = f"tasks.{task}"
            if task not in TASKS:
                p.add(key, f"unknown task; expected tasks among {', '.join(TASKS)}")
                continue
            o = p.mapping(options, key, _TASK_KEYS[task], null_is_empty=True)
            folder = p.relative_path(o.get("folder", task), f"{key}.folder") or task
            if task in _CLASS_TASKS:
                names = _classes(p, o.get("classes"), f"{key}.classes")
                count = None if names is None else len(names)
                ignore = _ignore(p, o.get("ignore"), f"{key}.ignore", count)
                default_palette = "distinct" if task == "semseg" else "voc"
                palettes[task] = _colors(p, o.get("colors"), f"{key}.colors", count, default_palette)
                storage[task] = TaskStorage(task, folder, ".png", "labels", ignore=ignore)
                if names is not None:
                    class_names[task], num_outputs[task] = names, len(names)
            elif task == "depth":
                encoding = o.get("encoding")
                if encoding not in DEPTH_ENCODINGS:
                    what = "missing" if encoding is None else f"got {_show(encoding)}"
                    p.add(
                        f"{key}.encoding",
                        f"{what}; expected png16 (16-bit PNG, `scale` units per metre, "
                        "default 1000 = millimetres) or npy (float metres)",
                    )
                    encoding = "png16"
                scale = 1000.0
                if "scale" in o:
                    if encoding != "png16":
                        p.add(f"{key}.scale", "only a png16 depth encoding has a scale (npy holds metres)")
                    else:
                        scale = p.number(o["scale"], f"{key}.scale", 0, math.inf) or scale
                if "max_depth" in o:
                    max_depth = p.number(o["max_depth"], f"{key}.max_depth", 0, math.inf) or max_depth
                storage[task] = TaskStorage(
                    task, folder, f".{encoding}" if encoding == "npy" else ".png", encoding, scale=scale
                )
                num_outputs[task] = 1
            elif task == "normals":
                storage[task] = TaskStorage(task, folder, ".png", "normals")
                num_outputs[task] = 3
            elif task == "edge":
                if "tolerance" in o:
                    edge["edge_max_dist"] = p.number(o["tolerance"], f"{key}.tolerance", 0, 1) or edge["edge_max_dist"]
                if "pos_weight" in o:
                    edge["edge_pos_weight"] = (
                        p.number(o["pos_weight"], f"{key}.pos_weight", 0, 1) or edge["edge_pos_weight"]
                    )
                gt = o.get("gt_boundary", "thin")
                if gt not in EDGE_GT_CONVENTIONS:
                    p.add(f"{key}.gt_boundary", f"expected one of {list(EDGE_GT_CONVENTIONS)}, got {_show(gt)}")
                else:
                    edge["edge_gt"] = gt
                storage[task] = TaskStorage(task, folder, ".png", "binary")
                num_outputs[task] = 1
            else:  # sal
                storage[task] = TaskStorage(task, folder, ".png", "binary")
                class_names[task], num_outputs[task] = _FIXED_CLASSES[task], 2
        folders: dict[str, str] = {images.folder: "images"}
        for task, store in storage.items():
            if store.folder in folders:
                p.add(
                    f"tasks.{task}.folder",
                    f"{store.folder!r} is also the folder of {folders[store.folder]}; expected a folder of its own",
                )
            folders.setdefault(store.folder, task)

    if p.lines:
        raise ManifestError(source, p.lines)
    spec = DatasetSpec(
        name=name,
        tasks=tuple(storage),
        num_outputs=num_outputs,
        class_names=class_names,
        palettes={t: v for t, v in palettes.items() if v != "voc"},
        max_depth=max_depth,
        **edge,
    )
    return Manifest(root=root, spec=spec, images=images, storage=storage, splits=splits)


_CACHE: dict[tuple[str, int, int], Manifest] = {}


def read_manifest(root: str | os.PathLike) -> Manifest:
    """Read and validate ``root/dataset.yaml`` (cached while the file is unchanged). Raises :class:`ManifestError`
    (an :class:`~pamm.errors.InputError`) naming the file and every problem: a missing folder or manifest, invalid
    YAML, an unknown key or task, missing class names, a wrong encoding or value."""
    root = Path(root)
    path = root / MANIFEST_FILE
    if not root.is_dir():
        raise ManifestError(root, ["not a folder; expected a dataset folder holding a dataset.yaml"])
    try:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
        if key in _CACHE:
            return _CACHE[key]
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(
            path, ["missing; a generic dataset folder is described by its dataset.yaml (see docs/dataset-format.md)"]
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(path, [f"cannot be read ({e})"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ManifestError(path, [f"not valid YAML ({' '.join(str(e).split())})"]) from None
    manifest = parse_manifest(data, root, path)
    _CACHE[key] = manifest
    return manifest


def _scalar(value: Any) -> str:
    """One YAML scalar or flow list, as ``yaml.safe_dump`` writes it (quoted where needed)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, allow_unicode=True)
    return text.removesuffix("\n...\n").strip()


def manifest_yaml(manifest: Manifest) -> str:
    """The text of a ``dataset.yaml`` for ``manifest``: every default written out, one class per line with its
    label value in a comment (:func:`read_manifest` reads it back to an equal manifest)."""
    data = manifest.to_dict()
    lines = [
        "# pamm dataset manifest; the format: docs/dataset-format.md",
        f"version: {data['version']}",
        f"name: {_scalar(data['name'])}",
        f"images: {_scalar(data['images'])}",
        "splits:",
    ]
    lines += [f"  {_scalar(split)}: {_scalar(path)}" for split, path in data["splits"].items()]
    lines.append("tasks:")
    for task, entry in data["tasks"].items():
        lines.append(f"  {task}:")
        for key, value in entry.items():
            if key == "classes":
                width = max(len(_scalar(name)) for name in value)
                lines.append("    classes:")
                lines += [f"      - {_scalar(name):<{width}}  # {i}" for i, name in enumerate(value)]
            elif key == "colors" and not isinstance(value, str):
                lines.append("    colors:")
                lines += [f"      - {_scalar(rgb)}  # {i}" for i, rgb in enumerate(value)]
            else:
                lines.append(f"    {key}: {_scalar(value)}")
    return "\n".join(lines) + "\n"
