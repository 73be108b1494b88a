"""The dense prediction tasks and datasets PAMM knows: one place for names, channel counts and conventions.

Everything that depends on "which task is this" (model heads, losses, metrics, loaders, visualisation) reads
its facts from here instead of re-declaring them.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class DatasetSpec:
    """A benchmark: its tasks, output channels per task and evaluation constants.

    Attributes:
        name: ``"nyud"`` or ``"pascal"``.
        tasks: every task the dataset annotates, in canonical order.
        num_outputs: output channels of the model head per task.
        edge_pos_weight: weight of boundary pixels in the edge loss (notes §3).
        edge_max_dist: SEISM matching tolerance as a fraction of the image diagonal (notes §4).
        class_names: class names per classification task.
    """

    name: str
    tasks: tuple[str, ...]
    num_outputs: dict[str, int]
    edge_pos_weight: float
    edge_max_dist: float
    class_names: dict[str, tuple[str, ...]]


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


def dataset_spec(name: str) -> DatasetSpec:
    """Return the :class:`DatasetSpec` called ``name`` or raise a ``ValueError`` listing the known ones."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}") from None


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
