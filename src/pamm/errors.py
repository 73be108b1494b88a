"""Errors a user can cause, and the exit status the ``pamm`` command gives each kind.

Exit statuses (one scheme for every sub-command, documented in the README):

=====  ================================================================================================
0      success
1      an unexpected internal error (a bug): the traceback is printed, please report it
2      a usage or input error the user can fix: a bad argument, config key, dataset, image or checkpoint
       (also ``data check`` finding problems and ``predict`` with inputs that failed); one line names the
       file or key and what was expected
3      a resource or environment error: disk full, out of (GPU) memory, permission denied, a run folder locked by a
       live process, a DataLoader worker killed (out of memory or shared memory)
130    interrupted by SIGINT (Ctrl-C); 143 terminated by SIGTERM
=====  ================================================================================================

Library code raises :class:`InputError` (a ``ValueError``) or :class:`ResourceError` (an ``OSError``) subclasses, or
plain ``ValueError`` / ``OSError``; :func:`exit_code` maps any exception to its status.
"""

from __future__ import annotations

import errno
import signal

__all__ = [
    "PammError", "InputError", "ResourceError", "Interrupted", "Terminated", "exit_code", "describe_os_error",
    "describe", "EXIT_OK", "EXIT_INTERNAL", "EXIT_INPUT", "EXIT_RESOURCE", "EXIT_SIGINT", "EXIT_SIGTERM",
]  # fmt: skip

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_INPUT = 2
EXIT_RESOURCE = 3
EXIT_SIGINT = 130
EXIT_SIGTERM = 143

# errno values that mean "the machine, not the input, is the problem".
_RESOURCE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOMEM, errno.EMFILE,
                    errno.ENFILE, errno.EIO, errno.EBUSY}  # fmt: skip


class PammError(Exception):
    """Base of pamm's own errors; ``exit_status`` is what the command line exits with."""

    exit_status = EXIT_INTERNAL


class InputError(PammError, ValueError):
    """Something the user gave is wrong (file, key, value); the message names it and says what was expected."""

    exit_status = EXIT_INPUT


class ResourceError(PammError, OSError):
    """The environment refused (disk full, permission denied, a lock held by a live process).

    ``ResourceError(message, errno=None)``: ``str()`` is the message alone (no ``[Errno N]`` prefix)."""

    exit_status = EXIT_RESOURCE

    def __init__(self, message: str, errno: int | None = None):
        super().__init__(message)
        self.errno = errno
        self.message = message

    def __str__(self) -> str:
        return self.message


class Interrupted(PammError):
    """Work stopped on a signal (SIGINT or SIGTERM) after saving what it could; ``signal`` is the signal number, the
    message says what was kept, and ``resumable`` whether there is something to continue from."""

    def __init__(self, message: str, signum: int, resumable: bool = True):
        super().__init__(message)
        self.signal = signum
        self.resumable = resumable
        self.exit_status = EXIT_SIGTERM if signum == signal.SIGTERM else EXIT_SIGINT


class Terminated(BaseException):
    """SIGTERM turned into an exception (as SIGINT is a ``KeyboardInterrupt``), so that clean-up code runs; the
    ``pamm`` command raises it from its SIGTERM handler."""


def describe_os_error(e: OSError, path: object | None = None) -> str:
    """One line for an ``OSError``: the file it concerns (``path`` or the error's own) and the system's reason,
    without Python's ``[Errno N]`` prefix."""
    where = path if path is not None else (e.filename if e.filename is not None else None)
    reason = e.strerror or str(e) or type(e).__name__
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        reason = "no space left on the device"
    return f"{where}: {reason}" if where is not None else reason


def _out_of_memory(e: BaseException) -> bool:
    """An accelerator library's out-of-memory error (``torch.OutOfMemoryError``), told by its class name so that this
    module needs no such library."""
    return type(e).__name__ == "OutOfMemoryError"


def describe(e: BaseException) -> str:
    """The message of ``e`` for the user, one line: an ``OSError`` of the system as :func:`describe_os_error` words
    it, an accelerator's out-of-memory error by its first sentence and what to lower, any other error as its own
    message."""
    if isinstance(e, OSError) and not isinstance(e, PammError) and e.strerror:
        return describe_os_error(e)
    if _out_of_memory(e):
        text = " ".join(str(e).split())
        first = text.split(" (GPU ")[0].split(" GPU ")[0].rstrip(".")
        return (
            f"{first}. Lower train.batch_size (eval.batch_size for evaluations), or recompute activations "
            f"(runtime.activation_checkpointing: [backbone, stages])"
        )
    return str(e) or type(e).__name__


def exit_code(e: BaseException) -> int:
    """The exit status for exception ``e`` under the scheme above."""
    if isinstance(e, KeyboardInterrupt):
        return EXIT_SIGINT
    if isinstance(e, Terminated):
        return EXIT_SIGTERM
    if isinstance(e, PammError):
        return e.exit_status
    if isinstance(e, (FileNotFoundError, IsADirectoryError, NotADirectoryError, FileExistsError)):
        return EXIT_INPUT
    if isinstance(e, MemoryError) or _out_of_memory(e):
        return EXIT_RESOURCE
    if isinstance(e, OSError):
        return EXIT_RESOURCE if e.errno in _RESOURCE_ERRNOS or e.errno is None else EXIT_INPUT
    if isinstance(e, ValueError):
        return EXIT_INPUT
    return EXIT_INTERNAL
