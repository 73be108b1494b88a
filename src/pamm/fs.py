"""Safe file writes: atomic (readers see the old file or the whole new one), umask-respecting, and all-or-nothing
for groups of files.

A write goes to a temporary file in the target's folder, is fsynced, given the mode a plain ``open(path, "w")``
would have given it (``0o666 & ~umask``), renamed over the target, and the folder is fsynced. When the disk fills
up (or any other ``OSError`` happens) the temporary file is removed, the old file stays as it was, and a
:class:`~pamm.errors.ResourceError` names the file being written.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import ResourceError, describe_os_error

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "AtomicGroup", "current_umask"]


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
