"""What a trained model carries besides its weights: its label space, input geometry and evaluation transform."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Config, pair
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD, EvalTransform
from ..tasks import DATASETS, DatasetSpec, dataset_spec

__all__ = ["ModelMeta"]


@dataclass(frozen=True)
class ModelMeta:
    """What a user of a trained model needs besides its weights (torchvision-style metadata).

    Attributes:
        dataset: the label space's name: a benchmark (``nyud`` / ``pascal``) or a generic dataset's manifest name.
        tasks: predicted tasks, in output order.
        num_outputs: channels of each head.
        train_size: (H, W) the model was built for (the sliding-window size of inference).
        stride: input sizes must be multiples of it.
        mean, std: input normalisation (RGB in [0, 1]).
        test_size: (H, W) of evaluation: minimum padded size, and the scale photos are resized to for inference
            (None: ``train_size``).
        label_space: the :class:`~pamm.tasks.DatasetSpec` of a label space that is not a benchmark's (a generic
            dataset: its classes, palettes and metric constants, so that a checkpoint needs no dataset folder);
            None for the benchmarks. :attr:`spec` gives the spec in both cases.
    """

    dataset: str
    tasks: tuple[str, ...]
    num_outputs: dict[str, int]
    train_size: tuple[int, int]
    stride: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    test_size: tuple[int, int] | None = None
    label_space: DatasetSpec | None = None

    @classmethod
    def from_config(cls, cfg: Config, spec: DatasetSpec | None = None) -> ModelMeta:
        """The metadata of the model an experiment config builds: tasks and head sizes from ``spec`` (default: the
        config's dataset, ``cfg.data.spec``; a checkpoint passes the label space it was trained with)."""
        spec = spec or cfg.data.spec
        tasks = spec.select(cfg.data.tasks, "config key 'data.tasks'")
        return cls(
            dataset=spec.name,
            tasks=tasks,
            num_outputs={t: spec.num_outputs[t] for t in tasks},
            train_size=pair(cfg.data.train_size),
            stride=cfg.model.backbone.patch_size,
            test_size=pair(cfg.data.test_size),
            label_space=None if DATASETS.get(spec.name) == spec else spec,
        )

    @property
    def spec(self) -> DatasetSpec:
        """The label space as a :class:`~pamm.tasks.DatasetSpec` (class names, palettes, metric constants)."""
        return self.label_space if self.label_space is not None else dataset_spec(self.dataset)

    def transforms(self) -> EvalTransform:
        """The evaluation transform (normalise, pad; the resolution rule for photos) this model expects."""
        return EvalTransform(self.test_size or self.train_size, self.stride, self.mean, self.std)
