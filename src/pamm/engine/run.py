"""A run folder: its layout, its lock, and which of its checkpoints to use.

::

    RUN/
      config.yaml                        the resolved config of the latest `train` of this folder
      train.log                          messages, losses at the logging interval, evaluations, phase timings
      events.out.tfevents.*              TensorBoard
      metrics.json                       the final evaluation
      checkpoints/step-XXXXXXX.safetensors + .state.pt   the newest two (weights; training state for --resume)
      checkpoints/best.safetensors       the weights of the best evaluation
      .pamm.lock                         held while a `train` runs in this folder

The lock is an advisory ``flock`` on ``.pamm.lock``, which also records the holder (pid, host, start time, command)
for the message a second run gets. The operating system releases it when its process ends in any way (SIGKILL and
crashes included), so a dead run's leftover file never blocks ``--resume``; processes the run forked (DataLoader
workers) inherit the descriptor and can hold the flock a few seconds after their parent died, so a held lock whose
recorded process is gone (same host) is treated as stale too. Where the file system has no ``flock``
(some network file systems), the file's recorded pid is checked instead: on the same host a lock whose process no
longer exists is stale and taken over.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import InputError, ResourceError, describe_os_error
from ..fs import _pid_alive  # the one "is this process of this host alive" check (shared with StagedFolder)
from .checkpoint import CheckpointError, load_state, load_weights

__all__ = [
    "RunLock",
    "RunLocked",
    "checkpoint_paths",
    "checkpoint_steps",
    "find_resume_checkpoint",
    "best_checkpoint",
    "remove_leftover_temporaries",
    "LOCK_NAME",
]

LOCK_NAME = ".pamm.lock"


def checkpoint_paths(run_dir: str | os.PathLike, step: int) -> tuple[Path, Path]:
    """(weights, training state) of the checkpoint of ``step`` in ``run_dir``."""
    folder = Path(run_dir) / "checkpoints"
    return folder / f"step-{step:07d}.safetensors", folder / f"step-{step:07d}.state.pt"


def checkpoint_steps(run_dir: str | os.PathLike) -> list[int]:
    """Steps of the checkpoints in ``run_dir`` (weights files present), newest first."""
    steps = []
    for p in (Path(run_dir) / "checkpoints").glob("step-*.safetensors"):
        with contextlib.suppress(ValueError):
            steps.append(int(p.name[5:-12]))
    return sorted(steps, reverse=True)


_TEMPORARY = re.compile(
    r"^\.(step-\d{7}\.safetensors|step-\d{7}\.state\.pt|best\.safetensors|metrics\.json|"
    r"config\.yaml)\..+\.tmp$"
)


def remove_leftover_temporaries(run_dir: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of writes that a killed process left in ``run_dir`` (a checkpoint's can be
    gigabytes). Call it only while holding the run's lock: no live pamm process is writing there then."""
    removed = []
    for folder in (Path(run_dir), Path(run_dir) / "checkpoints"):
        if folder.is_dir():
            for p in folder.iterdir():
                if _TEMPORARY.match(p.name) and p.is_file():
                    with contextlib.suppress(OSError):
                        p.unlink()
                        removed.append(p)
    return removed


def _warn(message: str) -> None:
    print(message, file=sys.stderr)


def find_resume_checkpoint(run_dir: str | os.PathLike, log: Callable[[str], None] = _warn) -> tuple[Path, Path] | None:
    """Newest checkpoint of ``run_dir`` whose weights and training state both verify, as (weights, state) paths;
    damaged ones are reported through ``log`` (stderr by default) and skipped. None if there is none."""
    for step in checkpoint_steps(run_dir):
        weights, state = checkpoint_paths(run_dir, step)
        try:
            load_weights(weights)
            load_state(state)
        except CheckpointError as e:
            log(f"warning: skipping damaged checkpoint of step {step}: {e}")
            continue
        return weights, state
    return None


