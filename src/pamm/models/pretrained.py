"""PAMM as a Hugging Face Hub model: the hooks of huggingface_hub's ``PyTorchModelHubMixin`` (``save_pretrained``,
``from_pretrained``, ``push_to_hub``, ``generate_model_card``) for :class:`~pamm.models.PAMM`.

The mixin calls these hooks on the model class, so they live beside it; they only turn a model into a JSON
description plus its tensors and back, with integrity checks. Building folders from runs and checkpoints, model
cards with a run's metrics, and the other model sources (weights files, run folders) are :mod:`pamm.interop.hub`'s.

A **pretrained folder** (a local folder, or the files of a Hub model repository):

- ``config.json``: ``{"format": "pamm-pretrained-1", "pamm_version", "model": the architecture
  (:class:`~pamm.config.ModelConfig`), "meta": :class:`~pamm.models.meta.ModelMeta` (dataset, tasks, head sizes,
  sizes, stride, normalisation), "weights": {"file": "model.safetensors", "bytes", "sha256"}, "experiment": the
  training config (optional)}``;
- ``model.safetensors``: the state dict;
- ``README.md``: the model card, with the Hub's metadata front matter.

Loading checks everything it can before building the model: both files present, config.json valid, the weights
file's size and SHA-256 equal to the ones config.json records (a changed or damaged file is refused), and every
tensor present with its shape. Each failure is one :class:`~pamm.errors.InputError` line naming the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from huggingface_hub import ModelCard, ModelCardData, PyTorchModelHubMixin

from .._version import __version__
from ..config import ConfigError, RuntimeConfig, config_from_checkpoint, config_to_dict
from ..errors import InputError, ResourceError
from ..tasks import DatasetSpec
from .meta import ModelMeta

if TYPE_CHECKING:
    from .pamm import PAMM

__all__ = ["PretrainedMixin", "PRETRAINED_FORMAT", "CONFIG_FILE", "WEIGHTS_FILE", "CARD_FILE", "file_sha256",
           "is_pretrained_folder"]  # fmt: skip

PRETRAINED_FORMAT = "pamm-pretrained-1"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
REPO_URL = "https://github.com/CQC-gogopro/PAMM"
PAPER_URL = "https://arxiv.org/abs/2511.14503"

_CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

{{ summary }}

{{ details }}

## How to load

```python
import pamm

predictor = pamm.load("{{ source }}")  # a folder or a Hub id, verified against config.json
prediction = predictor("photo.jpg")    # {task: array at the photo's size}; colorize=True adds colour maps

from pamm.models import PAMM

model = PAMM.from_pretrained("{{ source }}")  # the bare nn.Module
outputs = model(images)  # images (b, 3, H, W) normalised as below -> {task: raw outputs (b, K, H, W)}
```

For ONNX Runtime: `pamm export --checkpoint {{ source }} --format onnx --out model.onnx`.

## Files

- `config.json`: the architecture, the input conventions (normalisation, stride), the tasks and head sizes, the
  SHA-256 of the weights{{ experiment_note }};
- `model.safetensors`: the weights; loading refuses a file whose SHA-256 differs from the one in `config.json`.

Made with `pamm` (Apache-2.0), an implementation of the paper [PAMM]({{ paper_url }}); the authors' code:
[{{ repo_url }}]({{ repo_url }}).
"""


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_pretrained_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding a pamm ``config.json`` (the files are checked when loading)."""
    config = Path(path) / CONFIG_FILE
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("format") == PRETRAINED_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _meta_dict(meta: ModelMeta) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(meta)))


def _meta_from_dict(data: dict[str, Any], where: str) -> ModelMeta:
    names = {f.name for f in dataclasses.fields(ModelMeta)}
    try:
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in names}
        if values.get("label_space") is not None:  # a generic dataset's label space (pamm.tasks.DatasetSpec)
            values["label_space"] = DatasetSpec.from_dict(values["label_space"])
        return ModelMeta(**values)
    except (TypeError, ValueError) as e:
        raise InputError(f'{where}: invalid "meta" entry ({e})') from None


def _hub_error(source: str, e: Exception) -> Exception:
    """One line for a failed Hub look-up of ``source``."""
    from huggingface_hub import errors

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if isinstance(e, errors.HFValidationError):
        return InputError(
            f"{source}: no such folder, and not a Hub model id (expected a pretrained folder with "
            f"config.json and model.safetensors, or an id such as org/name)"
        )
    if isinstance(e, errors.RevisionNotFoundError):
        return InputError(f"{source}: the Hub repository has no such revision")
    if isinstance(e, errors.RepositoryNotFoundError):
        return InputError(
            f"{source}: no such folder, and no such model on the Hub (or it is private: log in with `hf auth login`)"
        )
    if isinstance(e, errors.RemoteEntryNotFoundError):
        return InputError(f"{source}: the Hub repository lacks a file of a pamm pretrained model")
    if isinstance(e, errors.LocalEntryNotFoundError):
        where = "HF_HUB_OFFLINE is set" if offline else "the Hub cannot be reached"
        return InputError(
            f"{source}: no such folder, and no cached copy of this Hub model ({where}; cache: "
            f"{_cache_dir()}); expected a pretrained folder or a cached Hub model id"
        )
    return ResourceError(f"{source}: the Hub could not be reached ({type(e).__name__}: {str(e).splitlines()[0]})")


def _cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _fetch(source: str, name: str, hub: dict[str, Any]) -> Path:
    """Path of file ``name`` of ``source``: inside a local folder, or downloaded (or found in the Hub cache)."""
    if os.path.isdir(source):
        path = Path(source) / name
        if not path.is_file():
            raise InputError(
                f"{path}: missing; a pamm pretrained folder holds {CONFIG_FILE}, {WEIGHTS_FILE} and "
                f"{CARD_FILE} (written by save_pretrained or `pamm export --format pretrained`)"
            )
        return path
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id=source, filename=name, **hub))
    except RemoteEntryNotFoundError:
        raise InputError(f"{source}: the Hub repository has no {name}; not a pamm pretrained model") from None
    except Exception as e:  # noqa: BLE001 - every failure of the look-up becomes one line
        raise _hub_error(source, e) from None


class PretrainedMixin(
    PyTorchModelHubMixin,
    library_name="pamm",
    license="apache-2.0",
    repo_url=REPO_URL,
    paper_url=PAPER_URL,
    tags=["pamm", "multi-task", "dense-prediction", "semantic-segmentation", "depth-estimation", "mamba"],
    model_card_template=_CARD_TEMPLATE,
):
    """``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` for PAMM (module docstring). Mixed into
    :class:`~pamm.models.PAMM` only: its methods use the model's ``cfg``, ``meta`` and weights."""

    _pretrained_experiment: dict[str, Any] | None = None
    pretrained_experiment: dict[str, Any] | None = None

    @property
    def _model(self) -> PAMM:
        """This object as the model it is part of (the mixin's only host is PAMM)."""
        return cast("PAMM", self)

    # ---- saving ----------------------------------------------------------------------------------------------

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        *,
        config: Any = None,
        overwrite: bool = False,
        repo_id: str | None = None,
        push_to_hub: bool = False,
        model_card_kwargs: dict[str, Any] | None = None,
        **push_to_hub_kwargs,
    ) -> str | None:
        """Write a pretrained folder (module docstring), all or nothing.

        Args:
            save_directory: the folder to create. It is written beside its place and moved there when complete.
            config: the experiment :class:`~pamm.config.Config` the model was trained with (stored as
                ``"experiment"`` in config.json; its ``model`` section must be this model's architecture).
            overwrite: replace an existing pretrained folder. Without it an existing folder that is not empty is
                refused; even with it, a folder that is not a pamm pretrained folder is never replaced.
            model_card_kwargs: passed to :meth:`generate_model_card` (``details``: Markdown for the card,
                ``card_data``: extra front-matter entries, ``source``: the name used in the card's examples).
            repo_id, push_to_hub, push_to_hub_kwargs: push the folder to the Hub afterwards (huggingface_hub).

        Raises:
            InputError: the folder exists (see ``overwrite``), or ``config`` describes another architecture.
            ResourceError: it could not be written (disk full, permission denied); nothing is left behind.
        """
        from ..fs import StagedFolder

        target = Path(save_directory)
        if target.exists() or target.is_symlink():
            if not target.is_dir() or target.is_symlink():
                raise InputError(f"{target}: exists and is not a folder; choose another path for the pretrained folder")
            if any(target.iterdir()):
                if not overwrite:
                    raise InputError(
                        f"{target}: the folder exists and is not empty; pass overwrite=True "
                        f"(--overwrite) to replace a pretrained folder, or choose another path"
                    )
                if not is_pretrained_folder(target):
                    raise InputError(
                        f"{target}: not a pamm pretrained folder (no pamm {CONFIG_FILE}); it is never "
                        f"replaced, even with overwrite"
                    )
        experiment = None
        if config is not None:
            if isinstance(config, dict):
                config = config_from_checkpoint(config)
            if config_to_dict(config.model) != config_to_dict(self._model.cfg):
                raise InputError(
                    "save_pretrained: config.model differs from the model's architecture; pass the "
                    "experiment config the model was built from"
                )
            experiment = config_to_dict(config)
            experiment.pop("runtime", None)
        self._pretrained_experiment = experiment
        try:
            with StagedFolder(target, replace=True) as stage:
                super().save_pretrained(stage.path, model_card_kwargs=model_card_kwargs)
        finally:
            self._pretrained_experiment = None
        if push_to_hub:
            return self.push_to_hub(
                repo_id or target.name, config=config, model_card_kwargs=model_card_kwargs, **push_to_hub_kwargs
            )
        return None

    def _save_pretrained(self, save_directory: Path) -> None:
        """The mixin's hook: ``model.safetensors`` and ``config.json`` (with the weights' SHA-256) in
        ``save_directory``."""
        from safetensors.torch import save_file

        weights = save_directory / WEIGHTS_FILE
        model = self._model
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise InputError(f"refusing to save: non-finite values in {', '.join(bad[:5])}")
        save_file(state, str(weights), metadata={"format": "pt", "pamm_format": PRETRAINED_FORMAT})
        description = {
            "format": PRETRAINED_FORMAT,
            "pamm_version": __version__,
            "model": config_to_dict(model.cfg),
            "meta": _meta_dict(model.meta),
            "weights": {"file": WEIGHTS_FILE, "bytes": weights.stat().st_size, "sha256": file_sha256(weights)},
        }
        experiment = self._pretrained_experiment
        if experiment is not None:
            description["experiment"] = experiment
        (save_directory / CONFIG_FILE).write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")

    def generate_model_card(self, *args, **kwargs) -> ModelCard:
        """The model card: the Hub's front matter (library, license, tags, and ``card_data`` entries) and a
        description of the model; ``details`` (Markdown) is added under it, ``source`` names it in the examples."""
        model = self._model
        meta = model.meta
        data = ModelCardData(**self._hub_mixin_info.model_card_data.to_dict())
        extra = dict(kwargs.pop("card_data", None) or {})
        eval_results = extra.pop("eval_results", None)
        for key, value in extra.items():
            setattr(data, key, value)
        # ModelCardData keeps any extra entry as an attribute (its **kwargs); the class declares the standard ones
        data.pamm = {  # type: ignore[attr-defined]
            **(getattr(data, "pamm", None) or {}),
            "dataset": meta.dataset,
            "tasks": list(meta.tasks),
            "num_outputs": dict(meta.num_outputs),
            "train_size": list(meta.train_size),
            "stride": meta.stride,
        }
        if eval_results:
            data.eval_results = eval_results
            data.model_name = data.model_name or kwargs.get("title") or "PAMM"
        total, backbone = _count(model), _count(model.backbone)
        cfg = model.cfg
        summary = "\n".join([
            f"PAMM (Parameter Aware Mamba Model, [arXiv 2511.14503]({PAPER_URL})) for multi-task dense prediction: one "
            f"image in, {len(meta.tasks)} dense maps out ({', '.join(meta.tasks)}; {meta.dataset} label space).",
            "",
            "| | |",
            "|---|---|",
            f"| tasks (head channels) | {', '.join(f'{t} ({meta.num_outputs[t]})' for t in meta.tasks)} |",
            f"| backbone | `{cfg.backbone.name}`, taps {list(cfg.backbone.taps)}, stride {meta.stride} |",
            f"| decoder | {cfg.decoder}: d = {cfg.dim}, N = {cfg.d_state}, {cfg.num_experts} experts (top {cfg.top_k}, "
            f"{cfg.expert_kernel}x{cfg.expert_kernel}), scan {cfg.scan.kind} x {cfg.scan.directions} |",
            f"| input | RGB normalised with mean {list(meta.mean)}, std {list(meta.std)}; sides multiples of "
            f"{meta.stride}; trained at {meta.train_size[0]}x{meta.train_size[1]} |",
            f"| parameters | {total:,} ({backbone:,} backbone, {total - backbone:,} decoder and heads) |",
        ])  # fmt: skip
        kwargs.setdefault("title", f"PAMM: {', '.join(meta.tasks)} ({meta.dataset})")
        kwargs.setdefault("details", "")
        kwargs.setdefault("source", "FOLDER_OR_HUB_ID")
        return ModelCard.from_template(
            card_data=data,
            template_str=self._hub_mixin_info.model_card_template,
            summary=summary,
            repo_url=REPO_URL,
            paper_url=PAPER_URL,
            experiment_note=kwargs.pop("experiment_note", ""),
            **kwargs,
        )

    # ---- loading ---------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        force_download: bool = False,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        revision: str | None = None,
        map_location: str | torch.device = "cpu",
        runtime: RuntimeConfig | None = None,
        **model_kwargs: Any,
    ) -> PAMM:
        """Load a pretrained folder or a Hub model (``org/name``; downloaded once into the Hub cache, or read from it
        with ``HF_HUB_OFFLINE=1`` / ``local_files_only``), verified (module docstring).

        Args:
            pretrained_model_name_or_path: a pretrained folder, or a Hub model id.
            revision, cache_dir, force_download, token, local_files_only: huggingface_hub's download options.
            map_location: device of the returned model.
            runtime: how to execute it (scan backend, ...); defaults when None.
            model_kwargs: none is accepted (a TypeError): the architecture comes from config.json.

        Returns:
            the model in eval mode; ``model.pretrained_experiment`` holds the stored experiment config dict (or None).

        Raises:
            InputError: a missing, invalid, changed or mismatched file, or an unknown model (one line each).
            ResourceError: the Hub could not be reached.
        """
        if model_kwargs:
            raise TypeError(f"from_pretrained() got unexpected keyword arguments: {', '.join(model_kwargs)}")
        return cls._from_pretrained(
            model_id=str(pretrained_model_name_or_path),
            revision=revision,
            cache_dir=cache_dir,
            force_download=force_download,
            token=token,
            local_files_only=local_files_only,
            map_location=map_location,
            runtime=runtime,
        )

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | os.PathLike | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        map_location: str | torch.device = "cpu",
        runtime: RuntimeConfig | None = None,
        **unused: Any,
    ) -> PAMM:
        """The mixin's hook (see :meth:`from_pretrained`)."""
        from safetensors import safe_open

        hub: dict[str, Any] = dict(
            revision=revision,
            cache_dir=cache_dir,
            force_download=force_download,
            token=token,
            local_files_only=local_files_only,
        )
        config_path = _fetch(model_id, CONFIG_FILE, hub)
        try:
            description = json.loads(config_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise InputError(f"{config_path}: not valid JSON ({e})") from None
        if not isinstance(description, dict) or description.get("format") != PRETRAINED_FORMAT:
            found = description.get("format") if isinstance(description, dict) else None
            raise InputError(
                f"{config_path}: not a pamm pretrained config (format {found!r}, expected {PRETRAINED_FORMAT!r})"
            )
        record = description.get("weights")
        if not isinstance(record, dict) or not {"sha256", "bytes"} <= set(record):
            raise InputError(f'{config_path}: no "weights" record (bytes, sha256) of {WEIGHTS_FILE}')
        try:
            model_cfg = config_from_checkpoint({"model": description.get("model") or {}}).model
        except ConfigError as e:
            raise InputError(f"{config_path}: {e}") from None
        meta = _meta_from_dict(description.get("meta") or {}, str(config_path))
        weights = _fetch(model_id, record.get("file", WEIGHTS_FILE), hub)
        size = weights.stat().st_size
        if size != record["bytes"] or file_sha256(weights) != record["sha256"]:
            raise InputError(
                f"{weights}: its content differs from the SHA-256 recorded in {CONFIG_FILE} ({size:,} "
                f"bytes, {record['bytes']:,} recorded): the file was changed or damaged; download or "
                f"export it again"
            )
        model = cast("PAMM", cls(model_cfg, meta, load_backbone_weights=False, runtime=runtime))
        own = model.state_dict()
        try:
            with safe_open(str(weights), framework="pt") as f:
                names = set(f.keys())
                missing, unexpected = sorted(set(own) - names), sorted(names - set(own))
                shapes = [k for k in names & set(own) if tuple(f.get_slice(k).get_shape()) != tuple(own[k].shape)]
                if missing or unexpected or shapes:
                    parts = [
                        f"{len(v)} {what} ({', '.join(v[:3])}{', ...' if len(v) > 3 else ''})"
                        for what, v in (
                            ("missing", missing),
                            ("unexpected", unexpected),
                            ("mis-shaped", sorted(shapes)),
                        )
                        if v
                    ]
                    raise InputError(f"{weights}: does not fit the architecture in {CONFIG_FILE}: {'; '.join(parts)}")
                state = {k: f.get_tensor(k) for k in names}
        except InputError:
            raise
        except Exception as e:  # noqa: BLE001 - a file that matches its digest but does not parse
            raise InputError(f"{weights}: not a readable safetensors file ({e})") from None
        model.load_state_dict(state)
        model.pretrained_experiment = description.get("experiment")
        return model.to(map_location).eval()
