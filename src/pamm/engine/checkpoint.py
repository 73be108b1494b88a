"""Checkpoints: model weights as safetensors (with the experiment config in their metadata) and a small training
state file; both written atomically (temporary file, fsync, rename) and verified on load.

A run folder holds ``checkpoints/last.safetensors`` + ``checkpoints/last.state.pt`` (and ``best.*``); the weights
file alone is enough to rebuild the model (``load_model``).
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from ..config import Config, ConfigError, config_from_checkpoint, config_to_dict
from ..fs import atomic_write, atomic_write_bytes

__all__ = [
    "CheckpointError", "save_weights", "load_weights", "read_checkpoint_config", "load_model", "save_state",
    "load_state", "FORMAT",
]  # fmt: skip

FORMAT = "pamm-checkpoint-1"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupted, of another model, or unsafe to load."""


def _digest(tensors: dict[str, Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_weights(path: Path, state_dict: dict[str, Tensor], cfg: Config, extra: dict[str, Any] | None = None) -> None:
    """Save a model state dict as safetensors with the config, a content digest and ``extra`` in its metadata.

    Refuses (CheckpointError) to write non-finite floating-point weights."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"refusing to write {path}: non-finite values in {', '.join(bad[:5])}"
                              f"{' ...' if len(bad) > 5 else ''}")
    meta = {"format": FORMAT, "config": yaml.safe_dump(config_to_dict(cfg), sort_keys=False),
            "sha256": _digest(tensors), "extra": json.dumps(extra or {})}
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=meta))


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
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
    """The experiment config stored in a weights file (with the default runtime settings:
    :func:`~pamm.config.config_from_checkpoint`)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"checkpoint {path} is damaged or not a safetensors file: {e}") from None
    return _config_from_meta(meta, path)


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


def check_state_dict_fits(model: torch.nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Raise CheckpointError listing every missing, unexpected or mis-shaped tensor."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
              for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        lines = [f"{source} does not fit this model:"]
        lines += [f"  shape mismatch {s}" for s in shapes]
        lines += [f"  missing {k}" for k in missing[:20]] + ([f"  ... {len(missing) - 20} more missing"]
                                                              if len(missing) > 20 else [])
        lines += [f"  unexpected {k}" for k in unexpected[:20]] + ([f"  ... {len(unexpected) - 20} more unexpected"]
                                                                    if len(unexpected) > 20 else [])
        raise CheckpointError("\n".join(lines))


def load_model(path: Path, device: str | torch.device = "cpu", cfg: Config | None = None):
    """Rebuild the model stored in a weights file (its own config unless ``cfg`` is given) on ``device``.

    Returns (model in eval mode, config)."""
    from ..models import build_model

    state, stored, _ = load_weights(Path(path))
    cfg = cfg or stored
    model = build_model(cfg, load_backbone_weights=False)
    check_state_dict_fits(model, state, f"checkpoint {path}")
    model.load_state_dict(state)
    return model.to(device).eval(), cfg


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Save a training state (optimizer, scheduler, RNG states, counters: tensors and plain Python values) with
    a digest, atomically."""
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    header = json.dumps({"format": FORMAT, "sha256": hashlib.sha256(payload).hexdigest(),
                         "size": len(payload)}).encode()
    atomic_write_bytes(Path(path), len(header).to_bytes(4, "little") + header + payload)


def load_state(path: Path) -> dict[str, Any]:
    """Load a training state written by :func:`save_state`; only tensors and plain data are unpickled."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"training state {path} does not exist")
    raw = path.read_bytes()
    try:
        n = int.from_bytes(raw[:4], "little")
        header = json.loads(raw[4: 4 + n])
        payload = raw[4 + n:]
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"training state {path} is damaged: {e}") from None
    if header.get("format") != FORMAT or header.get("size") != len(payload):
        raise CheckpointError(f"training state {path} is truncated or not a pamm state file")
    if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        raise CheckpointError(f"training state {path} is corrupted: digest mismatch")
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - includes refused pickles
        raise CheckpointError(f"training state {path} cannot be loaded safely: {e}") from None
