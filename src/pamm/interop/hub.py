"""Sharing trained models: the model sources every command accepts, and pretrained folders with a generated model
card.

A **model source** is one of:

- a pamm weights file (``.safetensors`` written by training, ``pamm convert-official`` or ``save_weights``);
- a run folder (``pamm train --out``): its best checkpoint (else its newest verified one), and its ``metrics.json``;
- a pretrained folder (``config.json`` + ``model.safetensors`` + ``README.md``, written by
  :meth:`~pamm.models.PAMM.save_pretrained`, :func:`export_pretrained` or ``pamm convert-official``);
- a Hugging Face Hub model id (``org/name``, optionally ``org/name@revision``), downloaded once into the Hub cache
  (``HF_HUB_CACHE``) or, with ``HF_HUB_OFFLINE=1``, read from it.

:func:`load_trained` turns any of them into a model (verified: weights digests, shapes) and what is known of its
training; :func:`export_pretrained` writes a pretrained folder from any of them, with a model card (README.md with
the Hub's metadata front matter: library, license, tags, datasets, the run's metrics as a model index; then the
preset, tasks, training data, metrics table, parameter counts and how to load). The folder format itself and the
Hub mixin are :mod:`pamm.models.pretrained`'s.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import Config, RuntimeConfig, config_from_checkpoint, config_to_dict
from ..errors import InputError
from ..models.pretrained import CONFIG_FILE, WEIGHTS_FILE

__all__ = ["TrainedModel", "load_trained", "model_card_kwargs", "export_pretrained",
           "looks_like_hub_id", "SOURCE_HELP"]  # fmt: skip

SOURCE_HELP = "a weights file (.safetensors), a run folder, a pretrained folder or a Hub model id (org/name)"

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?")

_TASK_TYPES = {
    "semseg": "image-segmentation",
    "human_parts": "image-segmentation",
    "sal": "image-segmentation",
    "depth": "depth-estimation",
    "normals": "surface-normal-estimation",
    "edge": "boundary-detection",
}
_DATASET_NAMES = {"nyud": "NYUD-v2", "pascal": "PASCAL-Context"}


@dataclass
class TrainedModel:
    """A model loaded from a source, with what is known of it.

    Attributes:
        model: the :class:`~pamm.models.PAMM`, in eval mode.
        kind: ``"weights"``, ``"run"``, ``"pretrained"`` or ``"hub"``.
        source: the source as given.
        weights: the weights file that was read.
        experiment: the training config (None when the source does not carry one).
        metrics: the run's ``metrics.json`` (run folders), else None.
        extra: the weights file's extra metadata (conversion report, ...).
    """

    model: Any
    kind: str
    source: str
    weights: Path
    experiment: Config | None = None
    metrics: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def looks_like_hub_id(source: str) -> bool:
    """``org/name`` or ``org/name@revision`` (checked only for sources that are not local paths)."""
    return bool(_HUB_ID.fullmatch(source))


def _read_metrics(run: Path) -> dict[str, Any] | None:
    path = run / "metrics.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable metrics file ({e}); fix or remove it") from None


def load_trained(
    source: str | os.PathLike, device: str | torch.device = "cpu", runtime: RuntimeConfig | None = None
) -> TrainedModel:
    """Load the model of any model source (module docstring), verified.

    Raises:
        InputError: nothing usable at ``source`` (one line saying what was expected), or a damaged file;
        ResourceError: the Hub could not be reached.
    """
    from ..engine.checkpoint import CheckpointError, load_weights
    from ..engine.run import best_checkpoint
    from ..models import PAMM, build_model

    text = str(source)
    path = Path(source)
    if path.is_dir():
        if (path / CONFIG_FILE).is_file() or (path / WEIGHTS_FILE).is_file():
            model = PAMM.from_pretrained(path, map_location=device, runtime=runtime)
            return _pretrained(model, "pretrained", text, path / WEIGHTS_FILE)
        if (path / "checkpoints").is_dir():
            weights = best_checkpoint(path, log=lambda message: None)
            trained = _from_weights(weights, "run", text, device, runtime, load_weights, build_model, CheckpointError)
            trained.metrics = _read_metrics(path)
            return trained
        raise InputError(
            f"{path}: a folder that is neither a run folder (no checkpoints/) nor a pretrained folder "
            f"(no {CONFIG_FILE}); expected {SOURCE_HELP}"
        )
    if path.is_file():
        return _from_weights(path, "weights", text, device, runtime, load_weights, build_model, CheckpointError)
    if looks_like_hub_id(text):
        repo, _, revision = text.partition("@")
        model = PAMM.from_pretrained(repo, revision=revision or None, map_location=device, runtime=runtime)
        return _pretrained(model, "hub", text, Path(repo))
    raise InputError(f"{text}: no such file or folder, and not a Hub model id; expected {SOURCE_HELP}")


def _pretrained(model, kind: str, source: str, weights: Path) -> TrainedModel:
    stored = getattr(model, "pretrained_experiment", None)
    experiment = config_from_checkpoint(stored) if stored else None
    return TrainedModel(model, kind, source, weights, experiment=experiment)


def _from_weights(weights: Path, kind, source, device, runtime, load_weights, build_model, checkpoint_error):
    import dataclasses

    try:
        state, cfg, extra = load_weights(weights)
    except checkpoint_error as e:
        raise InputError(str(e).splitlines()[0]) from None
    from ..engine.checkpoint import check_state_dict_fits, stored_dataset_spec

    model = build_model(
        dataclasses.replace(cfg, runtime=runtime or RuntimeConfig()),
        load_backbone_weights=False,
        spec=stored_dataset_spec(extra, weights),
    )  # a generic dataset's label space, no folder needed

    try:
        check_state_dict_fits(model, state, f"checkpoint {weights}")
    except checkpoint_error as e:
        lines = str(e).splitlines()
        raise InputError(f"{lines[0].rstrip(':')}: {'; '.join(s.strip() for s in lines[1:4])}") from None
    model.load_state_dict(state)
    return TrainedModel(model.to(device).eval(), kind, source, Path(weights), experiment=cfg, extra=extra)


# ----------------------------------------------------------------------------------------------------------
# Model cards


def _scalar_metrics(metrics: dict[str, Any] | None, tasks) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for task in tasks:
        values = (metrics or {}).get(task)
        if isinstance(values, dict):
            scalars = {
                k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            }
            if scalars:
                out[task] = scalars
    return out


def model_card_kwargs(
    trained: TrainedModel, *, name: str | None = None, license: str | None = None, source_name: str | None = None
) -> dict[str, Any]:
    """The ``model_card_kwargs`` of :meth:`~pamm.models.PAMM.save_pretrained` for a loaded model: front matter
    (license, datasets, the run's metrics as a model index, preset) and Markdown details (training data and
    recipe, metrics table, provenance)."""
    from huggingface_hub import EvalResult

    model, cfg = trained.model, trained.experiment
    meta = model.meta
    dataset = _DATASET_NAMES.get(meta.dataset, meta.dataset)
    card_data: dict[str, Any] = {"pamm": {}}
    lines: list[str] = []
    if cfg is not None:
        card_data["pamm"]["preset"] = cfg.name
        root = cfg.data.root
        lines += ["## Training", "",
                  f"- preset / config: `{cfg.name}`",
                  f"- data: {dataset} layout (`{meta.dataset}`), root `{root}` at training time, train size "
                  f"{cfg.data.train_size[0]}x{cfg.data.train_size[1]}",
                  f"- recipe: {cfg.train.optimizer}, lr {cfg.train.lr:g}, {cfg.train.iterations:,} iterations of batch "
                  f"{cfg.train.batch_size}, weight decay {cfg.train.weight_decay:g}, loss weights "
                  + ", ".join(f"{t} {w:g}" for t, w in cfg.train.loss_weights.items() if t in meta.tasks),
                  ""]  # fmt: skip
    metrics = trained.metrics or {}
    scalars = _scalar_metrics(trained.metrics, meta.tasks)
    if scalars:
        split = metrics.get("split", "val")
        lines += [
            "## Metrics",
            "",
            f"On the {split} split (`metrics.json` of the run"
            + (f", checkpoint `{Path(metrics['checkpoint']).name}`" if metrics.get("checkpoint") else "")
            + "):",
            "",
            "| task | metric | value |",
            "|---|---|---:|",
        ]
        lines += [
            f"| {task} | {metric} | {value:.4f} |"
            for task, values in scalars.items()
            for metric, value in values.items()
        ]
        lines.append("")
        card_data["eval_results"] = [
            EvalResult(
                task_type=_TASK_TYPES.get(task, task),
                task_name=task,
                dataset_type=meta.dataset,
                dataset_name=dataset,
                dataset_split=split,
                metric_type=metric,
                metric_name=f"{task} {metric}",
                metric_value=round(value, 6),
            )
            for task, values in scalars.items()
            for metric, value in values.items()
        ]
        card_data["model_name"] = name or (cfg.name if cfg is not None else "PAMM")
    report = trained.extra.get("report") if trained.extra else None
    if report:
        original = trained.extra.get("converted_from", {}).get("file")
        lines += ["## Provenance", "",
                  f"Converted from the authors' released checkpoint `{original}` "
                  f"with `pamm convert-official` ({report.get('mapped_tensors')} tensors mapped, "
                  f"{report.get('dropped_tensors')} of the dead x-branch dropped). The released checkpoints do not "
                  f"contain A_log, D and the B/C task priors (the released code never registers them): A_log and D "
                  f"are set to their initial values and the priors drawn with seed {report.get('prior_seed')}, so "
                  f"outputs differ from those of any particular run of the released code (which re-draws the priors "
                  f"at random on every run).", ""]  # fmt: skip
    else:
        lines += [
            "## Provenance",
            "",
            f"Exported from {trained.kind} `{trained.source}` (weights `{trained.weights.name}`) with pamm.",
            "",
        ]
    kwargs: dict[str, Any] = {
        "details": "\n".join(lines).rstrip() + "\n",
        "card_data": card_data,
        "source": source_name or "FOLDER_OR_HUB_ID",
        "experiment_note": ", and the training config" if cfg is not None else "",
    }
    if license:
        card_data["license"] = license
    if name:
        kwargs["title"] = name
    return kwargs


def export_pretrained(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    name: str | None = None,
    license: str | None = None,
    hub_id: str | None = None,
) -> Path:
    """Write a pretrained folder from any model source (module docstring), with a generated model card.

    Args:
        source: weights file, run folder, pretrained folder or Hub id.
        out: the folder to create (written beside and moved into place when complete).
        overwrite: replace an existing pretrained folder (never any other folder).
        name: the model's name in the card (default: the preset).
        license: the weights' licence in the card's metadata (default: apache-2.0, the code's).
        hub_id: the id the folder will have on the Hub, used in the card's loading examples.

    Returns:
        ``out``.
    """
    out = Path(out)
    trained = load_trained(source)
    if Path(source).resolve() == out.resolve():
        raise InputError(f"{out}: the output folder is the source; choose another path")
    kwargs = model_card_kwargs(trained, name=name, license=license, source_name=hub_id or str(out))
    experiment = trained.experiment
    if experiment is not None and config_to_dict(experiment.model) != config_to_dict(trained.model.cfg):
        experiment = None
    trained.model.save_pretrained(out, config=experiment, overwrite=overwrite, model_card_kwargs=kwargs)
    return out
