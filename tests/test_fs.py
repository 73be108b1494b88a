"""Safe writes (`pamm.fs`) and the exit-status scheme (`pamm.errors`)."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from pamm import errors
from pamm.fs import AtomicGroup, atomic_write, atomic_write_bytes, atomic_write_text, current_umask


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
