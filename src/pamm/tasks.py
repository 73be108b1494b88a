"""The dense prediction tasks and datasets PAMM knows: one place for names, channel counts and conventions.

Everything that depends on "which task is this" (model heads, losses, metrics, loaders, visualisation) reads
its facts from here instead of re-declaring them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .errors import InputError

IGNORE_INDEX = 255
"""Label value ignored by losses and metrics (padding, void, invalid normals)."""


@dataclass(frozen=True)
class TaskSpec:
    """A dense prediction task.

    Attributes:
        name: task key used everywhere (config, batches, predictions, metrics).
        kind: ``"classification"`` (per-pixel classes, target ``long (H, W)``), ``"regression"`` (target
            ``float (C, H, W)``) or ``"binary"`` (boundaries: target ``float (1, H, W)`` in {0, 1, 255}).
        title: human readable name.
    """

    name: str
    kind: str
    title: str


TASKS: dict[str, TaskSpec] = {
    "semseg": TaskSpec("semseg", "classification", "semantic segmentation"),
    "depth": TaskSpec("depth", "regression", "depth"),
    "normals": TaskSpec("normals", "regression", "surface normals"),
    "edge": TaskSpec("edge", "binary", "boundaries"),
    "sal": TaskSpec("sal", "classification", "saliency"),
    "human_parts": TaskSpec("human_parts", "classification", "human parts"),
}


def _rgb(colour: Sequence) -> tuple[int, int, int]:
    red, green, blue = (int(v) for v in colour)
    return red, green, blue


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset's label space: its tasks, output channels per task and the constants its losses and metrics use.

    The two benchmarks' specs are :data:`DATASETS`; a dataset folder described by a ``dataset.yaml`` manifest gets
    its spec from :func:`pamm.manifest.read_manifest` (``read_manifest(root).spec``). A trained model keeps
    the spec it was trained with (``model.meta``, stored in its checkpoint: :meth:`to_dict`), so heads, metrics
    and palettes are rebuilt without the dataset folder.

    Attributes:
        name: ``"nyud"``, ``"pascal"`` or a manifest's ``name``.
        tasks: every task the dataset annotates, in canonical order.
        num_outputs: output channels of the model head per task.
        edge_pos_weight: weight of boundary pixels in the edge loss (notes §3).
        edge_max_dist: SEISM matching tolerance as a fraction of the image diagonal (notes §4).
        class_names: class names per classification task.
        edge_gt: how the boundary metric derives its one-pixel ground truth from the loaded boundary map:
            ``"seg2bmap"`` (NYUD-v2's boundary PNGs) or ``"thin"`` (already thin boundaries, e.g. PASCAL-Context's).
        max_depth: depth metrics score pixels with ``0 < ground truth < max_depth`` metres.
        palettes: colours of a classification task's classes: ``"voc"`` (the PASCAL VOC colour map),
            ``"distinct"`` (maximally distinct colours) or explicit RGB triples, one per class; tasks not listed
            use ``"voc"`` (:func:`pamm.viz.palette_for`).
    """

    name: str
    tasks: tuple[str, ...]
    num_outputs: dict[str, int]
    edge_pos_weight: float
    edge_max_dist: float
    class_names: dict[str, tuple[str, ...]]
    edge_gt: str = "thin"
    max_depth: float = 80.0
    palettes: dict[str, str | tuple[tuple[int, int, int], ...]] = field(default_factory=dict)

    def select(self, tasks: Sequence[str] | None = None, source: str = "tasks") -> tuple[str, ...]:
        """``tasks`` in this dataset's canonical order (all of them when None or empty); a task the dataset does not
        annotate is a :class:`~pamm.errors.InputError` naming ``source`` (e.g. ``"config key 'data.tasks'"``)."""
        if not tasks:
            return self.tasks
        unknown = [t for t in tasks if t not in self.tasks]
        if unknown:
            raise InputError(
                f"{source}: {', '.join(map(repr, unknown))} not annotated by dataset {self.name!r} "
                f"(its tasks: {', '.join(self.tasks)})"
            )
        return tuple(t for t in self.tasks if t in tasks)

    def to_dict(self) -> dict:
        """A JSON-able dict (lists for tuples) that :meth:`from_dict` turns back into an equal spec."""
        palettes = {t: p if isinstance(p, str) else [list(c) for c in p] for t, p in self.palettes.items()}
        return {
            "name": self.name,
            "tasks": list(self.tasks),
            "num_outputs": dict(self.num_outputs),
            "edge_pos_weight": self.edge_pos_weight,
            "edge_max_dist": self.edge_max_dist,
            "class_names": {t: list(n) for t, n in self.class_names.items()},
            "edge_gt": self.edge_gt,
            "max_depth": self.max_depth,
            "palettes": palettes,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> DatasetSpec:
        """The spec of :meth:`to_dict`'s output (e.g. read from a checkpoint); a ValueError names what is wrong."""
        try:
            palettes = {
                t: p if isinstance(p, str) else tuple(_rgb(c) for c in p)
                for t, p in dict(data.get("palettes", {})).items()
            }
            spec = cls(
                name=str(data["name"]),
                tasks=tuple(data["tasks"]),
                num_outputs={t: int(k) for t, k in data["num_outputs"].items()},
                edge_pos_weight=float(data["edge_pos_weight"]),
                edge_max_dist=float(data["edge_max_dist"]),
                class_names={t: tuple(str(n) for n in names) for t, names in data["class_names"].items()},
                edge_gt=str(data.get("edge_gt", "thin")),
                max_depth=float(data.get("max_depth", 80.0)),
                palettes=palettes,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"not a dataset spec ({type(e).__name__}: {e})") from None
        problems = [t for t in spec.tasks if t not in TASKS or t not in spec.num_outputs]
        problems += [t for t, names in spec.class_names.items() if len(names) != spec.num_outputs.get(t)]
        if problems or spec.edge_gt not in EDGE_GT_CONVENTIONS:
            raise ValueError(
                f"not a consistent dataset spec (tasks or class names of {problems}, edge_gt {spec.edge_gt!r})"
            )
        return spec


def label_space_difference(trained: DatasetSpec, data: DatasetSpec, tasks: Sequence[str]) -> str | None:
    """How the label space of ``data`` differs from the one a model was ``trained`` on, for ``tasks`` (class counts
    and names; edge and depth constants do not matter to the weights); None when they agree."""
    for task in tasks:
        if task not in data.tasks:
            return f"the data has no {task} annotation"
        if trained.num_outputs.get(task) != data.num_outputs.get(task):
            return (
                f"{task} has {data.num_outputs.get(task)} outputs in the data, {trained.num_outputs.get(task)} "
                f"in the model"
            )
        if trained.class_names.get(task) != data.class_names.get(task):
            return (
                f"{task} classes differ: the model's are {list(trained.class_names.get(task, ()))}, the "
                f"data's {list(data.class_names.get(task, ()))}"
            )
    return None


EDGE_GT_CONVENTIONS = ("thin", "seg2bmap")
"""Values of :attr:`DatasetSpec.edge_gt`."""

GENERIC = "generic"
"""``data.dataset`` of a dataset folder described by its own ``dataset.yaml`` manifest (:mod:`pamm.manifest`)."""


NYUD_CLASSES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat",
    "clothes", "ceiling", "books", "refridgerator", "television", "paper", "towel", "shower curtain", "box",
    "whiteboard", "person", "night stand", "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure",
    "otherfurniture", "otherprop",
)  # fmt: skip

