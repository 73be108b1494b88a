"""Dataset layouts: which files a rendered scene becomes, under which names, and the split lists.

A layout is a :class:`DatasetLayout`: its dataset folder name, the scene style it renders, the path templates of
one example's files (``"images/{id}.png"``), how an example is encoded into those files and which split lists it
writes. :func:`~pamm.data.synth.synthesize` drives any of them the same way, so another layout is one more subclass
registered in :data:`WRITERS`.

``nyud`` (``NYUDv2/``): ``gt_sets/{train,val}.txt`` (ids, one per line); ``images/<id>.png`` (RGB uint8);
``depth/<id>.npy`` (float32 (H, W), metres); ``segmentation/<id>.png`` (L uint8, 0 void, 1..40 = NYUD-40 class + 1);
``normals/<id>.png`` (RGB uint8, normal = 2 v / 255 - 1); ``edge/<id>.png`` (L uint8, 0 / 255).

``generic`` (``generic/``): a dataset of the manifest format (:mod:`pamm.manifest`, ``docs/dataset-format.md``)
with any subset of the six tasks (:class:`GenericLayout`): ``dataset.yaml``; ``splits/{train,val}.txt``;
``images/<id>.png``; ``semseg/<id>.png`` (5 classes of its own, :data:`GENERIC_CLASSES`); ``depth/<id>.png``
(16-bit, millimetres); ``normals/<id>.png``; ``edge/<id>.png`` and ``sal/<id>.png`` (0 / 255);
``human_parts/<id>.png`` (0 background, 1..6 the six parts). Its scenes are the PASCAL style's (people included).

``pascal`` (``PASCALContext/``): ``ImageSets/Context/{train,val}.txt`` (ids); ``JPEGImages/<id>.jpg`` (RGB);
``semseg/pascal-context/<id>.png`` (L uint8, VOC 0..20); ``pascal-context/trainval/<id>.mat`` (``LabelMap`` uint16
(H, W), PASCAL-Context labels); ``human_parts/<id>.mat`` (``anno`` struct, see :func:`parts_annotation`);
``ImageSets/Parts/{train,val,trainval}.txt`` (JSON: id -> list of object VOC classes; images without people have
no 15); ``normals_distill/<id>.png`` (RGB uint8, as NYUD normals); ``sal_distill/<id>.png`` (L uint8, 0 / 255).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from pamm.data.formats import encode_normals, jpeg_bytes, mat_bytes, npy_bytes, png_bytes
from pamm.errors import InputError
from pamm.manifest import MANIFEST_FILE, Manifest, manifest_yaml, parse_manifest
from pamm.tasks import HUMAN_PARTS, PASCAL_CLASSES, TASKS

from .vocabulary import FINE_PART_NAMES, KINDS

__all__ = ["SPLITS", "DatasetLayout", "NYUDLayout", "PascalLayout", "GenericLayout", "WRITERS", "LAYOUTS",
           "DATASET_FOLDERS", "GENERIC_CLASSES", "get_layout", "image_id", "parts_annotation"]  # fmt: skip

SPLITS = ("train", "val")
"""The splits every layout writes (each may hold no image)."""

_PERSON = PASCAL_CLASSES.index("person")


class DatasetLayout:
    """How one dataset layout names, encodes and lists its files (subclasses fill in the class attributes).

    Attributes:
        name: the layout's name (``--layout``).
        folder: the dataset folder created under the data root.
        style: the scene style rendered for it (:data:`~pamm.data.synth.scene.STYLES`).
        example_files: path templates (``{id}`` = image id) of one example's files, relative to the dataset
            folder, in the order :meth:`_contents` returns their bytes.
    """

    name: ClassVar[str]
    folder: ClassVar[str]
    style: ClassVar[str]
    example_files: tuple[str, ...]  # a class attribute, or set per instance (the generic layout's tasks)

    def image_id(self, split: str, index: int) -> str:
        """File id of image ``index`` of ``split``; never depends on how many images are generated."""
        raise NotImplementedError

    def _contents(self, iid: str, scene: Mapping[str, Any]) -> tuple[Sequence[bytes], dict]:
        """The bytes of each of :attr:`example_files` for a scene of :func:`~pamm.data.synth.render_scene`, and a
        small JSON-able record the split lists and the summary may use."""
        raise NotImplementedError

    def encode(self, iid: str, scene: Mapping[str, Any]) -> tuple[dict[str, bytes], dict]:
        """(relative path -> bytes of every file of example ``iid``, its record for :meth:`lists`)."""
        contents, record = self._contents(iid, scene)
        return dict(zip(self.example_paths(iid), contents, strict=True)), record

    def example_paths(self, iid: str) -> list[str]:
        """Relative paths of example ``iid``'s files."""
        return [template.format(id=iid) for template in self.example_files]

    def list_paths(self) -> list[str]:
        """Relative paths of the split lists :meth:`lists` writes."""
        raise NotImplementedError

    def lists(self, ids: Mapping[str, Sequence[str]], records: Mapping[str, dict]) -> dict[str, bytes]:
        """The split lists (relative path -> bytes) for ``ids`` ({split: ids in order}) and the examples'
        ``records`` (id -> record from :meth:`encode`)."""
        raise NotImplementedError

    def summary(self, records: Mapping[str, dict]) -> dict:
        """Extra entries of :func:`~pamm.data.synth.synthesize`'s summary."""
        return {}

    def preview_scene(self, scene: Mapping[str, Any]) -> dict:
        """The maps of a rendered scene that the preview sheet shows, as this layout labels them."""
        return dict(scene)

    @property
    def labels(self) -> Any:
        """The label space the preview colours classes with (a dataset name or spec)."""
        return self.style


