"""Training loop: one process or DDP under torchrun; exact resume; guarded against non-finite steps.

``Trainer(cfg, run_dir).fit()`` trains ``cfg`` and writes into ``run_dir``:
``config.yaml`` (resolved config), ``checkpoints/`` (``step-XXXXXXX.safetensors`` + ``.state.pt``, the newest two
kept, and ``best.*``), TensorBoard events, ``train.log`` and, after the final evaluation, ``metrics.json``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader, Dataset, Sampler

from ..config import Config, config_to_dict
from ..data import build_dataset, build_transforms, collate
from ..losses import LOCAL, DistributedReducer, MultiTaskLoss
from ..models import build_model
from ..tasks import dataset_spec
from .checkpoint import CheckpointError, check_state_dict_fits, load_state, load_weights, save_state, save_weights
from .distributed import DistInfo, all_reduce_sum, barrier, broadcast_object, init_distributed, sync_batchnorm
from .evaluator import evaluate, write_metrics

__all__ = ["Trainer", "TrainingStopped", "poly_lr", "EpochSampler", "find_resume_checkpoint", "autocast_dtype",
           "weight_decay_groups"]


class TrainingStopped(RuntimeError):
    """Training was stopped on purpose (too many non-finite steps)."""


def poly_lr(step: int, iterations: int, power: float, warmup: int = 0) -> float:
    """Learning-rate factor: linear warm-up, then ``(1 - step / iterations) ** power``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    return max(0.0, 1.0 - step / iterations) ** power