PASCAL_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

HUMAN_PARTS = ("background", "head", "torso", "upper arm", "lower arm", "upper leg", "lower leg")

DATASETS: dict[str, DatasetSpec] = {
    "nyud": DatasetSpec(
        name="nyud",
        tasks=("semseg", "depth", "normals", "edge"),
        num_outputs={"semseg": 40, "depth": 1, "normals": 3, "edge": 1},
        edge_pos_weight=0.88,
        edge_max_dist=0.011,
        class_names={"semseg": NYUD_CLASSES},
        edge_gt="seg2bmap",
        palettes={"semseg": "distinct"},
    ),
    "pascal": DatasetSpec(
        name="pascal",
        tasks=("semseg", "human_parts", "sal", "normals", "edge"),
        num_outputs={"semseg": 21, "human_parts": 7, "sal": 2, "normals": 3, "edge": 1},
        edge_pos_weight=0.95,
        edge_max_dist=0.0075,
        class_names={"semseg": PASCAL_CLASSES, "human_parts": HUMAN_PARTS, "sal": ("background", "salient")},
    ),
}


DATASET_KINDS = (*DATASETS, GENERIC)
"""What ``data.dataset`` may name: a benchmark of :data:`DATASETS` or :data:`GENERIC`."""


def dataset_spec(dataset: str | DatasetSpec) -> DatasetSpec:
    """The :class:`DatasetSpec` of ``dataset``: a spec is returned as is; ``"nyud"`` / ``"pascal"`` give
    :data:`DATASETS`' entries. A ``generic`` dataset's spec is in its folder's ``dataset.yaml``
    (:func:`pamm.manifest.read_manifest`, or :attr:`pamm.config.DataConfig.spec`). Anything else is an InputError
    listing the known names."""
    if isinstance(dataset, DatasetSpec):
        return dataset
    if dataset == GENERIC:
        raise InputError(
            "the generic dataset's label space is in the dataset.yaml of its folder: "
            "pamm.manifest.read_manifest(root).spec (data.root in a config)"
        )
    try:
        return DATASETS[dataset]
    except (KeyError, TypeError):
        raise InputError(f"unknown dataset {dataset!r}; expected one of {list(DATASET_KINDS)}") from None


def postprocess(task: str, output):
    """Turn a head's raw output (b, K, H, W) into the prediction its metrics and visualisations use.

    semseg / human_parts: class index (b, H, W) int64 (the first of equal maxima); sal: probability of "salient"
    (b, H, W); depth: metres (b, H, W), clamped at 0; normals: unit vectors (b, 3, H, W) (as ``F.normalize``, eps
    1e-12); edge: boundary probability (b, H, W).
    """
    import torch

    if task in ("semseg", "human_parts"):
        return output.max(1).indices  # = argmax(1), several times faster over channels on CPUs
    if task == "sal":
        return torch.softmax(output.float(), 1)[:, 1]
    if task == "depth":
        return output[:, 0].float().clamp_min(0)
    if task == "normals":  # = F.normalize(dim=1), whose vector norm over channels is several times slower on CPUs
        normals = output.float()
        return normals / normals.square().sum(1, keepdim=True).sqrt().clamp_min(1e-12)
    if task == "edge":
        return torch.sigmoid(output[:, 0].float())
    raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASKS)}")