def _id_list(ids: Sequence[str]) -> bytes:
    return "".join(f"{i}\n" for i in ids).encode()


class NYUDLayout(DatasetLayout):
    """NYUD-v2 as the multi-task codebases (ATRC / MTI-Net) ship it; see the module docstring."""

    name = "nyud"
    folder = "NYUDv2"
    style = "nyud"
    example_files = ("images/{id}.png", "depth/{id}.npy", "segmentation/{id}.png", "normals/{id}.png",
                     "edge/{id}.png")  # fmt: skip

    def image_id(self, split: str, index: int) -> str:
        """``"0001"``-style: train odd, val even numbers."""
        return f"{2 * index + (1 if split == 'train' else 2):04d}"

    def _contents(self, iid, scene):
        return (
            png_bytes(scene["image"]),
            npy_bytes(scene["depth"].astype(np.float32)),
            png_bytes((scene["semseg"] + 1).astype(np.uint8)),
            png_bytes(encode_normals(scene["normals"])),
            png_bytes((scene["boundaries"] * 255).astype(np.uint8)),
        ), {}

    def list_paths(self):
        return [f"gt_sets/{split}.txt" for split in SPLITS]

    def lists(self, ids, records):
        return {f"gt_sets/{split}.txt": _id_list(ids[split]) for split in SPLITS}


_OBJECT_DTYPE = [("class", "O"), ("class_ind", "O"), ("mask", "O"), ("parts", "O")]
_PART_DTYPE = [("part_name", "O"), ("mask", "O")]


def parts_annotation(scene: Mapping[str, Any], image_name: str) -> tuple[np.ndarray, list[int]]:
    """PASCAL-Part style ``anno`` struct (1x1) for ``human_parts/<id>.mat`` and the class of each object.

    ``anno.imname`` = file name; ``anno.objects`` = 1xN struct (class name, class_ind 1x1 double, mask uint8 HxW,
    parts = 1xP struct of (part_name, mask uint8 HxW), or a 0x0 array when the object has no parts). Objects are
    the visible VOC-class instances (people, chairs, tables, sofas, TV monitors, plants, bottles).
    """
    instances, fine = scene["instances"], scene["fine_parts"]
    voc = scene["meta"]["voc"]
    records, classes = [], []
    for inst in np.flatnonzero(np.bincount(instances.reshape(-1))):
        cls = int(voc[inst])
        if cls == 0:
            continue
        mask = instances == inst
        codes = (np.flatnonzero(np.bincount(fine[mask], minlength=len(FINE_PART_NAMES))[1:]) + 1).tolist()
        if codes:
            parts = np.empty((1, len(codes)), dtype=_PART_DTYPE)
            for k, code in enumerate(codes):
                parts[0, k] = (FINE_PART_NAMES[code], (mask & (fine == code)).astype(np.uint8))
        else:
            parts = np.zeros((0, 0))
        records.append((PASCAL_CLASSES[cls], np.array([[float(cls)]]), mask.astype(np.uint8), parts))
        classes.append(cls)
    objects = np.empty((1, len(records)), dtype=_OBJECT_DTYPE)
    for k, rec in enumerate(records):
        objects[0, k] = rec
    anno = np.empty((1, 1), dtype=[("imname", "O"), ("objects", "O")])
    anno[0, 0] = (image_name, objects)
    return anno, classes


