"""Evaluation over a whole split (pamm-notes §4), sharded over processes with exactly merged metrics, and the
trivial constant-predictor baselines."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..config import Config
from ..data import LoadGuard, MultiTaskDataset, build_transforms, collate
from ..errors import InputError
from ..fs import atomic_write_bytes
from ..metrics import build_meters
from ..metrics.edges import default_edge_workers
from ..models.meta import ModelMeta
from ..tasks import label_space_difference, postprocess
from .distributed import DistInfo, all_reduce_arrays
from .loading import next_batch, prepare_split, shutdown_workers, worker_init

__all__ = [
    "evaluate",
    "evaluate_checkpoint",
    "write_metrics",
    "format_table",
    "compute_baselines",
    "crop_valid",
    "autocast_dtype",
    "eval_transform",
    "EvaluationStopped",
]


class EvaluationStopped(Exception):
    """An evaluation was abandoned because its ``stop`` callback asked for it (a signal during training)."""


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of an ``amp`` setting (``train.amp``) on ``device`` (None = full precision)."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    return {"auto": torch.bfloat16, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def eval_transform(cfg: Config):
    """The evaluation transform of ``cfg``'s model (its metadata's, ``ModelMeta.transforms()``): normalise and pad
    to ``data.test_size`` (never resize)."""
    return ModelMeta.from_config(cfg).transforms()


def crop_valid(t: torch.Tensor, valid: tuple[int, int, int, int]) -> torch.Tensor:
    """Crop the last two dims of ``t`` to the (top, left, height, width) region of the original image."""
    top, left, h, w = valid
    return t[..., top : top + h, left : left + w]


def edge_workers(cfg: Config, images: int) -> int:
    """``eval.edge_workers``, with -1 (automatic) resolved for ``images`` images scored by this process among the
    processes of this machine (torchrun's ``LOCAL_WORLD_SIZE``)."""
    if cfg.eval.edge_workers >= 0:
        return cfg.eval.edge_workers
    return default_edge_workers(images, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def _loader(cfg: Config, dataset: MultiTaskDataset, dist: DistInfo | None, max_images: int | None):
    indices = list(range(len(dataset) if max_images is None else min(max_images, len(dataset))))
    if dist is not None and dist.distributed:
        indices = indices[dist.rank :: dist.world_size]  # no padding: every image is scored exactly once
    subset = torch.utils.data.Subset(LoadGuard(dataset), indices)
    workers = min(cfg.data.workers, len(indices))
    return DataLoader(
        subset,
        batch_size=cfg.eval.batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate,
        worker_init_fn=worker_init if workers else None,
        generator=torch.Generator().manual_seed(0),
    ), len(indices)


@torch.no_grad()  # not inference_mode: tensors a module caches while evaluating (scan orders) are reused in training
def evaluate(
    model: torch.nn.Module,
    cfg: Config,
    device: torch.device | str = "cpu",
    dist: DistInfo | None = None,
    progress: bool = False,
    amp_dtype: torch.dtype | None = None,
    split: str = "val",
    max_images: int | None = None,
    dataset: MultiTaskDataset | None = None,
    stop: Callable[[], bool] | None = None,
) -> dict:
    """Score ``model`` on ``split``; metrics pooled over the whole split (all processes) per task.

    Args:
        dataset: the split's dataset with the evaluation transform (default: built from ``cfg`` and validated
            first, see :func:`pamm.engine.loading.prepare_split`).
        max_images: score only the first N images (N >= 1).
        stop: called after every batch; when it returns True the evaluation is abandoned
            (:class:`EvaluationStopped`). Single process only: under DDP every process must finish.

    Returns ``{task: {metric: value}}`` plus ``"images"`` (count) and, when samples were left out as damaged,
    ``"skipped_samples"`` (id → what is wrong)."""
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be >= 1, got {max_images}")
    device = torch.device(device)
    data_spec = cfg.data.spec
    meta = getattr(model, "meta", None)
    spec = meta.spec if meta is not None else data_spec  # the label space the model was trained with
    tasks = list(meta.tasks) if meta is not None else cfg.data.task_list
    difference = label_space_difference(spec, data_spec, tasks)
    if difference:
        raise InputError(
            f"the model was trained on another label space than the data in {cfg.data.root} ({difference})"
        )
    if dataset is None:
        dataset = prepare_split(cfg, split, eval_transform(cfg), dist)
    loader, n = _loader(cfg, dataset, dist, max_images)
    meters = build_meters(
        spec,
        tasks,
        edge=cfg.eval.edge,
        edge_workers=edge_workers(cfg, n),
        sal_double_sigmoid=cfg.eval.sal_double_sigmoid,
    )
    was_training = model.training
    model.eval()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc=f"eval {split}", dynamic_ncols=True, leave=False)
    count = 0
    replaced: dict[str, str] = {}
    batches = iter(loader)
    try:
        for _ in range(len(loader)):
            batch = next_batch(batches)
            images = batch["image"].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                outputs = model(images)
            for task in tasks:
                pred = postprocess(task, outputs[task].float()).cpu()
                target = batch[task]
                for i, meta in enumerate(batch["meta"]):
                    meters[task].update(
                        crop_valid(pred[i : i + 1], meta["valid"]), crop_valid(target[i : i + 1], meta["valid"])
                    )
            for meta in batch["meta"]:
                replaced.update(meta.get("replaced", ()))
            count += images.shape[0]
            if bar is not None:
                bar.update(images.shape[0])
            if stop is not None and stop():
                raise EvaluationStopped(f"evaluation of {split} stopped after {count} of {n} images")
    finally:
        shutdown_workers(batches)
        if bar is not None:
            bar.close()
        for meter in meters.values():  # shut down the edge meter's worker pool, if any, now rather than at exit
            close = getattr(meter, "close", None)
            if close is not None:
                close()
        model.train(was_training)
    results: dict[str, Any] = {}  # per task its metrics, then "images" and "skipped_samples"
    for task, meter in meters.items():
        state = all_reduce_arrays(meter.state(), device if device.type == "cuda" else torch.device("cpu"))
        meter.reset()
        meter.merge_state(state)
        results[task] = meter.compute()
    total = all_reduce_arrays({"n": np.array([count], dtype=np.int64)}, device)["n"]
    results["images"] = int(total[0])
    skipped = {**dataset.skipped, **replaced}
    if skipped:
        results["skipped_samples"] = skipped
    return results


def evaluate_checkpoint(
    checkpoint: str | Path,
    cfg: Config | None = None,
    split: str = "val",
    device: torch.device | str | None = None,
    max_images: int | None = None,
    baselines: bool = False,
    progress: bool = False,
) -> tuple[dict, Config]:
    """Load a weights file (its own config unless ``cfg`` is given), validate ``split`` and score it; with
    ``baselines`` also score the constant predictors fitted on the train split.

    Returns (metrics as :func:`evaluate`, with ``"baselines"`` when asked; the config used)."""
    from .checkpoint import load_model, read_checkpoint_config

    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be >= 1, got {max_images}")
    cfg = cfg or read_checkpoint_config(Path(checkpoint))
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, cfg = load_model(Path(checkpoint), device=device, cfg=cfg)
    dataset = prepare_split(cfg, split, eval_transform(cfg), progress=progress)
    metrics = evaluate(
        model,
        cfg,
        device=device,
        progress=progress,
        split=split,
        max_images=max_images,
        amp_dtype=autocast_dtype(cfg.train.amp, device),
        dataset=dataset,
    )
    if baselines:
        metrics["baselines"] = compute_baselines(cfg, split=split, max_images=max_images)
    return metrics, cfg


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def write_metrics(path: Path, metrics: dict, cfg: Config, extra: dict | None = None) -> None:
    """Write ``metrics.json``: the metrics per task, plus the config name and ``extra`` entries."""
    doc = {"config": cfg.name, "dataset": cfg.data.dataset, **(extra or {}), **metrics}
    atomic_write_bytes(Path(path), (json.dumps(_jsonable(doc), indent=2) + "\n").encode())


def format_table(metrics: dict, tasks: list[str]) -> str:
    """A plain-text table of every scalar metric per task (and the baselines when present)."""
    rows = []
    baselines = metrics.get("baselines", {})
    for task in tasks:
        for name, value in metrics.get(task, {}).items():
            if isinstance(value, (int, float)):
                base = baselines.get(task, {}).get(name)
                rows.append((task, name, f"{value:.4f}", "" if base is None else f"{base:.4f}"))
    width = [max(len(r[i]) for r in rows + [("task", "metric", "value", "baseline")]) for i in range(4)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(("task", "metric", "value", "baseline"), width))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, width)) for r in rows]
    return "\n".join(lines)


