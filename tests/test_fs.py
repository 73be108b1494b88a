"""Safe writes (`pamm.fs`) and the exit-status scheme (`pamm.errors`)."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys

import pytest

from pamm import errors
from pamm.fs import (
    AtomicGroup,
    StagedFolder,
    _host_tag,
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
    current_umask,
)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _disk_full(tmp: str) -> None:
    with open(tmp, "wb") as f:
        f.write(b"partial")
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077, 0o002])
def test_atomic_write_respects_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        assert current_umask() == umask
        atomic_write_text(tmp_path / "a.json", "{}")
        plain = tmp_path / "plain.txt"
        plain.write_text("x")  # what an ordinary open() gives under this umask
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a.json") == _mode(plain) == 0o666 & ~umask


def test_atomic_write_replaces_whole_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "m.bin"
    atomic_write_bytes(target, b"old")
    atomic_write_bytes(target, b"new content")
    assert target.read_bytes() == b"new content"
    assert sorted(p.name for p in target.parent.iterdir()) == ["m.bin"]


def test_disk_full_keeps_old_file_names_target_and_cleans_up(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("precious")
    with pytest.raises(errors.ResourceError) as info:
        atomic_write(target, _disk_full)
    message = str(info.value)
    assert str(target) in message and "no space left" in message and "Errno" not in message
    assert "\n" not in message
    assert errors.exit_code(info.value) == errors.EXIT_RESOURCE
    assert target.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_group_is_all_or_nothing_when_a_write_fails(tmp_path):
    existing = tmp_path / "b.npy"
    existing.write_bytes(b"old b")
    with pytest.raises(errors.ResourceError, match="c.png"):
        with AtomicGroup() as group:
            group.write_bytes(tmp_path / "a.png", b"a")
            group.write_bytes(existing, b"new b")
            group.write(tmp_path / "c.png", _disk_full)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.npy"]
    assert existing.read_bytes() == b"old b"


def test_group_discards_everything_when_the_block_raises(tmp_path):
    with pytest.raises(KeyError):
        with AtomicGroup() as group:
            group.write_bytes(tmp_path / "a.png", b"a")
            raise KeyError("boom")
    assert list(tmp_path.iterdir()) == []


def test_group_writes_every_file_on_success(tmp_path):
    with AtomicGroup() as group:
        group.write_bytes(tmp_path / "a.png", b"a")
        group.write_bytes(tmp_path / "d" / "b.npy", b"b")
    assert (tmp_path / "a.png").read_bytes() == b"a" and (tmp_path / "d" / "b.npy").read_bytes() == b"b"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.png", "b.npy", "d"]


def test_group_failed_rename_takes_back_only_new_files(tmp_path, monkeypatch):
    existing = tmp_path / "b.npy"
    existing.write_bytes(b"old b")
    real_replace = os.replace
    calls = []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 3:
            raise OSError(errno.EIO, "Input/output error")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(errors.ResourceError, match="c.png"):
        with AtomicGroup() as group:
            group.write_bytes(tmp_path / "a.png", b"a")
            group.write_bytes(existing, b"new b")
            group.write_bytes(tmp_path / "c.png", b"c")
    # a.png was created by the group and taken back; b.npy had existed and keeps its (complete) new content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.npy"]


@pytest.mark.parametrize(("exc", "status"), [
    (ValueError("bad"), 2),
    (errors.InputError("bad key"), 2),
    (FileNotFoundError(errno.ENOENT, "No such file", "x.png"), 2),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "d"), 2),
    (OSError(errno.ENOSPC, "No space left on device"), 3),
    (PermissionError(errno.EACCES, "Permission denied", "out"), 3),
    (errors.ResourceError("locked"), 3),
    (MemoryError(), 3),
    (KeyboardInterrupt(), 130),
    (RuntimeError("a bug"), 1),
    (KeyError("a bug"), 1),
])  # fmt: skip
def test_exit_codes(exc, status):
    assert errors.exit_code(exc) == status


def test_describe_os_error_is_one_line_without_errno():
    e = OSError(errno.ENOSPC, "No space left on device")
    line = errors.describe_os_error(e, "runs/x/last.safetensors")
    assert line == "runs/x/last.safetensors: no space left on the device"
    e = PermissionError(errno.EACCES, "Permission denied", "/root/out")
    assert errors.describe_os_error(e) == "/root/out: Permission denied"


# ---------------------------------------------------------------------------------------------- StagedFolder


def _tree(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


def _old_folder(tmp_path):
    target = tmp_path / "data"
    (target / "sub").mkdir(parents=True)
    (target / "sub" / "old.txt").write_text("old")
    return target


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_staged_folder_appears_whole_with_plain_modes(tmp_path, umask):
    target = tmp_path / "new" / "data"
    old = os.umask(umask)
    try:
        with StagedFolder(target) as stage:
            assert stage.path.parent == target.parent and stage.path.name.startswith(".data.staged-")
            stage.write_bytes("a/b/c.bin", b"c")
            stage.write_bytes("top.txt", b"t")
            assert not target.exists()
        (tmp_path / "plain").mkdir()
    finally:
        os.umask(old)
    assert _tree(target) == {"a": None, "a/b": None, "a/b/c.bin": b"c", "top.txt": b"t"}
    assert _mode(target) == _mode(target / "a") == _mode(tmp_path / "plain") == 0o777 & ~umask
    assert _mode(target / "top.txt") == 0o666 & ~umask
    assert sorted(p.name for p in target.parent.iterdir()) == ["data"]


def test_staged_folder_discards_everything_when_the_block_raises(tmp_path):
    target = _old_folder(tmp_path)
    before = _tree(tmp_path)
    for replace in (False, True):
        with pytest.raises(KeyboardInterrupt):
            with StagedFolder(target, replace=replace) as stage:
                stage.write_bytes("new.txt", b"new")
                raise KeyboardInterrupt
        assert _tree(tmp_path) == before


def test_staged_folder_write_error_names_the_final_path(tmp_path, monkeypatch):
    target = _old_folder(tmp_path)
    before = _tree(tmp_path)

    def full_open(path, mode="r", *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("pamm.fs.open", full_open, raising=False)
    with pytest.raises(errors.ResourceError) as info:
        with StagedFolder(target, replace=True) as stage:
            stage.write_bytes("images/1.png", b"x")
    assert str(info.value) == f"could not write {target / 'images/1.png'}: no space left on the device"
    assert errors.exit_code(info.value) == errors.EXIT_RESOURCE
    assert _tree(tmp_path) == before


def test_staged_folder_refuses_an_existing_target_unless_replacing(tmp_path):
    target = _old_folder(tmp_path)
    before = _tree(tmp_path)
    with pytest.raises(FileExistsError, match="left as it is"):
        with StagedFolder(target) as stage:
            stage.write_bytes("new.txt", b"new")
    assert _tree(tmp_path) == before
    with StagedFolder(target, replace=True) as stage:
        stage.write_bytes("new.txt", b"new")
    assert _tree(tmp_path) == {"data": None, "data/new.txt": b"new"}  # the old folder is gone, no leftovers
    (tmp_path / "empty").mkdir()
    with StagedFolder(tmp_path / "empty") as stage:  # an empty folder is simply filled
        stage.write_bytes("x", b"x")
    assert (tmp_path / "empty" / "x").read_bytes() == b"x"


def test_staged_folder_puts_the_old_folder_back_when_the_swap_fails(tmp_path, monkeypatch):
    target = _old_folder(tmp_path)
    before = _tree(tmp_path)
    real_rename, calls = os.rename, []

    def rename(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the old folder was moved aside; moving the new one in fails
            raise OSError(errno.EIO, "Input/output error")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(errors.ResourceError, match="could not move the new folder into place"):
        with StagedFolder(target, replace=True) as stage:
            stage.write_bytes("new.txt", b"new")
    assert _tree(tmp_path) == before


def test_staged_folder_removes_only_stale_leftovers(tmp_path):
    target = tmp_path / "data"
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(finished.stdout)
    host = _host_tag()
    leftovers = {
        f".data.staged-{host}-{dead}-abc": False,  # a killed run of this host: removed
        f".data.staged-{host}-{os.getppid()}-abc": True,  # a live process: kept
        f".data.staged-otherhost-{dead}-abc": True,  # another machine (shared disk): kept
        f".data.replaced-{host}-{dead}-abc": True,  # an old folder while the target is missing: kept
        f".other.staged-{host}-{dead}-abc": True,  # another target: kept
    }
    for name in leftovers:
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_text("x")
    with StagedFolder(target) as stage:
        stage.write_bytes("f", b"f")
    kept = {name for name, keep in leftovers.items() if keep}
    assert {p.name for p in tmp_path.iterdir()} == kept | {"data"}
    with StagedFolder(target, replace=True) as stage:  # now that the target exists, the stale old folder goes
        stage.write_bytes("f", b"f")
    assert {p.name for p in tmp_path.iterdir()} == kept - {f".data.replaced-{host}-{dead}-abc"} | {"data"}


def test_staged_folder_is_flushed_before_it_is_moved_in(tmp_path, monkeypatch):
    import pamm.fs

    events = []
    real_flush, real_rename = pamm.fs._flush_file_system, os.rename
    monkeypatch.setattr(pamm.fs, "_flush_file_system", lambda folder: (events.append("flush"), real_flush(folder)))
    monkeypatch.setattr(os, "rename", lambda a, b: (events.append("rename"), real_rename(a, b)))
    with StagedFolder(tmp_path / "data") as stage:
        stage.write_bytes("a/b.bin", b"b")
    assert events == ["flush", "rename"]


def test_flush_falls_back_to_an_fsync_of_every_file(tmp_path, monkeypatch):
    import ctypes

    import pamm.fs

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.bin").write_bytes(b"x")
    (tmp_path / "y.bin").write_bytes(b"y")

    def no_libc(*args, **kwargs):
        raise OSError("no libc here")

    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    monkeypatch.delattr(os, "sync")
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.fstat(fd).st_ino), real_fsync(fd)))
    pamm.fs._flush_file_system(tmp_path)
    expected = [tmp_path / "y.bin", tmp_path / "d" / "x.bin", tmp_path, tmp_path / "d"]  # files and folders
    assert {p.stat().st_ino for p in expected} <= set(synced)


def test_staged_folder_that_cannot_start_names_the_target(tmp_path, monkeypatch):
    import tempfile

    def refused(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkdtemp", refused)
    with pytest.raises(errors.ResourceError) as info:
        with StagedFolder(tmp_path / "data"):
            pass
    assert str(info.value) == f"could not create {tmp_path / 'data'}: Permission denied"
    assert errors.exit_code(info.value) == errors.EXIT_RESOURCE and list(tmp_path.iterdir()) == []


def test_staged_folder_warns_when_the_replaced_folder_cannot_be_deleted(tmp_path, monkeypatch):
    import shutil

    target = _old_folder(tmp_path)
    real_rmtree = shutil.rmtree

    def stuck(path, *args, **kwargs):
        if ".data.replaced-" in str(path):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", stuck)
    with pytest.warns(UserWarning, match="replaced, but the old folder could not be deleted"):
        with StagedFolder(target, replace=True) as stage:
            stage.write_bytes("new.txt", b"new")
    assert _tree(target) == {"new.txt": b"new"}  # the new folder is in place all the same