def _parts_list(ids: Sequence[str], records: Mapping[str, dict]) -> bytes:
    """``ImageSets/Parts/<split>.txt``: a JSON object id -> VOC classes of the objects in ``human_parts/<id>.mat``,
    one id per line, as the PASCAL multi-task loaders cache it."""
    if not ids:
        return b"{}\n"
    lines = [f'\t"{i}": {json.dumps(records[i]["classes"])}' for i in ids]
    return ("{\n" + ",\n".join(lines) + "\n}\n").encode()


class PascalLayout(DatasetLayout):
    """PASCAL-Context with the multi-task annotations (ATRC / MTI-Net layout); see the module docstring."""

    name = "pascal"
    folder = "PASCALContext"
    style = "pascal"
    example_files = ("JPEGImages/{id}.jpg", "semseg/pascal-context/{id}.png", "pascal-context/trainval/{id}.mat",
                     "human_parts/{id}.mat", "normals_distill/{id}.png", "sal_distill/{id}.png")  # fmt: skip
    _PART_LISTS = (*SPLITS, "trainval")

    def image_id(self, split: str, index: int) -> str:
        """``"2008_000001"``-style: train 2008, val 2009."""
        return f"{2008 if split == 'train' else 2009}_{index + 1:06d}"

    def _contents(self, iid, scene):
        anno, classes = parts_annotation(scene, f"{iid}.jpg")
        return (
            jpeg_bytes(scene["image"]),
            png_bytes(scene["semseg"]),
            mat_bytes("LabelMap", scene["label_map"]),
            mat_bytes("anno", anno),
            png_bytes(encode_normals(scene["normals"])),
            png_bytes((scene["saliency"] * 255).astype(np.uint8)),
        ), {"classes": classes}

    def list_paths(self):
        return [f"ImageSets/Context/{s}.txt" for s in SPLITS] + [f"ImageSets/Parts/{s}.txt" for s in self._PART_LISTS]

    def lists(self, ids, records):
        out = {f"ImageSets/Context/{split}.txt": _id_list(ids[split]) for split in SPLITS}
        part_ids = {"train": ids["train"], "val": ids["val"], "trainval": [*ids["train"], *ids["val"]]}
        out.update({f"ImageSets/Parts/{name}.txt": _parts_list(part_ids[name], records) for name in self._PART_LISTS})
        return out

    def summary(self, records):
        """``with_people``: images whose part annotation holds a person."""
        return {"with_people": sum(1 for record in records.values() if _PERSON in record["classes"])}


GENERIC_CLASSES = ("structure", "floor", "furniture", "object", "person")
"""The semseg classes of the generic layout: a label space of its own (neither NYUD-40 nor VOC)."""

_GENERIC_CLASS_OF_KIND = {
    "wall": 0, "ceiling": 0, "door": 0, "window": 0, "picture": 0, "floor": 1, "cabinet": 2, "bed": 2, "chair": 2,
    "sofa": 2, "table": 2, "lamp": 3, "tvmonitor": 3, "pottedplant": 3, "bottle": 3, "person": 4,
}  # fmt: skip
assert set(_GENERIC_CLASS_OF_KIND) == set(KINDS)

GENERIC_TASKS = tuple(TASKS)
"""Tasks the generic layout can write, in the order its manifest lists them."""


@cache
def _generic_manifest(tasks: tuple[str, ...]) -> Manifest:
    entries = {"semseg": {"classes": list(GENERIC_CLASSES)}, "depth": {"encoding": "png16"}, "normals": {},
               "edge": {}, "sal": {}, "human_parts": {"classes": list(HUMAN_PARTS)}}  # fmt: skip
    data = {"version": 1, "name": "synth-rooms", "images": {"folder": "images", "suffix": ".png"},
            "splits": {split: f"splits/{split}.txt" for split in SPLITS},
            "tasks": {task: entries[task] for task in tasks}}  # fmt: skip
    return parse_manifest(data, Path(GenericLayout.folder), source="the generic layout")