def weight_decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Optimizer parameter groups: every parameter decayed by ``weight_decay`` except those the model names in
    ``no_weight_decay()`` (timm's convention), which get 0."""
    skip_names = model.no_weight_decay()
    decay, skip = [], []
    for name, p in model.named_parameters():
        (skip if name in skip_names else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": skip, "weight_decay": 0.0}]


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of an ``amp`` setting on ``device`` (None = full precision)."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    return {"auto": torch.bfloat16, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


class EpochSampler(Sampler):
    """Deterministic, resumable batch sampler for one process of ``world`` (drop-last).

    The global batch of step s is ``perm_e[i*B*W : (i+1)*B*W]`` with e = s // steps_per_epoch, i = s % steps_per_epoch
    and ``perm_e`` a permutation drawn from ``default_rng([seed, e])``; rank r takes its r-th slice of B. It yields
    lists of ``(epoch, index)`` keys (the epoch selects the sample's augmentation), starting at ``start_step``.
    """

    def __init__(self, n: int, batch_size: int, world: int, rank: int, seed: int, start_step: int = 0):
        self.n, self.batch, self.world, self.rank, self.seed = n, batch_size, world, rank, seed
        self.steps_per_epoch = n // (batch_size * world)
        if self.steps_per_epoch == 0:
            raise ValueError(f"the training split has {n} images, fewer than one global batch "
                             f"({batch_size} x {world} processes)")
        self.start_step = start_step

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while True:
            epoch, i = divmod(step, self.steps_per_epoch)
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            g = self.batch * self.world
            for j in range(i, self.steps_per_epoch):
                chunk = perm[j * g + self.rank * self.batch: j * g + (self.rank + 1) * self.batch]
                yield [(epoch, int(k)) for k in chunk]
            step = (epoch + 1) * self.steps_per_epoch

    def __len__(self) -> int:  # infinite; DataLoader only needs it for len()
        return 2**62


class _EpochKeyed(Dataset):
    """Dataset view addressed by ``(epoch, index)`` keys."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        self.dataset.set_epoch(epoch)
        return self.dataset[index]


def _checkpoint_steps(ckpt_dir: Path) -> list[int]:
    steps = []
    for p in ckpt_dir.glob("step-*.safetensors"):
        with contextlib.suppress(ValueError):
            steps.append(int(p.name[5:-12]))
    return sorted(steps, reverse=True)


def find_resume_checkpoint(run_dir: Path, log=print) -> tuple[Path, Path] | None:
    """Newest checkpoint of ``run_dir`` whose weights and training state both verify; damaged ones are reported
    and skipped (falling back to the previous one)."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    for step in _checkpoint_steps(ckpt_dir):
        weights = ckpt_dir / f"step-{step:07d}.safetensors"
        state = ckpt_dir / f"step-{step:07d}.state.pt"
        try:
            load_weights(weights)
            load_state(state)
        except CheckpointError as e:
            log(f"warning: skipping damaged checkpoint of step {step}: {e}")
            continue
        return weights, state
    return None


def _rng_state() -> dict:
    # the legacy global numpy RNG is saved too: third-party code (timm, user transforms) may draw from it
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}  # noqa: NPY002
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state_to_plain(state):
    """numpy's RNG state tuple -> plain types that ``torch.load(weights_only=True)`` accepts."""
    name, keys, pos, has_gauss, gauss = state
    return [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(gauss)]


def _plain_to_numpy_state(state):
    name, keys, pos, has_gauss, gauss = state
    return (name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss)


class Trainer:
    """Train a :class:`~pamm.config.Config` into ``run_dir``.

    Args:
        cfg: the experiment.
        run_dir: output folder (created; must be writable).
        resume: continue from the newest valid checkpoint in ``run_dir`` (error if there is none).
        device: ``"cuda"``, ``"cpu"`` or None (CUDA when available).
        progress: show a tqdm bar on the main process.
        log: where messages go (main process only).
    """

    def __init__(self, cfg: Config, run_dir: str | os.PathLike, resume: bool = False, device: str | None = None,
                 progress: bool = True, log=print):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.dist: DistInfo = init_distributed(device)
        self.device = self.dist.device
        self.progress = progress and self.dist.is_main
        self._log = log
        self.resume = resume
        if self.dist.is_main:
            self._prepare_run_dir()
        barrier()

    # ---- setup ---------------------------------------------------------------------------------------------

    def log(self, msg: str) -> None:
        if self.dist.is_main:
            self._log(msg)
            with open(self.run_dir / "train.log", "a") as f:
                f.write(msg + "\n")

    def _prepare_run_dir(self) -> None:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            probe = self.run_dir / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise PermissionError(f"run folder {self.run_dir} is not writable: {e}") from None
        cfg_path = self.run_dir / "config.yaml"
        if self.resume:
            return
        if (self.run_dir / "checkpoints").exists() and any((self.run_dir / "checkpoints").iterdir()):
            raise FileExistsError(f"{self.run_dir} already holds checkpoints; pass --resume to continue that run "
                                  f"or choose another --out folder")
        cfg_path.write_text(yaml.safe_dump(config_to_dict(self.cfg), sort_keys=False))

    def _seed(self) -> None:
        seed = self.cfg.train.seed
        random.seed(seed)
        np.random.seed(seed)  # noqa: NPY002 - seeds third-party users of the global RNG
        torch.manual_seed(seed)
        if self.device.type == "cpu":
            torch.set_flush_denormal(self.cfg.train.flush_denormal)
        if self.cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=self.device.type == "cuda")
            torch.backends.cudnn.benchmark = False
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        elif self.device.type == "cuda":
            # fixed input sizes: let cuDNN time its algorithms once (its bf16 heuristics pick slow non-tensor-core
            # kernels for the 9x9 expert convolution otherwise)
            torch.backends.cudnn.benchmark = True

    def _build(self) -> None:
        cfg = self.cfg
        self._seed()
        self.tasks = cfg.data.task_list
        spec = dataset_spec(cfg.data.dataset)
        train_tf = build_transforms(train=True, size=tuple(cfg.data.train_size), multiple=cfg.model.backbone.patch_size,
                                    scale_range=tuple(cfg.data.scale_range))
        self.train_set = build_dataset(cfg.data.dataset, cfg.data.root, "train", self.tasks, train_tf,
                                       seed=cfg.train.seed)
        model = build_model(cfg, load_backbone_weights=not self.resume)
        # the weights above are identical on every process; from here on each process draws its own router
        # noise and drop-path masks
        torch.manual_seed(cfg.train.seed + 1_000_003 * self.dist.rank)
        model.to(self.device)
        if self.device.type == "cuda" and cfg.runtime.channels_last:
            model.to(memory_format=torch.channels_last)
        if self.dist.distributed:
            model = sync_batchnorm(model, self.device)
        if cfg.train.compile:
            for stage in model.stages:  # the decoder's stages; the scan's autograd Function stays eager
                stage.compile()
        self.model = model
        self.net = (torch.nn.parallel.DistributedDataParallel(model, device_ids=[self.device.index]
                                                              if self.device.type == "cuda" else None)
                    if self.dist.distributed else model)
        self.loss_fn = MultiTaskLoss(self.tasks, cfg.train.loss_weights, spec.edge_pos_weight,
                                     cfg.train.load_balancing,
                                     reducer=DistributedReducer() if self.dist.distributed else LOCAL)
        groups = weight_decay_groups(model, cfg.train.weight_decay)
        if cfg.train.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(groups, lr=cfg.train.lr, momentum=0.9)
        else:
            opt_cls = torch.optim.AdamW if cfg.train.optimizer == "adamw" else torch.optim.Adam
            self.optimizer = opt_cls(groups, lr=cfg.train.lr)
        t = cfg.train
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: poly_lr(s, t.iterations, t.poly_power, t.warmup_iters))
        self.amp_dtype = autocast_dtype(cfg.train.amp, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp_dtype == torch.float16 else None
        self.step = 0
        self.nonfinite = 0
        self.best_score = -math.inf
        self.reference: dict | None = None
        if self.resume:
            self._restore()

    def _restore(self) -> None:
        found = broadcast_object(find_resume_checkpoint(self.run_dir, self.log) if self.dist.is_main else None)
        if found is None:
            raise CheckpointError(f"--resume: no valid checkpoint in {self.run_dir / 'checkpoints'}")
        weights, state_path = found
        tensors, stored_cfg, _ = load_weights(weights)
        check_state_dict_fits(self.model, tensors, f"checkpoint {weights}")
        self.model.load_state_dict(tensors)
        state = load_state(state_path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        rng = state["rng"][min(self.dist.rank, len(state["rng"]) - 1)]
        rng = dict(rng, numpy=_plain_to_numpy_state(rng["numpy"]))
        _set_rng_state(rng)
        self.step = int(state["step"])
        self.nonfinite = int(state["nonfinite"])
        self.best_score = float(state["best_score"])
        self.reference = json.loads(state["reference"]) if state.get("reference") else None
        self.log(f"resumed from {weights.name} at step {self.step}")

    # ---- checkpoints ---------------------------------------------------------------------------------------

    def _gather_rng(self) -> list[dict]:
        mine = _rng_state()
        mine["numpy"] = _numpy_state_to_plain(mine["numpy"])
        if not self.dist.distributed:
            return [mine]
        out = [None] * self.dist.world_size
        torch.distributed.all_gather_object(out, mine)
        return out

    def save_checkpoint(self, best: bool = False) -> None:
        rng = self._gather_rng()
        if not self.dist.is_main:
            return
        ckpt_dir = self.run_dir / "checkpoints"
        name = f"step-{self.step:07d}"
        extra = {"step": self.step, "tasks": self.tasks}
        save_weights(ckpt_dir / f"{name}.safetensors", self.model.state_dict(), self.cfg, extra)
        state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "rng": rng, "step": self.step, "nonfinite": self.nonfinite, "best_score": self.best_score,
                 "reference": json.dumps(self.reference) if self.reference else ""}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        save_state(ckpt_dir / f"{name}.state.pt", state)
        for old in _checkpoint_steps(ckpt_dir)[2:]:  # keep the newest two
            for suffix in (".safetensors", ".state.pt"):
                (ckpt_dir / f"step-{old:07d}{suffix}").unlink(missing_ok=True)
        if best:
            save_weights(ckpt_dir / "best.safetensors", self.model.state_dict(), self.cfg, extra)

    # ---- loop ----------------------------------------------------------------------------------------------

    def _loader(self) -> DataLoader:
        sampler = EpochSampler(len(self.train_set), self.cfg.train.batch_size, self.dist.world_size, self.dist.rank,
                               self.cfg.train.seed, start_step=self.step)
        workers = self.cfg.data.workers
        return DataLoader(_EpochKeyed(self.train_set), batch_sampler=sampler, num_workers=workers,
                          collate_fn=collate, pin_memory=self.device.type == "cuda",
                          persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0),
                          prefetch_factor=4 if workers else None)

    def _to_device(self, batch: dict) -> dict:
        return {k: (v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}

    def train_step(self, batch: dict) -> dict[str, float] | None:
        """One optimisation step; returns the logged losses, or None when the step was skipped as non-finite."""
        cfg = self.cfg.train
        batch = self._to_device(batch)
        images = batch["image"]
        if self.device.type == "cuda" and self.cfg.runtime.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            outputs, routing = self.net(images, return_routing=True)
        total, losses = self.loss_fn({k: v.float() for k, v in outputs.items()}, batch, routing)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(total).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            total.backward()
        params = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        finite = torch.isfinite(total.detach()) & torch.isfinite(grad_norm)
        finite = all_reduce_sum(finite.float()) == self.dist.world_size
        self.step += 1
        if not bool(finite):
            self.optimizer.zero_grad(set_to_none=True)
            self.nonfinite += 1
            with warnings.catch_warnings():  # the schedule follows the step count, updates or not
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                self.scheduler.step()
            if self.scaler is not None:
                self.scaler.update()
            self.log(f"warning: step {self.step}: non-finite loss or gradient, update skipped "
                     f"({self.nonfinite}/{cfg.max_nonfinite_steps})")
            if self.nonfinite > cfg.max_nonfinite_steps:
                raise TrainingStopped(f"training stopped at step {self.step}: {self.nonfinite} steps had a "
                                      f"non-finite loss or gradient (train.max_nonfinite_steps="
                                      f"{cfg.max_nonfinite_steps}); lower the learning rate or check the data")
            return None
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        names = [*losses, "total"]
        values = torch.stack([*(v.detach().float() for v in losses.values()), total.detach().float()])
        values = all_reduce_sum(values) / self.dist.world_size  # each process holds world x its share of the mean
        out = dict(zip(names, values.tolist()))
        out["grad_norm"] = float(grad_norm)
        return out

    def _score(self, metrics: dict) -> float:
        """Selection score for the best checkpoint: mean relative improvement of each task's main metric over
        the run's first evaluation (or Δm against ``eval.single_task`` when given)."""
        from ..metrics import main_metric

        ref = self.cfg.eval.single_task or {t: main_metric(t, self.reference[t])[0] for t in self.tasks}
        gains = []
        for t in self.tasks:
            value, higher = main_metric(t, metrics[t])
            base = ref[t]
            gains.append((value - base) / max(abs(base), 1e-12) * (1 if higher else -1))
        return float(np.mean(gains))

    def _evaluate(self, writer) -> dict:
        metrics = evaluate(self.model, self.cfg, device=self.device, dist=self.dist, progress=self.progress,
                           amp_dtype=self.amp_dtype)
        if self.reference is None:
            self.reference = metrics
        if self.dist.is_main:
            from ..metrics.multitask import TASK_METRICS

            parts = []
            for t in self.tasks:
                key = TASK_METRICS[t][0]
                value = float(metrics[t][key])
                parts.append(f"{t} {key} {value:.4g}")
                if writer is not None:
                    writer.add_scalar(f"val/{t}", value, self.step)
            self.log(f"step {self.step}: val " + ", ".join(parts))
        return metrics

    def fit(self) -> dict:
        """Train to ``train.iterations`` steps, evaluate, and return the final metrics."""
        self._build()
        cfg = self.cfg.train
        writer = None
        if self.dist.is_main:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(self.run_dir))
            n_params = sum(p.numel() for p in self.model.parameters())
            self.log(f"training {self.cfg.name}: {len(self.train_set)} images, {n_params / 1e6:.1f} M parameters, "
                     f"{self.dist.world_size} process(es) on {self.device}, steps {self.step}->{cfg.iterations}")
        self.net.train()
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.iterations, initial=self.step, dynamic_ncols=True, desc="train")
        metrics: dict = {}
        loader_iter = iter(self._loader())
        tic = time.time()
        try:
            while self.step < cfg.iterations:
                logged = self.train_step(next(loader_iter))
                if bar is not None:
                    bar.update(1)
                    if logged:
                        bar.set_postfix(loss=f"{logged['total']:.3f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
                if logged and writer is not None and (self.step % max(cfg.log_every, 1) == 0 or self.step == 1):
                    for k, v in logged.items():
                        writer.add_scalar(f"train/{k}", v, self.step)
                    writer.add_scalar("train/lr", self.scheduler.get_last_lr()[0], self.step)
                    writer.add_scalar("train/images_per_s", cfg.batch_size * self.dist.world_size * cfg.log_every
                                      / max(time.time() - tic, 1e-9), self.step)
                    tic = time.time()
                last = self.step == cfg.iterations
                is_best = False
                if (cfg.eval_every and self.step % cfg.eval_every == 0) or last:
                    metrics = self._evaluate(writer)
                    score = self._score(metrics)
                    is_best = score > self.best_score
                    if is_best:
                        self.best_score = score
                    self.net.train()
                if is_best or last or (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0):
                    self.save_checkpoint(best=is_best)
        finally:
            if bar is not None:
                bar.close()
            if writer is not None:
                writer.close()
        if self.dist.is_main:
            write_metrics(self.run_dir / "metrics.json", metrics, self.cfg, extra={"step": self.step})
        return metrics
