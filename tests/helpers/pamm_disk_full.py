"""Run the ``pamm`` command on a disk that fills up: every file ``pamm.fs`` writes counts against a byte budget, and
the write that exceeds it stores what still fits and fails with ENOSPC, as a full file system does.

usage: python pamm_disk_full.py BUDGET_BYTES PAMM_ARGS...   (exits with the command's exit status)
"""

from __future__ import annotations

import builtins
import errno
import sys

import pamm.fs
from pamm.cli import main


class _FillingFile:
    """A binary file whose writes draw on the shared budget."""

    def __init__(self, file, budget: list[int]):
        self._file, self._budget = file, budget

    def write(self, data) -> int:
        room = max(self._budget[0], 0)
        if len(data) > room:
            self._file.write(bytes(data[:room]))
            self._budget[0] = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self._budget[0] -= len(data)
        return self._file.write(data)

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()


def fill_after(budget_bytes: int):
    """An ``open`` replacement for ``pamm.fs``: writing files share ``budget_bytes``."""
    budget = [int(budget_bytes)]

    def filling_open(file, mode="r", *args, **kwargs):
        handle = builtins.open(file, mode, *args, **kwargs)
        return _FillingFile(handle, budget) if any(m in mode for m in "wax+") else handle

    return filling_open


if __name__ == "__main__":
    pamm.fs.open = fill_after(int(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))