def _best_constant_normal(normals_sum: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """Unit vector minimising the mean angle to ``samples`` (n, 3): a Fibonacci-sphere search refined by
    a local search, started from the normalised mean."""
    candidates = [normals_sum / max(np.linalg.norm(normals_sum), 1e-12)]
    k = np.arange(2000) + 0.5
    phi = np.arccos(1 - 2 * k / 2000)
    theta = np.pi * (1 + 5**0.5) * k
    candidates += list(np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], 1))
    cands = np.stack(candidates)

    def cost(c):
        return np.degrees(np.arccos(np.clip(samples @ c.T, -1, 1))).mean(0)

    best = cands[np.argmin(cost(cands))]
    step, rng = 0.05, np.random.default_rng(0)
    for _ in range(60):
        jitter = best + step * rng.standard_normal((64, 3))
        jitter /= np.linalg.norm(jitter, axis=1, keepdims=True)
        c = cost(np.vstack([best[None], jitter]))
        best = np.vstack([best[None], jitter])[np.argmin(c)]
        step *= 0.9
    return best


@torch.inference_mode()
def compute_baselines(cfg: Config, split: str = "val", max_images: int | None = None) -> dict:
    """Constant predictors fitted on the train split, scored on ``split`` with the same meters:
    depth = the train mean depth; normals = the single best constant normal; semseg / human_parts = the majority
    class; saliency = the majority label; edges = no boundary anywhere.

    Returns ``{task: metrics}`` plus ``"constants"`` (the fitted values)."""
    tasks = cfg.data.task_list
    transform = build_transforms(train=False, size=None, multiple=1)
    train = prepare_split(cfg, "train", transform)
    depth_sum = depth_n = 0.0
    class_counts: dict[str, np.ndarray] = {}
    normal_sum = np.zeros(3)
    normal_samples = []
    rng = np.random.default_rng(0)
    for i in range(len(train)):
        s = train[i]
        if "depth" in s:
            d = s["depth"][0].numpy()
            depth_sum += float(d[d > 0].sum())
            depth_n += int((d > 0).sum())
        for t in ("semseg", "human_parts", "sal"):
            if t in s:
                lab = s[t].numpy().ravel()
                lab = lab[lab != 255]
                counts = np.bincount(lab, minlength=256)[:255]
                class_counts[t] = class_counts.get(t, 0) + counts
        if "normals" in s:
            n = s["normals"].numpy().reshape(3, -1).T
            n = n[(n != 255).all(1)]
            normal_sum += n.sum(0)
            if len(n):
                normal_samples.append(n[rng.choice(len(n), min(len(n), 500), replace=False)])
    constants = {}
    if "depth" in tasks:
        constants["depth"] = depth_sum / max(depth_n, 1)
    for t, c in class_counts.items():
        constants[t] = int(np.argmax(c))
    if "normals" in tasks:
        constants["normals"] = _best_constant_normal(normal_sum, np.concatenate(normal_samples)).tolist()
    val = prepare_split(cfg, split, transform)
    n = len(val) if max_images is None else min(max_images, len(val))
    meters = build_meters(cfg.data.spec, tasks, edge=cfg.eval.edge, edge_workers=edge_workers(cfg, n))
    for i in range(n):
        s = val[i]
        h, w = s["image"].shape[-2:]
        for t in tasks:
            if t == "depth":
                pred = torch.full((1, h, w), constants["depth"])
            elif t == "normals":
                pred = torch.tensor(constants["normals"], dtype=torch.float32)[None, :, None, None].expand(1, 3, h, w)
            elif t == "edge":
                pred = torch.zeros(1, h, w)
            elif t == "sal":
                pred = torch.full((1, h, w), float(constants["sal"]))
            else:
                pred = torch.full((1, h, w), constants[t], dtype=torch.long)
            meters[t].update(pred, s[t][None])
    out: dict[str, Any] = {t: meters[t].compute() for t in tasks}
    out["constants"] = constants
    return out
