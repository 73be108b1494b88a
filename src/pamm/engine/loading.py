"""Data loading for training and evaluation: splits validated before use, DataLoader workers that leave signals to
the main process, and a sample that fails in a worker reported as its one-line error.

- :func:`prepare_split` builds a split's dataset and validates it (:func:`pamm.data.validate_dataset`, cached) before
  the first step: with ``data.on_error: raise`` a damaged sample stops everything with one line naming its file;
  with ``skip`` the damaged samples are left out and listed. Under DDP the main process validates and every
  process applies the same verdicts.
- :func:`worker_init` makes DataLoader workers ignore SIGINT and leave quietly (exit status 0) on SIGTERM: Ctrl-C,
  which the terminal sends to the whole process group, is the main process's to handle (it stops at a step
  boundary and shuts the workers down), and a worker killed by a signal sent to the whole group (a scheduler's
  SIGTERM) would otherwise abort the main process from PyTorch's SIGCHLD handler at any point, checkpoint writes
  included. (A worker must still end on SIGTERM: that is how its pool is shut down.)
- :func:`next_batch` turns a :class:`~pamm.data.FailedSample` (a sample that raised in a worker, carried as data by
  :class:`~pamm.data.LoadGuard`) back into its :class:`~pamm.data.DatasetError`, instead of PyTorch's re-raise with
  the worker's traceback inside the message.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator

from ..config import Config
from ..data import DatasetError, FailedSample, MultiTaskDataset, build_dataset, validate_dataset
from ..errors import ResourceError
from .distributed import DistInfo, broadcast_object

__all__ = ["prepare_split", "worker_init", "next_batch", "shutdown_workers"]


def prepare_split(
    cfg: Config,
    split: str,
    transform,
    dist: DistInfo | None = None,
    log: Callable[..., None] | None = None,
    warn: Callable[[str], None] | None = None,
    progress: bool = False,
) -> MultiTaskDataset:
    """The dataset of ``split`` for ``cfg``'s tasks, validated (see the module docstring).

    ``log(message, console=...)`` receives the validation summary (shown on the console when it took a second or
    more), ``warn(message)`` the skipped samples.

    Returns the dataset, without its damaged samples under ``data.on_error: skip`` (``dataset.skipped`` maps their
    ids to what is wrong); raises :class:`~pamm.data.DatasetError` under ``raise``."""
    dataset = build_dataset(
        cfg.data.dataset,
        cfg.data.root,
        split,
        cfg.data.task_list,
        transform,
        seed=cfg.train.seed,
        on_error=cfg.data.on_error,
    )
    main = dist is None or dist.is_main
    report = validate_dataset(dataset, progress=progress and main) if main else None
    if report is not None and log is not None:
        log(
            f"validated {report.samples} {split} samples in {report.seconds:.1f} s ({report.cached} cached)",
            console=report.seconds >= 1.0,
        )
    bad = broadcast_object(report.bad if report is not None else None)
    if bad:
        first = next(iter(bad.values()))
        if cfg.data.on_error != "skip":
            raise DatasetError(
                f"{len(bad)} of {len(dataset)} {split} samples are damaged, first: {first} (run "
                f"`pamm data check --dataset {cfg.data.dataset} --root {cfg.data.root}` for the full "
                f"list, or set data.on_error=skip to leave them out)"
            )
        dataset.exclude(bad)
        if main and warn is not None:
            warn(f"warning: skipping {len(bad)} damaged {split} sample(s) (data.on_error=skip), first: {first}")
    return dataset


def _leave_quietly(signum, frame) -> None:
    os._exit(0)


def worker_init(_: int) -> None:
    """DataLoader ``worker_init_fn``: SIGINT ignored, SIGTERM ends the worker with status 0 (module docstring)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _leave_quietly)


def shutdown_workers(batches) -> None:
    """Stop the worker processes of a DataLoader iterator now (not when a reference cycle is collected, or at
    interpreter exit)."""
    shutdown = getattr(batches, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


def next_batch(batches: Iterator) -> dict:
    """The next batch of a DataLoader over a :class:`~pamm.data.LoadGuard`-wrapped dataset, raising a failed
    sample's one-line :class:`~pamm.data.DatasetError`, and a worker killed by the system (out of memory, or of
    shared memory in a container) as a one-line :class:`~pamm.errors.ResourceError`."""
    try:
        batch = next(batches)
    except RuntimeError as e:
        text = str(e)
        if "DataLoader worker" not in text or not ("killed by signal" in text or "exited unexpectedly" in text):
            raise
        first = text.strip().splitlines()[0].rstrip(".")
        hint = (
            "enlarge /dev/shm (docker run --shm-size) or set data.workers=0"
            if "shared memory" in text
            else "it was probably out of memory: lower data.workers or train.batch_size"
        )
        raise ResourceError(f"{first}; {hint}") from None
    if isinstance(batch, FailedSample):
        batch.reraise()
    return batch
