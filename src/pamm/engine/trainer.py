"""Training loop: one process or DDP under torchrun; exact resume; guarded against non-finite steps, signals,
damaged data and full disks.

``Trainer(cfg, run_dir)`` builds everything (validated data, model, optimizer; the run folder locked) and
``.fit()`` trains, so a notebook needs two lines. The run folder (:mod:`pamm.engine.run`) receives
``config.yaml``, ``checkpoints/`` (``step-XXXXXXX.safetensors`` + ``.state.pt``, the newest two kept, and
``best.safetensors``), TensorBoard events, ``train.log`` (messages, losses at ``train.log_every``, evaluations,
phase timings) and, after the final evaluation, ``metrics.json``.

What a user can count on:

- Nothing is written into the run folder before the build succeeded; if training fails before its first step,
  whatever this call created (folder, files) is removed again, and nothing that existed before is touched.
- A folder holding another run is refused (``--resume`` continues it); a folder in use by a live run is refused
  (:class:`~pamm.engine.run.RunLocked`); ``--resume`` with ``train.iterations`` below the run's step is refused
  before anything is changed.
- SIGINT / SIGTERM during :meth:`Trainer.fit` stop at the next step boundary (an evaluation in progress is
  abandoned and redone on resume), write a checkpoint and raise :class:`~pamm.errors.Interrupted`; a second
  signal stops at once.
- A checkpoint (weights + training state) is written all or nothing; a full disk is one
  :class:`~pamm.errors.ResourceError` line naming the file.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import sys
import threading
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader, Dataset, Sampler

from ..config import Config, config_to_dict, pair
from ..data import LoadGuard, build_transforms, collate
from ..errors import InputError, Interrupted, ResourceError, Terminated
from ..fs import atomic_write_text, make_folders
from ..losses import LOCAL, DistributedReducer, MultiTaskLoss
from ..models import PAMM, build_model
from ..tasks import label_space_difference
from .checkpoint import (
    CheckpointError,
    check_state_dict_fits,
    link_or_copy,
    load_state,
    load_weights,
    read_checkpoint_metadata,
    save_checkpoint,
    stored_dataset_spec,
)
from .distributed import (
    DistInfo,
    all_reduce_max,
    all_reduce_sum,
    barrier,
    broadcast_object,
    init_distributed,
    shutdown_distributed,
    sync_batchnorm,
)
from .evaluator import EvaluationStopped, autocast_dtype, eval_transform, evaluate, write_metrics
from .loading import next_batch, prepare_split, shutdown_workers, worker_init
from .run import RunLock, checkpoint_paths, checkpoint_steps, find_resume_checkpoint, remove_leftover_temporaries

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm


__all__ = ["Trainer", "TrainingStopped", "poly_lr", "EpochSampler", "weight_decay_groups"]


class TrainingStopped(InputError):
    """Training was stopped on purpose: too many non-finite steps (lower the learning rate or check the data)."""


def poly_lr(step: int, iterations: int, power: float, warmup: int = 0) -> float:
    """Learning-rate factor: linear warm-up, then ``(1 - step / iterations) ** power``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    return max(0.0, 1.0 - step / iterations) ** power


