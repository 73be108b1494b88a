"""Checkpoints: model weights as safetensors (with the experiment config in their metadata) and a small training
state file; both written atomically (temporary file, fsync, rename) and verified on load.

A weights file alone is enough to rebuild the model (:func:`load_model`); a training state file (``.state.pt``)
holds what an exact resume needs beside it (optimizer, schedule, RNG states, counters). Where a run folder keeps
them and which one is "the best" is :mod:`pamm.engine.run`'s business.

Files that are not what a reader expects are named with what they are (:func:`identify_file`): a folder, a training
state given as weights, a PyTorch pickle, a foreign safetensors file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from ..config import Config, ConfigError, config_from_checkpoint, config_to_dict
from ..errors import InputError
from ..fs import AtomicGroup, atomic_write
from ..tasks import DatasetSpec

__all__ = [
    "CheckpointError", "save_weights", "load_weights", "read_checkpoint_config", "read_checkpoint_metadata",
    "load_model", "save_state", "load_state", "save_checkpoint", "link_or_copy", "check_state_dict_fits",
    "config_differences", "identify_file", "stored_dataset_spec", "FORMAT",
]  # fmt: skip

FORMAT = "pamm-checkpoint-1"


class CheckpointError(InputError):
    """A checkpoint is missing, truncated, corrupted, of another model, or unsafe to load."""


def identify_file(path: str | Path) -> str:
    """What ``path`` holds, from its first bytes: ``"missing"``, ``"folder"``, ``"empty"``, ``"pamm-weights"``,
    ``"pamm-state"`` (a training state written by :func:`save_state`), ``"safetensors"`` (not ours),
    ``"torch"`` (a ``torch.save`` zip or pickle file) or ``"unknown"``."""
    path = Path(path)
    if path.is_dir():
        return "folder"
    if not path.is_file():
        return "missing"
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return "unknown"
    if not head:
        return "empty"
    n = int.from_bytes(head[:4], "little")
    if 0 < n <= len(head) - 4:
        try:
            header = json.loads(head[4 : 4 + n])
        except ValueError:
            header = None
        if isinstance(header, dict) and header.get("format") == FORMAT and "sha256" in header:
            return "pamm-state"
    n = int.from_bytes(head[:8], "little")
    if 1 < n and head[8:9] == b"{":
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            return "pamm-weights" if meta.get("format") == FORMAT else "safetensors"
        except Exception:  # noqa: BLE001 - a damaged header: not a readable safetensors file
            pass
    if head[:2] == b"PK" or head[:1] == b"\x80" or zipfile.is_zipfile(path):
        return "torch"
    return "unknown"


def _not_weights(path: Path) -> str | None:
    """Why ``path`` cannot be a weights file, for a file that is something else; None when it may be one."""
    kind = identify_file(path)
    if kind == "missing":
        return f"checkpoint {path} does not exist"
    if kind == "folder":
        best = path / "checkpoints" / "best.safetensors"
        hint = f" (its best checkpoint is {best})" if best.is_file() else ""
        return f"{path} is a folder, not a checkpoint file; expected a weights file (.safetensors){hint}"
    if kind == "pamm-state":
        return (
            f"{path} is a pamm training state (optimizer and RNG states for --resume), not a weights file; "
            f"the weights are in {_weights_beside(path)}"
        )
    if kind == "torch":
        return (
            f"{path} is a PyTorch pickle checkpoint, not a pamm weights file (.safetensors); convert the "
            f"authors' checkpoints with `pamm convert-official`"
        )
    return None


def _weights_beside(state_path: Path) -> Path:
    name = state_path.name
    stem = name[: -len(".state.pt")] if name.endswith(".state.pt") else state_path.stem
    return state_path.with_name(stem + ".safetensors")


def _digest(tensors: dict[str, Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)  # hashed in place (a memoryview), no copy
    return h.hexdigest()


def _weights_writer(path: Path, state_dict: dict[str, Tensor], cfg: Config, extra: dict[str, Any] | None):
    """``write(tmp)`` for a weights file (see :func:`save_weights`)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(
            f"refusing to write {path}: non-finite values in {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}"
        )
    meta = {
        "format": FORMAT,
        "config": yaml.safe_dump(config_to_dict(cfg), sort_keys=False),
        "sha256": _digest(tensors),
        "extra": json.dumps(extra or {}),
    }
    return lambda tmp: save_file(tensors, tmp, metadata=meta)


def save_weights(path: Path, state_dict: dict[str, Tensor], cfg: Config, extra: dict[str, Any] | None = None) -> None:
    """Save a model state dict as safetensors with the config, a content digest and ``extra`` in its metadata.

    Refuses (CheckpointError) to write non-finite floating-point weights."""
    atomic_write(Path(path), _weights_writer(Path(path), state_dict, cfg, extra))


