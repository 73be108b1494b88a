"""Safe file writes: atomic (readers see the old file or the whole new one), umask-respecting, and all-or-nothing
for groups of files and for whole folders (:class:`StagedFolder`).

A write goes to a temporary file in the target's folder, is fsynced, given the mode a plain ``open(path, "w")``
would have given it (``0o666 & ~umask``), renamed over the target, and the folder is fsynced. When the disk fills
up (or any other ``OSError`` happens) the temporary file is removed, the old file stays as it was, and a
:class:`~pamm.errors.ResourceError` names the file being written.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

from .errors import InputError, ResourceError, describe_os_error

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "AtomicGroup",
    "StagedFolder",
    "current_umask",
    "make_folders",
    "remove_empty_folders",
    "check_writable",
]


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux ``/proc``)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # no read-only query elsewhere: set and restore
    os.umask(mask)
    return mask


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some systems cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_temporary(path: Path, write: Callable[[str], None]) -> str:
    """Write ``path``'s new content into a fsynced temporary file beside it; returns the temporary path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    except BaseException as e:
        _remove(tmp)
        if isinstance(e, OSError) and not isinstance(e, ResourceError):
            raise ResourceError(f"could not write {describe_os_error(e, path)}", e.errno) from e
        raise
    return tmp


def _remove(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Create or replace ``path`` through ``write(tmp_path)``, atomically (see the module docstring)."""
    path = Path(path)
    tmp = _write_temporary(path, write)
    try:
        os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        raise ResourceError(f"could not write {describe_os_error(e, path)}", e.errno) from e
    _fsync_folder(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(path, write)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically replace ``path`` with ``text`` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


class AtomicGroup:
    """Write several files all or nothing.

    ``with AtomicGroup() as group: group.write(p1, fn1); group.write_bytes(p2, data)`` writes every file to a
    temporary beside it; only when the block ends without an exception are they all renamed into place. If
    anything fails (the disk fills up at the third file, the block raises), every temporary is removed and no
    target is created or changed.
    """

    def __init__(self) -> None:
        self._pending: list[tuple[str, Path]] = []

    def write(self, path: str | os.PathLike, write: Callable[[str], None]) -> None:
        path = Path(path)
        self._pending.append((_write_temporary(path, write), path))

    def write_bytes(self, path: str | os.PathLike, data: bytes) -> None:
        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                f.write(data)

        self.write(path, write)

    def __enter__(self) -> AtomicGroup:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        pending, self._pending = self._pending, []
        if exc_type is not None:
            for tmp, _ in pending:
                _remove(tmp)
            return
        created = [not path.exists() for _, path in pending]
        renamed = 0
        try:
            for tmp, path in pending:
                os.replace(tmp, path)
                renamed += 1
        except OSError as e:  # renames within one folder practically never fail; take back the files it created
            for tmp, _ in pending[renamed:]:
                _remove(tmp)
            for (_, path), new in zip(pending[:renamed], created):
                if new:
                    _remove(str(path))
            raise ResourceError(f"could not write {describe_os_error(e, pending[renamed][1])}", e.errno) from e
        for folder in {path.parent for _, path in pending}:
            _fsync_folder(folder)


def _flush_file_system(folder: Path) -> None:
    """Make every file written under ``folder`` durable: one ``syncfs`` of its file system on Linux (one system call,
    where an fsync per file costs a journal commit each), else ``sync``, else an fsync of every file."""
    try:
        import ctypes

        fd = os.open(folder, os.O_RDONLY)
        try:
            if ctypes.CDLL(None, use_errno=True).syncfs(fd) == 0:
                return
        finally:
            os.close(fd)
    except (OSError, AttributeError):  # no syncfs (not Linux), or it failed: fall back below
        pass
    if hasattr(os, "sync"):
        os.sync()
        return
    for root, _, names in os.walk(folder):
        for name in names:
            with open(os.path.join(root, name), "rb+") as f:
                os.fsync(f.fileno())
        _fsync_folder(Path(root))


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host may still run (True whenever that cannot be told)."""
    if os.name != "posix" or pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


class StagedFolder:
    """Build a folder beside its target and move it into place at the end: all or nothing.

    ``with StagedFolder(target) as stage: stage.write_bytes("images/a.png", data)`` writes every file into a hidden
    folder beside ``target`` (``.NAME.staged-HOST-PID-XXXXXXXX``, mode ``0o777 & ~umask`` like a plain ``mkdir``);
    when the block ends without an exception the file system is flushed (one ``syncfs``, not an fsync per file:
    ``benchmarks/synth_speed.py``) and that folder is renamed to ``target``. With
    ``replace=True`` an existing ``target`` is renamed aside first and deleted only once the new folder is in place;
    without it, an existing ``target`` that is not an empty folder is an error. If anything fails or the block
    raises (the disk fills up, Ctrl-C), the hidden folder is deleted and ``target`` is left exactly as it was. A
    hidden folder left behind by a killed process of this host is deleted when the next ``StagedFolder`` for the same
    target starts.

    Attributes:
        target: the folder being created or replaced.
        path: the hidden folder being filled (inside the block only: a RuntimeError elsewhere).
    """

    def __init__(self, target: str | os.PathLike, *, replace: bool = False) -> None:
        self.target = Path(target)
        self.replace = replace
        self._path: Path | None = None
        self._folders: set[Path] = set()

    def _tag(self, kind: str) -> str:
        return f".{self.target.name}.{kind}-{_host_tag()}-{os.getpid()}-"

    def _remove_stale(self) -> None:
        """Delete hidden folders of this target left by dead processes of this host (a replaced folder only once
        its successor is in place)."""
        host = _host_tag()
        for kind in ("staged", "replaced"):
            prefix = f".{self.target.name}.{kind}-"
            if kind == "replaced" and not self.target.exists():
                continue
            for entry in self.target.parent.iterdir():
                if not entry.name.startswith(prefix):
                    continue
                parts = entry.name[len(prefix) :].rsplit("-", 2)
                if len(parts) == 3 and parts[0] == host and parts[1].isdigit() and not _pid_alive(int(parts[1])):
                    shutil.rmtree(entry, ignore_errors=True)

    def __enter__(self) -> StagedFolder:
        parent = self.target.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self._remove_stale()
            self._path = Path(tempfile.mkdtemp(prefix=self._tag("staged"), dir=parent))
            os.chmod(self._path, 0o777 & ~current_umask())
        except OSError as e:
            if self._path is not None:
                shutil.rmtree(self._path, ignore_errors=True)
                self._path = None
            raise ResourceError(f"could not create {describe_os_error(e, self.target)}", e.errno) from e
        return self

    @property
    def path(self) -> Path:
        if self._path is None:
            raise RuntimeError("StagedFolder.path is only available inside its with-block")
        return self._path

    def write_bytes(self, relative: str | os.PathLike, data: bytes) -> None:
        """Write ``data`` to ``relative`` (a path inside the folder; sub-folders are created); errors name the file
        by its final path (``target / relative``)."""
        if self._path is None:
            raise RuntimeError("StagedFolder.write_bytes is only available inside its with-block")
        path = self._path / relative
        try:
            if path.parent not in self._folders:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._folders.add(path.parent)
            with open(path, "wb") as f:
                f.write(data)
        except OSError as e:
            raise ResourceError(f"could not write {describe_os_error(e, self.target / relative)}", e.errno) from e

    def __exit__(self, exc_type, exc, tb) -> None:
        staged, self._path = self._path, None
        if staged is None:
            return
        if exc_type is not None:
            shutil.rmtree(staged, ignore_errors=True)
            return
        try:
            self._commit(staged)
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise

    def _commit(self, staged: Path) -> None:
        target, aside = self.target, None
        try:
            _flush_file_system(staged)
            if target.is_symlink() or target.exists():
                if self.replace:
                    aside = target.with_name(self._tag("replaced") + os.urandom(4).hex())
                    os.rename(target, aside)
                elif target.is_dir() and not target.is_symlink() and not any(target.iterdir()):
                    target.rmdir()
                else:
                    raise FileExistsError(f"{target} appeared while it was being written; it was left as it is")
            try:
                os.rename(staged, target)
            except OSError:
                if aside is not None:
                    os.rename(aside, target)  # put the old folder back
                raise
        except FileExistsError:
            raise
        except OSError as e:
            raise ResourceError(f"could not move the new folder into place: {describe_os_error(e, target)}",
                                e.errno) from e  # fmt: skip
        _fsync_folder(target.parent)
        if aside is not None:
            try:
                shutil.rmtree(aside)
            except OSError as e:
                warnings.warn(f"{target} was replaced, but the old folder could not be deleted: "
                              f"{describe_os_error(e, aside)}", stacklevel=3)  # fmt: skip


def folder_has_contents(folder: Path, key: str = "out") -> bool:
    """Whether the output folder ``folder`` (given as ``key``) exists with something in it: False when it is absent
    or empty; an InputError naming ``key`` when it is a symbolic link or not a folder (never written through)."""
    if folder.is_symlink():
        raise InputError(f"{key}: {str(folder)!r} is a symbolic link; pass the folder that should hold the dataset")
    if not folder.exists():
        return False
    if not folder.is_dir():
        raise InputError(f"{key}: {str(folder)!r} exists and is not a folder")
    return any(folder.iterdir())


def unexpected_files(root: Path, expected: set[str]) -> list[str]:
    """Files under ``root`` (POSIX paths relative to it, sorted) that are not in ``expected``: what a writer that
    replaces the folder would lose."""
    found = []
    for folder, _, names in os.walk(root):
        for name in names:
            relative = Path(folder, name).relative_to(root).as_posix()
            if relative not in expected:
                found.append(relative)
    return sorted(found)


def make_folders(folder: str | os.PathLike) -> list[Path]:
    """``mkdir -p folder``; returns the folders it created, outermost first (for :func:`remove_empty_folders` should
    the work fail). A path component that is a file is an :class:`~pamm.errors.InputError`; a refusal of the system
    a :class:`~pamm.errors.ResourceError`, both naming the folder."""
    folder = Path(folder)
    missing = []
    probe = folder
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise InputError(f"{probe} is a file; expected a folder there (for {folder})")
    created = []
    try:
        for path in reversed(missing):
            path.mkdir()
            created.append(path)
    except FileExistsError:  # created meanwhile by someone else: fine if it is a folder
        if not folder.is_dir():
            raise InputError(f"{folder} is a file; expected a folder") from None
    except OSError as e:
        remove_empty_folders(created)
        raise ResourceError(f"cannot create folder {describe_os_error(e, path)}", e.errno) from e
    return created


def remove_empty_folders(folders: list[Path]) -> None:
    """Remove ``folders`` (as :func:`make_folders` returned them) innermost first, each only if it is empty."""
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            pass


def check_writable(path: str | os.PathLike) -> list[Path]:
    """Check, before long work, that the file ``path`` can be written later: it is not a folder and a file can be
    created beside it (the folder is created if missing). Returns the folders created (see :func:`make_folders`).
    Raises :class:`~pamm.errors.InputError` or :class:`~pamm.errors.ResourceError` naming the path."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder; expected a file path to write")
    created = make_folders(path.parent)
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=path.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        remove_empty_folders(created)
        raise ResourceError(f"cannot write {describe_os_error(e, path)}", e.errno) from e
    return created