def weight_decay_groups(model: PAMM, weight_decay: float) -> list[dict]:
    """Optimizer parameter groups: every parameter decayed by ``weight_decay`` except those the model names in
    ``no_weight_decay()`` (timm's convention), which get 0."""
    skip_names = model.no_weight_decay()
    decay: list[torch.nn.Parameter] = []
    skip: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        (skip if name in skip_names else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": skip, "weight_decay": 0.0}]


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
            raise InputError(
                f"the training split has {n} images, fewer than one global batch "
                f"(train.batch_size {batch_size} x {world} process(es))"
            )
        self.start_step = start_step

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while True:
            epoch, i = divmod(step, self.steps_per_epoch)
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            g = self.batch * self.world
            for j in range(i, self.steps_per_epoch):
                chunk = perm[j * g + self.rank * self.batch : j * g + (self.rank + 1) * self.batch]
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
    """Train a :class:`~pamm.config.Config` into ``run_dir`` (module docstring).

    The constructor builds everything: it claims the run folder (lock; refuses a folder holding another run unless
    ``resume``), seeds, validates the train and val splits, builds the model, loss and optimizer and, with
    ``resume``, restores the newest valid checkpoint. :meth:`fit` trains to ``train.iterations``, evaluates and
    returns the final metrics; it runs once per Trainer and releases the folder (:meth:`close`) when it ends.

    Args:
        cfg: the experiment.
        run_dir: output folder (created if missing).
        resume: continue from the newest valid checkpoint in ``run_dir`` (error if there is none).
        device: ``"cuda"``, ``"cpu"`` or None (CUDA when available).
        progress: show progress bars on the main process.
        log: receives every message (main process only); by default information goes to stdout and warnings to
            stderr.
        command: the command line recorded in the lock (for the message another run gets).

    Attributes: ``model`` (the bare model), ``net`` (DDP-wrapped when distributed), ``optimizer``, ``scheduler``,
    ``train_set``, ``val_set``, ``step``, ``dist``, ``device``, ``timings`` (seconds per phase: ``build``, ``data``,
    ``steps``, ``eval``, ``final_eval``, ``checkpoint``, ``metrics_write``, ``teardown``).
    """

    def __init__(
        self,
        cfg: Config,
        run_dir: str | os.PathLike,
        resume: bool = False,
        device: str | None = None,
        progress: bool = True,
        log: Callable[[str], None] | None = None,
        command: str | None = None,
    ):
        tic = time.perf_counter()
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.timings: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self._log_fn = log
        self._pending_log: list[str] = []  # train.log lines held back until the run folder is committed
        self._committed = False
        self._created: list[Path] = []  # what this call created in the run folder (removed if nothing was trained)
        self._lock: RunLock | None = None
        self._writer: SummaryWriter | None = None
        self._bar: tqdm | None = None
        self._batches: Generator[dict, None, None] | None = None
        self._fitted = self._closed = False
        self._signal: int | None = None  # received by this process
        self._agreed_signal: int | None = None  # under DDP: received by some process, agreed at a step
        self._replaced: dict[str, str] = {}  # training samples replaced at load time (data.on_error=skip)
        self._steps_done = 0  # steps trained by this call
        self._resume_from: tuple[Path, Path] | None = None
        had_group = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.dist: DistInfo = init_distributed(device)
        self._owns_group = self.dist.distributed and not had_group
        self.device = self.dist.device
        self.progress = progress and self.dist.is_main
        try:
            self._claim_run_dir(command)
            self._build()
        except BaseException:
            self._abandon()
            raise
        self.timings["build"] = time.perf_counter() - tic

    # ---- messages ------------------------------------------------------------------------------------------

    def _emit(self, msg: str, stream) -> None:
        if self._log_fn is not None:
            self._log_fn(msg)
        elif self._bar is not None:
            self._bar.write(msg, file=stream)
        else:
            print(msg, file=stream, flush=True)

    def _write_log(self, msg: str) -> None:
        if self._committed:
            with open(self.run_dir / "train.log", "a") as f:
                f.write(msg + "\n")
        else:
            self._pending_log.append(msg)

    def log(self, msg: str, console: bool = True) -> None:
        """Record ``msg`` in ``train.log`` (and print it unless ``console`` is False); main process only."""
        if self.dist.is_main:
            if console:
                self._emit(msg, sys.stdout)
            self._write_log(msg)

    def warn(self, msg: str) -> None:
        """Record a warning in ``train.log`` and print it on stderr; main process only."""
        if self.dist.is_main:
            self._emit(msg, sys.stderr)
            self._write_log(msg)

    # ---- the run folder ------------------------------------------------------------------------------------

    def _claim_run_dir(self, command: str | None) -> None:
        """Main process: create and lock the run folder and check it may be used; every process raises the main
        process's refusal."""
        error: Exception | None = None
        if self.dist.is_main:
            try:
                self._claim_as_main(command)
            except Exception as e:  # noqa: BLE001 - handed to the other processes, then raised
                error = e
        error = broadcast_object(error)
        if error is not None:
            raise error

    def _claim_as_main(self, command: str | None) -> None:
        run = self.run_dir
        if run.exists() and not run.is_dir():
            raise InputError(f"run folder {run} is a file; expected a folder (new, empty, or of a run to resume)")
        self._created += make_folders(run)
        lock = RunLock(run, command)
        lock.acquire()
        self._lock = lock
        leftovers = remove_leftover_temporaries(run)
        if leftovers:
            self.warn(f"note: removed {len(leftovers)} temporary file(s) left by an interrupted write in {run}")
        if self.resume:
            found = find_resume_checkpoint(run, self.warn)
            if found is None:
                raise CheckpointError(
                    f"--resume: no valid checkpoint in {run / 'checkpoints'} (to start a new run "
                    f"there, leave out --resume)"
                )
            self._resume_from = found
            return
        checkpoints = run / "checkpoints"
        if checkpoints.is_dir() and any(checkpoints.iterdir()):
            raise InputError(
                f"run folder {run} already holds checkpoints; pass --resume to continue that run or "
                f"choose another --out folder"
            )
        if (run / "metrics.json").exists():
            raise InputError(f"run folder {run} holds the metrics.json of another run; choose another --out folder")
        if (run / "config.yaml").exists() and not (run / "train.log").is_file():
            raise InputError(
                f"--out {run} holds a config.yaml that is not a pamm run's (no train.log beside it), "
                f"which training would overwrite; choose another folder"
            )

    def _commit(self) -> None:
        """Main process, right before the first step: write what a run folder holds from its start."""
        if not self.dist.is_main:
            return
        new_log = not (self.run_dir / "train.log").exists()
        if not self.resume:
            self._write_config()
        self._committed = True
        if new_log:
            self._created.append(self.run_dir / "train.log")
        for line in self._pending_log:
            self._write_log(line)
        self._pending_log = []
        from torch.utils.tensorboard import SummaryWriter

        before = set(self.run_dir.glob("events.out.tfevents.*"))
        self._writer = SummaryWriter(str(self.run_dir))
        self._created += sorted(set(self.run_dir.glob("events.out.tfevents.*")) - before)

    def _write_config(self) -> None:
        path = self.run_dir / "config.yaml"
        if not path.exists():
            self._created.append(path)
        atomic_write_text(path, yaml.safe_dump(config_to_dict(self.cfg), sort_keys=False))

    def _abandon(self) -> None:
        """After a failure before the first step: release everything, then remove what this call created."""
        self._committed = False
        self.close(failed=True)
        if self.dist.is_main:
            for path in reversed(self._created):
                with contextlib.suppress(OSError):
                    path.rmdir() if path.is_dir() else path.unlink()
            self._created = []

    # ---- build ---------------------------------------------------------------------------------------------

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

    def _check_resume_step(self) -> None:
        """Refuse, before anything is built or written, a resume whose run is past ``train.iterations``."""
        error: Exception | None = None
        if self.dist.is_main:
            try:
                assert self._resume_from is not None  # chosen by _claim_as_main
                _, extra = read_checkpoint_metadata(self._resume_from[0])
                step = int(extra.get("step", 0))
                if step > self.cfg.train.iterations:
                    error = InputError(
                        f"--resume: the run in {self.run_dir} is at step {step}, beyond "
                        f"train.iterations={self.cfg.train.iterations}; nothing was changed (set "
                        f"train.iterations to {step} or more to continue it)"
                    )
            except Exception as e:  # noqa: BLE001 - handed to the other processes, then raised
                error = e
        error = broadcast_object(error)
        if error is not None:
            raise error

    def _build(self) -> None:
        cfg = self.cfg
        self._seed()
        if self.resume:
            self._resume_from = broadcast_object(self._resume_from)
            self._check_resume_step()
        self.tasks = cfg.data.task_list  # a generic dataset's dataset.yaml is read (and checked) here
        self.spec = spec = cfg.data.spec
        cfg.check_loss_weights(self.tasks)
        train_tf = build_transforms(
            train=True,
            size=pair(cfg.data.train_size),
            multiple=cfg.model.backbone.patch_size,
            scale_range=pair(cfg.data.scale_range),
        )
        self.train_set = prepare_split(cfg, "train", train_tf, self.dist, self.log, self.warn, self.progress)
        self.val_set = prepare_split(cfg, "val", eval_transform(cfg), self.dist, self.log, self.warn, self.progress)
        EpochSampler(len(self.train_set), cfg.train.batch_size, self.dist.world_size, 0, 0)  # enough images?
        model = build_model(cfg, load_backbone_weights=not self.resume, spec=spec)
        # the weights above are identical on every process; from here on each process draws its own router
        # noise and drop-path masks
        torch.manual_seed(self._process_seed())
        model.to(self.device)
        if self.device.type == "cuda" and cfg.runtime.channels_last:
            model.to(memory_format=torch.channels_last)
        if self.dist.distributed:
            model = sync_batchnorm(model, self.device)
        if cfg.train.compile:
            for stage in model.stages:  # the decoder's stages; the scan's autograd Function stays eager
                stage.compile()
        self.model = model
        self.net = (
            torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
            if self.dist.distributed
            else model
        )
        self.loss_fn = MultiTaskLoss(
            self.tasks,
            cfg.train.loss_weights,
            spec.edge_pos_weight,
            cfg.train.load_balancing,
            reducer=DistributedReducer() if self.dist.distributed else LOCAL,
        )
        groups = weight_decay_groups(model, cfg.train.weight_decay)
        self.optimizer: torch.optim.Optimizer
        if cfg.train.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(groups, lr=cfg.train.lr, momentum=0.9)
        else:
            opt_cls = torch.optim.AdamW if cfg.train.optimizer == "adamw" else torch.optim.Adam
            self.optimizer = opt_cls(groups, lr=cfg.train.lr)
        t = cfg.train
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: poly_lr(s, t.iterations, t.poly_power, t.warmup_iters)
        )
        self.amp_dtype = autocast_dtype(cfg.train.amp, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp_dtype == torch.float16 else None
        self.step = 0
        self.nonfinite = 0
        self.best_score = -math.inf
        self.reference: dict | None = None
        self.last_metrics: dict | None = None  # of the newest evaluation
        self._pending_eval = False  # the evaluation of the restored step was interrupted: redo it first
        self._saved_step = -1  # step of the newest checkpoint written or restored
        if self.resume:
            self._restore()

    def _restore(self) -> None:
        assert self._resume_from is not None  # chosen by _claim_as_main, broadcast by _build
        weights, state_path = self._resume_from
        # verified by the main process when it chose them (under the run's lock): read without hashing again
        tensors, stored_cfg, extra = load_weights(weights, verify=False)
        stored_spec = stored_dataset_spec(extra, weights)
        difference = stored_spec and label_space_difference(stored_spec, self.spec, self.tasks)
        if difference:
            raise InputError(
                f"--resume: {weights} was trained on another label space than {self.cfg.data.root} "
                f"holds now ({difference})"
            )
        check_state_dict_fits(self.model, tensors, f"checkpoint {weights}", stored_cfg, self.cfg)
        self.model.load_state_dict(tensors)
        state = load_state(state_path, verify=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.step = self._saved_step = int(state["step"])
        if self.dist.rank < len(state["rng"]):
            rng = state["rng"][self.dist.rank]
            _set_rng_state(dict(rng, numpy=_plain_to_numpy_state(rng["numpy"])))
        else:  # a process the saved run did not have: its own stream, not a copy of another process's
            torch.manual_seed(self._process_seed() + self.step)
        self._note_world_change(len(state["rng"]), state.get("batch_size"))
        self.nonfinite = int(state["nonfinite"])
        self.best_score = float(state["best_score"])
        self.reference = json.loads(state["reference"]) if state.get("reference") else None
        self.last_metrics = json.loads(state["metrics"]) if state.get("metrics") else None
        self._pending_eval = bool(state.get("pending_eval", False))
        iterations = self.cfg.train.iterations
        self.log(f"resumed from {weights.name} at step {self.step} (train.iterations {iterations})")

    def _process_seed(self) -> int:
        """The seed of this process's own random stream (router noise, drop-path masks)."""
        return self.cfg.train.seed + 1_000_003 * self.dist.rank

    def _note_world_change(self, saved_world: int, saved_batch: int | None) -> None:
        """Resuming with another number of processes: say what happens to the global batch (the data order depends
        only on the global batch, so keeping it continues the run as it would have gone on)."""
        world, batch = self.dist.world_size, self.cfg.train.batch_size
        if saved_world == world or saved_batch is None:
            return
        before, now = saved_world * saved_batch, world * batch
        head = (
            f"--resume: the run was trained by {saved_world} process(es) x batch {saved_batch} and continues on "
            f"{world} x {batch}"
        )
        if before == now:
            self.log(f"{head}: global batch {now} kept, same data order")
        else:
            keep = (
                f"set train.batch_size={before // world} to keep it"
                if before % world == 0
                else f"no per-process batch keeps it on {world} process(es)"
            )
            self.warn(
                f"warning: {head}: the global batch changes from {before} to {now} and with it the data order "
                f"and the effective learning rate ({keep})"
            )

    # ---- checkpoints ---------------------------------------------------------------------------------------

    def _gather_rng(self) -> list[dict]:
        mine = _rng_state()
        mine["numpy"] = _numpy_state_to_plain(mine["numpy"])
        if not self.dist.distributed:
            return [mine]
        out: list[Any] = [None] * self.dist.world_size  # filled by the collective
        torch.distributed.all_gather_object(out, mine)
        return out

    def save_checkpoint(self, best: bool = False, pending_eval: bool = False) -> None:
        """Write the checkpoint of the current step (weights + training state, all or nothing; the newest two are
        kept) and, with ``best``, make it ``best.safetensors``. Collective: every process calls it."""
        rng = self._gather_rng()
        self._saved_step = self.step
        if not self.dist.is_main:
            return
        tic = time.perf_counter()
        weights, state_path = checkpoint_paths(self.run_dir, self.step)
        previous = checkpoint_steps(self.run_dir)
        extra = {"step": self.step, "tasks": self.tasks, "dataset_spec": self.spec.to_dict()}
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng,
            "step": self.step,
            "nonfinite": self.nonfinite,
            "best_score": self.best_score,
            "reference": json.dumps(self.reference) if self.reference else "",
            "metrics": json.dumps(self.last_metrics) if self.last_metrics else "",
            "pending_eval": pending_eval,
            "batch_size": self.cfg.train.batch_size,  # per process; the processes are len(rng)
        }
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        try:
            self._created += make_folders(weights.parent)
            save_checkpoint(weights, state_path, self.model.state_dict(), self.cfg, extra, state)
            if best:
                link_or_copy(weights, weights.parent / "best.safetensors")
        except ResourceError as e:
            newest = f"step {previous[0]}" if previous else "none"
            raise ResourceError(
                f"{e} (training stopped at step {self.step}; newest complete checkpoint: {newest})", e.errno
            ) from e
        for old in checkpoint_steps(self.run_dir)[2:]:  # keep the newest two
            for path in checkpoint_paths(self.run_dir, old):
                path.unlink(missing_ok=True)
        seconds = time.perf_counter() - tic
        self.timings["checkpoint"] += seconds
        self.counts["checkpoint"] += 1
        self.log(
            f"step {self.step}: checkpoint {weights.name}{' (best)' if best else ''} written in {seconds:.2f} s",
            console=False,
        )

    # ---- steps ---------------------------------------------------------------------------------------------

    def _loader(self) -> DataLoader:
        sampler = EpochSampler(
            len(self.train_set),
            self.cfg.train.batch_size,
            self.dist.world_size,
            self.dist.rank,
            self.cfg.train.seed,
            start_step=self.step,
        )
        workers = self.cfg.data.workers
        return DataLoader(
            LoadGuard(_EpochKeyed(self.train_set)),
            batch_sampler=sampler,
            num_workers=workers,
            collate_fn=collate,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=worker_init if workers else None,
            persistent_workers=workers > 0,
            generator=torch.Generator().manual_seed(0),
            prefetch_factor=4 if workers else None,
        )

    def batches(self) -> Generator[dict, None, None]:
        """Training batches from the current step on, in the run's deterministic order (forever). A sample that
        fails to load raises its one-line :class:`~pamm.data.DatasetError` (or, under ``data.on_error: skip``, is
        replaced and listed in the batch's ``meta``)."""
        loader_iter = iter(self._loader())
        try:
            while True:
                yield next_batch(loader_iter)
        finally:
            shutdown_workers(loader_iter)

    def _to_device(self, batch: dict) -> dict:
        return {k: (v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}

    def train_step(self, batch: dict) -> dict[str, float] | None:
        """One optimisation step; returns the logged losses, or None when the step was skipped as non-finite.

        Under DDP the processes also agree here whether a stop signal arrived at any of them."""
        cfg = self.cfg.train
        batch = self._to_device(batch)
        images = batch["image"]
        if self.device.type == "cuda" and self.cfg.runtime.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(
            self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
        ):
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
        not_finite = (~(torch.isfinite(total.detach()) & torch.isfinite(grad_norm))).float()
        flags = all_reduce_max(torch.stack([not_finite.reshape(()), not_finite.new_tensor(float(self._signal or 0))]))
        finite = not bool(flags[0])
        if flags[1] > 0:
            self._agreed_signal = int(flags[1])  # some process was signalled: all stop after this same step
        self.step += 1
        if not finite:
            self.optimizer.zero_grad(set_to_none=True)
            self.nonfinite += 1
            with warnings.catch_warnings():  # the schedule follows the step count, updates or not
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                self.scheduler.step()
            if self.scaler is not None:
                self.scaler.update()
            self.warn(
                f"warning: step {self.step}: non-finite loss or gradient, update skipped "
                f"({self.nonfinite}/{cfg.max_nonfinite_steps})"
            )
            if self.nonfinite > cfg.max_nonfinite_steps:
                raise TrainingStopped(
                    f"training stopped at step {self.step}: {self.nonfinite} steps had a "
                    f"non-finite loss or gradient (train.max_nonfinite_steps="
                    f"{cfg.max_nonfinite_steps}); lower the learning rate or check the data"
                )
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

    # ---- evaluation ----------------------------------------------------------------------------------------

    def _score(self, metrics: dict) -> float:
        """Selection score for the best checkpoint: mean relative improvement of each task's main metric over
        the run's first evaluation (or Δm against ``eval.single_task`` when given)."""
        from ..metrics import main_metric

        ref = self.cfg.eval.single_task
        if not ref:
            assert self.reference is not None  # the run's first evaluation, recorded before any score
            ref = {t: main_metric(t, self.reference[t])[0] for t in self.tasks}
        gains = []
        for t in self.tasks:
            value, higher = main_metric(t, metrics[t])
            base = ref[t]
            gains.append((value - base) / max(abs(base), 1e-12) * (1 if higher else -1))
        return float(np.mean(gains))

    def evaluate(self, final: bool = False) -> dict:
        """Evaluate the current model on the val split (all processes), log it, and return the metrics. Raises
        :class:`~pamm.engine.evaluator.EvaluationStopped` when a stop signal arrives meanwhile (one process)."""
        tic = time.perf_counter()
        stop = None if self.dist.distributed else (lambda: self._signal is not None)
        metrics = evaluate(
            self.model,
            self.cfg,
            device=self.device,
            dist=self.dist,
            progress=self.progress,
            amp_dtype=self.amp_dtype,
            dataset=self.val_set,
            stop=stop,
        )
        seconds = time.perf_counter() - tic
        phase = "final_eval" if final else "eval"
        self.timings[phase] += seconds
        self.counts[phase] += 1
        if self.reference is None:
            self.reference = metrics
        self.last_metrics = metrics
        if self.dist.is_main:
            from ..metrics.multitask import TASK_METRICS

            parts = []
            for t in self.tasks:
                key = TASK_METRICS[t][0]
                value = float(metrics[t][key])
                parts.append(f"{t} {key} {value:.4g}")
                if self._writer is not None:
                    self._writer.add_scalar(f"val/{t}", value, self.step)
            self.log(f"step {self.step}: val " + ", ".join(parts) + f" ({seconds:.1f} s)")
        return metrics

    # ---- the loop ------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _stop_on_signals(self):
        """SIGINT / SIGTERM set a flag checked at step boundaries; a second one stops at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def handler(signum, frame):
            if self._signal is not None:
                for s, h in previous.items():
                    signal.signal(s, h)
                raise KeyboardInterrupt if signum == signal.SIGINT else Terminated()
            self._signal = signum
            if self.dist.is_main:
                print(
                    f"\n{signal.Signals(signum).name}: stopping after step {self.step + 1} and writing a "
                    f"checkpoint (send it again to stop at once, losing the steps since the last checkpoint)",
                    file=sys.stderr,
                    flush=True,
                )

        for s in previous:
            signal.signal(s, handler)
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    @property
    def _stopping(self) -> bool:
        """A stop signal is to be honoured now: at once on one process, at the agreed step under DDP."""
        return (self._agreed_signal if self.dist.distributed else self._signal) is not None

    def _interrupt(self, pending_eval: bool = False) -> None:
        """Stop on the received signal: checkpoint the current step (unless it is already) and raise."""
        signum = self._agreed_signal or self._signal
        assert signum is not None  # called when _stopping
        name = signal.Signals(signum).name
        if self._steps_done == 0 and not pending_eval and not self.resume:
            raise Interrupted(f"{name} received before the first step; nothing was written", signum, resumable=False)
        written = self._saved_step != self.step or pending_eval
        if written:
            self.save_checkpoint(pending_eval=pending_eval)
        weights, _ = checkpoint_paths(self.run_dir, self.step)
        message = (
            f"{name} received: stopped at step {self.step} of {self.cfg.train.iterations}; checkpoint "
            f"{weights} {'written' if written else 'already there'}"
        )
        self.log(message, console=False)
        raise Interrupted(message, signum)

    def _log_losses(self, logged: dict[str, float], images_per_s: float) -> None:
        lr = self.scheduler.get_last_lr()[0]
        parts = " ".join(f"{k} {v:.4f}" for k, v in logged.items() if k not in ("total", "grad_norm"))
        self.log(
            f"step {self.step}/{self.cfg.train.iterations}: loss {logged['total']:.4f} ({parts}) lr {lr:.3e} "
            f"grad_norm {logged['grad_norm']:.3g} {images_per_s:.1f} img/s",
            console=False,
        )
        if self._writer is not None:
            for k, v in logged.items():
                self._writer.add_scalar(f"train/{k}", v, self.step)
            self._writer.add_scalar("train/lr", lr, self.step)
            self._writer.add_scalar("train/images_per_s", images_per_s, self.step)

    def fit(self) -> dict:
        """Train to ``train.iterations`` steps, evaluate, write ``metrics.json`` and return the final metrics.

        Raises :class:`~pamm.errors.Interrupted` after writing a checkpoint when SIGINT or SIGTERM arrives."""
        if self._fitted:
            raise RuntimeError("Trainer.fit() runs once; build a new Trainer (with resume=True) to continue")
        self._fitted = True
        try:
            done = self._already_finished()
            if done is not None:
                return done
            self._commit()
            with self._stop_on_signals():
                metrics = self._train()
            self._finish(metrics)
            self.close()
            return metrics
        except BaseException as e:
            if self._steps_done == 0 and not self._pending_eval:
                self._abandon()
            else:
                with contextlib.suppress(Exception):
                    if not isinstance(e, Interrupted):
                        self.log(f"stopped at step {self.step}: {type(e).__name__}: {e}", console=False)
                self.close(failed=True)
            raise

    def _already_finished(self) -> dict | None:
        """The stored final metrics of a resumed run that has nothing left to do (nothing is written)."""
        if self.step < self.cfg.train.iterations or self._pending_eval:
            return None
        stored = None
        if self.dist.is_main:
            with contextlib.suppress(OSError, ValueError):
                stored = json.loads((self.run_dir / "metrics.json").read_text())
            if not isinstance(stored, dict) or stored.get("step") != self.step:
                stored = None
        stored = broadcast_object(stored)
        if stored is None:
            return None
        if self.dist.is_main:
            self._emit(
                f"{self.run_dir} already finished at step {self.step} (train.iterations "
                f"{self.cfg.train.iterations}); nothing to do",
                sys.stdout,
            )
        self.close()
        return stored

    def _train(self) -> dict:
        cfg = self.cfg.train
        if self.dist.is_main:
            n_params = sum(p.numel() for p in self.model.parameters())
            self.log(
                f"training {self.cfg.name}: {len(self.train_set)} images, {n_params / 1e6:.1f} M parameters, "
                f"{self.dist.world_size} process(es) on {self.device}, steps {self.step}->{cfg.iterations}"
            )
        if self.progress:
            from tqdm import tqdm

            self._bar = tqdm(total=cfg.iterations, initial=self.step, dynamic_ncols=True, desc="train")
        metrics = self.last_metrics or {}
        if self._pending_eval:  # the evaluation of this step was interrupted: do it now
            metrics = self._evaluate_and_checkpoint(self.step == cfg.iterations)
        self.net.train()
        self._batches = self.batches()
        tic = window = time.perf_counter()
        window_steps = 0
        while self.step < cfg.iterations:
            if self._stopping:
                self._interrupt()
            batch = next(self._batches)
            for meta in batch["meta"]:
                self._replaced.update(meta.get("replaced", ()))
            fetched = time.perf_counter()
            self.timings["data"] += fetched - tic
            logged = self.train_step(batch)
            tic = time.perf_counter()
            self.timings["steps"] += tic - fetched
            self.counts["steps"] += 1
            self._steps_done += 1
            window_steps += 1
            if self.resume and self._steps_done == 1 and self.dist.is_main:
                self._write_config()  # the resumed run trains: its (possibly extended) config is now the run's
            if self._bar is not None:
                self._bar.update(1)
                if logged:
                    self._bar.set_postfix(loss=f"{logged['total']:.3f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
            if logged and self.dist.is_main and (self.step % max(cfg.log_every, 1) == 0 or self.step == 1):
                rate = cfg.batch_size * self.dist.world_size * window_steps / max(tic - window, 1e-9)
                self._log_losses(logged, rate)
                window, window_steps = tic, 0
            if self._stopping:
                self._interrupt()
            last = self.step == cfg.iterations
            if (cfg.eval_every and self.step % cfg.eval_every == 0) or last:
                metrics = self._evaluate_and_checkpoint(last)
            elif cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                self.save_checkpoint()
            if self._stopping:
                self._interrupt()
            tic = time.perf_counter()
        if not metrics:  # resumed at the last step from a checkpoint without the final evaluation's metrics
            metrics = self.evaluate(final=True)
        return metrics

    def _evaluate_and_checkpoint(self, last: bool) -> dict:
        """The evaluation of the current step, then its checkpoint when it is the best so far, the last step or a
        checkpoint step. A stop signal during the evaluation checkpoints the step with the evaluation pending."""
        cfg = self.cfg.train
        try:
            metrics = self.evaluate(final=last)
        except EvaluationStopped:
            self._interrupt(pending_eval=True)
        self._pending_eval = False
        score = self._score(metrics)
        is_best = score > self.best_score
        if is_best:
            self.best_score = score
        self.net.train()
        if (
            is_best
            or last
            or (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0)
            or self._saved_step == self.step
        ):  # a pending evaluation's step: record that it is done
            self.save_checkpoint(best=is_best)
        return metrics

    def _finish(self, metrics: dict) -> None:
        """After the last step: report skipped samples, write metrics.json, log the phase timings."""
        skipped = {"train": dict(self.train_set.skipped), "val": dict(self.val_set.skipped)}
        replaced = self._gather_replaced()
        skipped["train"].update(replaced)
        skipped = {k: v for k, v in skipped.items() if v}
        if self.dist.is_main:
            tic = time.perf_counter()
            extra: dict[str, Any] = {"step": self.step}
            if skipped:
                extra["skipped_samples"] = skipped
                self.warn(
                    f"warning: {sum(map(len, skipped.values()))} damaged sample(s) were skipped "
                    f"(data.on_error=skip): "
                    + "; ".join(
                        f"{split}: {', '.join(sorted(ids)[:5])}" + (" ..." if len(ids) > 5 else "")
                        for split, ids in skipped.items()
                    )
                    + " (listed in metrics.json)"
                )
            body = {k: v for k, v in metrics.items() if k != "skipped_samples"}
            write_metrics(self.run_dir / "metrics.json", body, self.cfg, extra=extra)
            self.timings["metrics_write"] += time.perf_counter() - tic
            self.log("timings: " + self.describe_timings(), console=False)

    def _gather_replaced(self) -> dict[str, str]:
        """Training samples replaced at load time (data.on_error=skip) on any process, seen in batch metas."""
        mine = dict(self._replaced)
        if not self.dist.distributed:
            return mine
        out: list[Any] = [None] * self.dist.world_size  # filled by the collective
        torch.distributed.all_gather_object(out, mine)
        return {k: v for d in out for k, v in d.items()}

    def describe_timings(self) -> str:
        """The phase timings so far, one line."""
        t, c = self.timings, self.counts
        parts = [
            f"build {t['build']:.1f} s",
            f"{c['steps']} steps {t['steps']:.1f} s (waiting for data {t['data']:.1f} s)",
        ]
        if c["eval"]:
            parts.append(f"{c['eval']} evaluation(s) {t['eval']:.1f} s")
        if c["final_eval"]:
            parts.append(f"final evaluation {t['final_eval']:.1f} s")
        if c["checkpoint"]:
            parts.append(f"{c['checkpoint']} checkpoint write(s) {t['checkpoint']:.1f} s")
        parts.append(f"metrics write {t['metrics_write']:.2f} s")
        return ", ".join(parts)

    def close(self, failed: bool = False) -> None:
        """Shut down loader workers, the TensorBoard writer and the process group this Trainer started; release the
        run folder. Idempotent; :meth:`fit` calls it."""
        if self._closed:
            return
        self._closed = True
        tic = time.perf_counter()
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._batches is not None:
            with contextlib.suppress(Exception):
                self._batches.close()
            self._batches = None
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._writer = None
        if self._owns_group:
            if not failed:
                barrier()  # nobody tears down while another process may still be in a collective
            shutdown_distributed()
        self.timings["teardown"] = time.perf_counter() - tic
        if self._committed and self.dist.is_main and not failed:
            with contextlib.suppress(OSError):
                self._write_log(f"timings: teardown {self.timings['teardown']:.2f} s")
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc) -> None:
        self.close(failed=exc[0] is not None)