def save_checkpoint(
    weights_path: Path,
    state_path: Path,
    state_dict: dict[str, Tensor],
    cfg: Config,
    extra: dict[str, Any],
    state: dict[str, Any],
) -> None:
    """Write a checkpoint, weights and training state, all or nothing: if either cannot be written (disk full,
    non-finite weights) neither file is created or changed."""
    write_weights = _weights_writer(Path(weights_path), state_dict, cfg, extra)
    write_state = _state_writer(state)
    with AtomicGroup() as group:
        group.write(weights_path, write_weights)
        group.write(state_path, write_state)


def link_or_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` a copy of the finished file ``src``, atomically: a hard link where the file system allows (no
    bytes written twice), else a copy."""
    import shutil

    def write(tmp: str) -> None:
        os.unlink(tmp)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)

    atomic_write(Path(dst), write)


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    from safetensors import safe_open

    path = Path(path)
    problem = _not_weights(path)
    if problem:
        raise CheckpointError(problem)
    if path.stat().st_size < 8:
        raise CheckpointError(f"checkpoint {path} is truncated ({path.stat().st_size} bytes)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - any parse failure means a damaged file
        raise CheckpointError(f"checkpoint {path} is damaged or not a safetensors file: {e}") from None
    return tensors, meta


def read_checkpoint_config(path: Path) -> Config:
    """The experiment config stored in a weights file (read from its header: no tensor is loaded), with the
    default runtime settings (:func:`~pamm.config.config_from_checkpoint`)."""
    return read_checkpoint_metadata(path)[0]


def read_checkpoint_metadata(path: Path) -> tuple[Config, dict[str, Any]]:
    """(config, extra) stored in a weights file, read from its header (no tensor is loaded, nothing verified)."""
    from safetensors import safe_open

    path = Path(path)
    problem = _not_weights(path)
    if problem:
        raise CheckpointError(problem)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"checkpoint {path} is damaged or not a safetensors file: {e}") from None
    try:
        extra = json.loads(meta.get("extra", "{}"))
    except ValueError:
        raise CheckpointError(f"checkpoint {path} is damaged: its metadata is not valid JSON") from None
    return _config_from_meta(meta, path), extra


def _config_from_meta(meta: dict[str, str], path: Path) -> Config:
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a pamm checkpoint (format {meta.get('format')!r}, expected {FORMAT!r})")
    try:
        return config_from_checkpoint(yaml.safe_load(meta["config"]))
    except (ConfigError, KeyError, yaml.YAMLError) as e:
        raise CheckpointError(f"{path}: stored config is invalid: {e}") from None


def load_weights(path: Path, verify: bool = True) -> tuple[dict[str, Tensor], Config, dict[str, Any]]:
    """Read a weights file: (state dict, config, extra). ``verify`` checks the content digest."""
    tensors, meta = _read_safetensors(Path(path))
    cfg = _config_from_meta(meta, Path(path))
    if verify and meta.get("sha256") != _digest(tensors):
        raise CheckpointError(f"checkpoint {path} is corrupted: content digest does not match its metadata")
    return tensors, cfg, json.loads(meta.get("extra", "{}"))


_MAX_NAMED = 3  # tensors named per kind of mismatch; the rest are counted


def config_differences(stored: Config, cfg: Config) -> list[str]:
    """The settings that shape a model and differ between two configs, as ``key stored vs cfg`` (the model
    section, the dataset and the tasks)."""

    def flat(d: dict, prefix: str) -> dict[str, Any]:
        out = {}
        for k, v in d.items():
            out.update(
                flat(v, f"{prefix}{k}.") if isinstance(v, dict) and k != "head_bias_init" else {f"{prefix}{k}": v}
            )
        return out

    a = {
        "data.dataset": stored.data.dataset,
        "data.tasks": stored.data.task_list,
        **flat(config_to_dict(stored.model), "model."),
    }
    b = {
        "data.dataset": cfg.data.dataset,
        "data.tasks": cfg.data.task_list,
        **flat(config_to_dict(cfg.model), "model."),
    }
    keys = sorted(set(a) | set(b), key=lambda k: (_SHAPING.index(k) if k in _SHAPING else len(_SHAPING), k))
    return [f"{k} {a.get(k)} vs {b.get(k)}" for k in keys if a.get(k) != b.get(k)]


_SHAPING = [
    "data.dataset",
    "data.tasks",
    "model.backbone.name",
    "model.decoder",
    "model.dim",
    "model.d_state",
    "model.expand",
    "model.experts",
    "model.num_experts",
    "model.expert_rank",
    "model.expert_kernel",
    "model.priors",
    "model.x_experts",
]
"""Settings listed first when two configs differ: those that change the model's tensors the most."""


def _listed(names: list[str], describe=str, limit: int = _MAX_NAMED) -> str:
    shown = ", ".join(describe(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_state_dict_fits(
    model: torch.nn.Module,
    state: dict[str, Tensor],
    source: str,
    stored_cfg: Config | None = None,
    cfg: Config | None = None,
) -> None:
    """Raise CheckpointError, in one line, if ``state`` does not fit ``model``: first which model the checkpoint
    holds against the config's (``stored_cfg`` vs ``cfg``: names and differing settings), then how many tensors are
    of another shape, missing or unexpected, a few named."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape))
    if not (missing or unexpected or shapes):
        return
    head = f"{source} does not fit this model"
    if stored_cfg is not None and cfg is not None:
        differences = config_differences(stored_cfg, cfg)
        detail = f" (checkpoint vs config: {_listed(differences, limit=6)})" if differences else ""
        head = (
            f"{source} is a {stored_cfg.name} checkpoint, the config is {cfg.name}: the model does not fit{detail}"
            if stored_cfg.name != cfg.name
            else f"{source} does not fit the model of config {cfg.name}{detail}"
        )
    parts = []
    if shapes:
        parts.append(
            f"{len(shapes)} tensor(s) of another shape ("
            + _listed(shapes, lambda k: f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}")
            + ")"
        )
    if missing:
        parts.append(f"{len(missing)} missing ({_listed(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({_listed(unexpected)})")
    raise CheckpointError(f"{head}; " + "; ".join(parts))


def load_model(path: Path, device: str | torch.device = "cpu", cfg: Config | None = None):
    """Rebuild the model stored in a weights file (its own config unless ``cfg`` is given; heads and label space
    from the dataset spec stored with it, so no dataset folder is needed) on ``device``.

    Returns (model in eval mode, config)."""
    from ..models import build_model

    state, stored, extra = load_weights(Path(path))
    cfg = cfg or stored
    spec = stored_dataset_spec(extra, path)
    if cfg is not stored:  # a mismatch is found on a model without memory, before allocating the real one
        with torch.device("meta"):
            skeleton = build_model(cfg, load_backbone_weights=False, spec=spec)
        check_state_dict_fits(skeleton, state, f"checkpoint {path}", stored, cfg)
        del skeleton
    model = build_model(cfg, load_backbone_weights=False, spec=spec)
    check_state_dict_fits(model, state, f"checkpoint {path}", stored, cfg)
    model.load_state_dict(state)
    return model.to(device).eval(), cfg


def stored_dataset_spec(extra: dict[str, Any], path: Path) -> DatasetSpec | None:
    """The label space a checkpoint's model was trained with (its ``extra["dataset_spec"]``, written by the
    trainer), or None for checkpoints that predate it (their config's benchmark dataset says it)."""
    if "dataset_spec" not in extra:
        return None
    try:
        return DatasetSpec.from_dict(extra["dataset_spec"])
    except ValueError as e:
        raise CheckpointError(f"checkpoint {path}: stored dataset spec is invalid: {e}") from None


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Save a training state (optimizer, scheduler, RNG states, counters: tensors and plain Python values) with
    a digest, atomically."""
    atomic_write(Path(path), _state_writer(state))


def _state_writer(state: dict[str, Any]):
    """``write(tmp)`` for a training state file: a 4-byte header length, the JSON header (format, digest, size),
    then the ``torch.save`` payload (written from its buffer, never copied)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getbuffer()
    header = json.dumps(
        {"format": FORMAT, "sha256": hashlib.sha256(payload).hexdigest(), "size": len(payload)}
    ).encode()

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(len(header).to_bytes(4, "little") + header)
            f.write(payload)

    return write


def load_state(path: Path, verify: bool = True) -> dict[str, Any]:
    """Load a training state written by :func:`save_state`; only tensors and plain data are unpickled. ``verify``
    checks the content digest."""
    path = Path(path)
    kind = identify_file(path)
    if kind == "missing":
        raise CheckpointError(f"training state {path} does not exist")
    if kind == "folder":
        raise CheckpointError(f"{path} is a folder, not a training state file (.state.pt)")
    if kind == "pamm-weights":
        raise CheckpointError(f"{path} is a weights file, not a training state file (.state.pt)")
    raw = path.read_bytes()
    try:
        n = int.from_bytes(raw[:4], "little")
        header = json.loads(raw[4 : 4 + n])
        payload = memoryview(raw)[4 + n :]
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"training state {path} is damaged: {e}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT or header.get("size") != len(payload):
        raise CheckpointError(f"training state {path} is truncated or not a pamm state file")
    if verify and hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        raise CheckpointError(f"training state {path} is corrupted: digest mismatch")
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"training state {path} cannot be loaded safely: it holds pickled Python objects "
            f"other than tensors and plain data (refused: loading them could run code)"
        ) from None
    except Exception as e:  # noqa: BLE001 - any other reader failure is a damaged file
        raise CheckpointError(f"training state {path} cannot be loaded safely: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__