def best_checkpoint(run_dir: str | os.PathLike, log: Callable[[str], None] = _warn) -> Path:
    """The weights to use from a run: ``best.safetensors`` when it verifies, else the newest step checkpoint whose
    weights verify (reported through ``log``). Raises :class:`CheckpointError` naming the folder if there is none."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        what = "does not exist" if not run_dir.exists() else "is a file"
        raise InputError(f"run folder {run_dir} {what}; expected a folder written by `pamm train`")
    folder = run_dir / "checkpoints"
    best = folder / "best.safetensors"
    if best.exists():
        try:
            load_weights(best)
            return best
        except CheckpointError as e:
            log(f"warning: {e}; using the newest step checkpoint instead")
    for step in checkpoint_steps(run_dir):
        weights, _ = checkpoint_paths(run_dir, step)
        try:
            load_weights(weights)
        except CheckpointError as e:
            log(f"warning: skipping damaged checkpoint of step {step}: {e}")
            continue
        log(f"note: {run_dir} has no valid best.safetensors; using {weights.name}")
        return weights
    raise CheckpointError(
        f"no valid checkpoint in {folder} (expected best.safetensors or step-*.safetensors written by `pamm train`)"
    )


# ----------------------------------------------------------------------------------------------------------
# The lock


class RunLocked(ResourceError):
    """The run folder is in use by a live process (exit status 3)."""


class RunLock:
    """Exclusive use of a run folder by one process (module docstring). ``acquire()`` or refuse with
    :class:`RunLocked` naming the holder; ``release()`` (idempotent) removes the lock file."""

    def __init__(self, run_dir: str | os.PathLike, command: str | None = None):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.command = command or " ".join(sys.argv)
        self._fd: int | None = None
        self._flock = True

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _record(self) -> bytes:
        return json.dumps(
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": self.command,
            }
        ).encode()

    def holder(self) -> dict:
        """The holder recorded in the lock file (empty if unreadable)."""
        try:
            doc = json.loads(self.path.read_text())
            return doc if isinstance(doc, dict) else {}
        except (OSError, ValueError):
            return {}

    def _refuse(self) -> RunLocked:
        h = self.holder()
        who = (
            f"pid {h.get('pid', '?')} on host {h.get('host', '?')}, started {h.get('started', '?')}"
            if h
            else "another process"
        )
        return RunLocked(
            f"run folder {self.run_dir} is in use by another training ({who}); wait for it to finish, "
            f"stop it, or choose another --out folder"
        )

    def acquire(self) -> None:
        import fcntl

        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as e:
                raise ResourceError(f"cannot create the lock file {describe_os_error(e, self.path)}", e.errno) from e
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                stale = self._held_only_by_orphans(fd)
                os.close(fd)
                if stale:
                    continue
                raise self._refuse() from None
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL):
                    self._flock = False
                    return self._acquire_by_pid()
                raise ResourceError(f"cannot lock {describe_os_error(e, self.path)}", e.errno) from e
            # the holder we waited on may have removed the file meanwhile: ours must still be the one at the path
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self._fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, self._record())

    def _held_only_by_orphans(self, fd: int) -> bool:
        """The flock on ``fd``'s file is held, but the training recorded in it is a dead process of this host: the
        lock survives only in processes it forked (DataLoader workers inherit the descriptor and linger for a few
        seconds after their parent is killed). Unlink that file so the next attempt locks a fresh one."""
        h = self.holder()
        pid = h.get("pid")
        if h.get("host") != socket.gethostname() or not isinstance(pid, int) or _pid_alive(pid):
            return False
        try:
            if not os.path.samestat(os.fstat(fd), os.stat(self.path)):
                return True  # someone replaced it meanwhile: just try again
            self.path.unlink()
        except FileNotFoundError:
            pass
        return True

    def _acquire_by_pid(self) -> None:
        """Lock without flock: create the file exclusively; a file left by a dead process of this host is stale."""
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                h = self.holder()
                if h.get("host") == socket.gethostname() and isinstance(h.get("pid"), int) and not _pid_alive(h["pid"]):
                    self.path.unlink(missing_ok=True)  # stale: its process is gone
                    continue
                raise self._refuse() from None
            except OSError as e:
                raise ResourceError(f"cannot create the lock file {describe_os_error(e, self.path)}", e.errno) from e
            os.write(fd, self._record())
            self._fd = fd
            return
        raise self._refuse()

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()  # removed while still held, so no one can lock the old file after we let go
        with contextlib.suppress(OSError):
            os.close(self._fd)  # closing the descriptor releases the flock
        self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