class GenericLayout(DatasetLayout):
    """A generic dataset (manifest format) holding ``tasks`` (default: all six); see the module docstring."""

    name = "generic"
    folder = "generic"
    style = "pascal"

    def __init__(self, tasks: Sequence[str] | None = None):
        if tasks is not None and (isinstance(tasks, str) or not tasks or any(t not in GENERIC_TASKS for t in tasks)
                                  or len(set(tasks)) != len(tasks)):  # fmt: skip
            raise InputError(f"tasks must be distinct tasks among {', '.join(GENERIC_TASKS)}, got {tasks!r}")
        self.tasks = tuple(t for t in GENERIC_TASKS if tasks is None or t in tasks)
        self.manifest = _generic_manifest(self.tasks)
        from pamm.data.generic import example_paths

        self.example_files = tuple(example_paths(self.manifest, "{id}").values())

    def image_id(self, split: str, index: int) -> str:
        """``"train_000001"``-style."""
        return f"{split}_{index + 1:06d}"

    def _targets(self, scene: Mapping[str, Any]) -> dict[str, np.ndarray]:
        classes = np.array([_GENERIC_CLASS_OF_KIND[kind] for kind in scene["meta"]["kinds"]], dtype=np.uint8)
        maps = {
            "semseg": classes[scene["instances"]],
            "depth": scene["depth"],
            "normals": scene["normals"],
            "edge": scene["boundaries"],
            "sal": scene["saliency"],
            "human_parts": scene["human_parts"],
        }
        return {task: maps[task] for task in self.tasks}

    def _contents(self, iid, scene):
        from pamm.data.generic import encode_targets

        files = encode_targets(self.manifest, iid, self._targets(scene))
        return (png_bytes(scene["image"]), *files.values()), {}

    def list_paths(self):
        return [*self.manifest.splits.values(), MANIFEST_FILE]

    def lists(self, ids, records):
        out = {path: _id_list(ids[split]) for split, path in self.manifest.splits.items()}
        out[MANIFEST_FILE] = manifest_yaml(self.manifest).encode()
        return out

    def preview_scene(self, scene):
        shown = {"image": scene["image"]}
        shown.update({{"edge": "boundaries", "sal": "saliency"}.get(t, t): v for t, v in self._targets(scene).items()})
        return shown

    @property
    def labels(self):
        return self.manifest.spec


WRITERS: dict[str, DatasetLayout] = {layout.name: layout for layout in (NYUDLayout(), PascalLayout(), GenericLayout())}
"""Layout name -> its writer."""

LAYOUTS = tuple(WRITERS)
"""Dataset layouts :func:`~pamm.data.synth.synthesize` can write."""

DATASET_FOLDERS = {name: layout.folder for name, layout in WRITERS.items()}
"""Name of the dataset folder created under ``out`` for each layout (the names the authors' configs use)."""


def get_layout(layout: str, tasks: Sequence[str] | None = None) -> DatasetLayout:
    """The writer of layout ``layout`` (for ``generic``, of ``tasks``: None means all six); a ValueError names the
    known ones."""
    if not isinstance(layout, str) or layout not in WRITERS:
        raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")
    if tasks is None:
        return WRITERS[layout]
    if layout != GenericLayout.name:
        raise InputError(
            f"tasks: only the generic layout writes a chosen subset of tasks; the {layout} layout "
            "always writes all of its own"
        )
    return _generic_writer(tuple(tasks))


@cache
def _generic_writer(tasks: tuple[str, ...]) -> GenericLayout:
    return GenericLayout(tasks)


def image_id(layout: str, split: str, index: int) -> str:
    """File id of image ``index`` of ``split``: NYUD ``"0001"``-style (train odd, val even numbers), PASCAL
    ``"2008_000001"``-style (train 2008, val 2009). Ids never depend on how many images are generated."""
    writer = get_layout(layout)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    return writer.image_id(split, index)
