"""User errors, and the command-line wrapper that shows them as one plain line.

A :class:`UserError` is a problem with what the user gave (a file, a folder, an option, a
checkpoint): its message names the file or option and says what is wrong, and the commands print it
without a traceback and exit with status 2. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import re
import sys
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = [
    "UserError",
    "DataError",
    "ConfigError",
    "CheckpointError",
    "OutputError",
    "disk_full",
    "output_error",
    "find_user_error",
    "one_line",
    "cli",
]

F = TypeVar("F", bound=Callable[..., Any])


class UserError(Exception):
    """A problem with the user's input; the message names the file or option and the problem."""


class DataError(UserError, ValueError):
    """A data folder or file is missing, unreadable or inconsistent; the message names the path."""


class ConfigError(UserError, ValueError):
    """An option has a value that cannot work; the message names the option."""


class CheckpointError(UserError, ValueError):
    """A checkpoint is missing, unreadable, not ours, or does not fit the model; the message names the path."""


class OutputError(UserError):
    """An output cannot be written where it was asked for (a full disk, an input folder); the message names the path."""


#: ``errno`` values of a write that failed for lack of space (disk full, quota exceeded, file too large)
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def disk_full(error: BaseException, path: object) -> OutputError | None:
    """An :class:`OutputError` naming ``path`` if ``error`` is a write that failed for lack of space, else ``None``."""
    if isinstance(error, OSError) and error.errno in DISK_FULL:
        return OutputError(f"{path}: {os.strerror(error.errno or errno.ENOSPC)}: cannot write it")
    return None


#: ``errno`` values of a write refused by the file system (no permission, read-only)
NOT_WRITABLE = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


def output_error(error: OSError, path: object) -> OutputError | OSError:
    """An :class:`OutputError` naming ``path`` and the cause for a write that failed for lack of space (ENOSPC,
    EDQUOT, EFBIG) or of permission (EACCES, EPERM, EROFS); any other ``OSError`` as it was (a bug, or a fault
    to see whole)."""
    full = disk_full(error, path)
    if full is not None:
        return full
    if error.errno in NOT_WRITABLE:
        return OutputError(f"{path}: {os.strerror(error.errno or errno.EACCES)}: cannot write it")
    return error


def find_user_error(exc: BaseException | None) -> UserError | None:
    """The :class:`UserError` behind ``exc`` (itself or a cause, e.g. inside Hydra's ``InstantiationException``)."""
    from omegaconf.errors import MissingMandatoryValue

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, UserError):
            return exc
        if isinstance(exc, MissingMandatoryValue):  # a required option (``???``) was not given
            return ConfigError(f"missing option: {exc.full_key} must be given on the command line ({exc.full_key}=...)")
        exc = exc.__cause__ or exc.__context__
    return None


def one_line(error: UserError) -> str:
    """The message of ``error``; for one raised in a data-loader worker (which torch re-raises with the
    worker's traceback in its message), the original message alone."""
    text = str(error)
    if "\nOriginal Traceback" in text:
        last = text.strip().splitlines()[-1]
        return re.sub(r"^[\w.]+(Error|Exception): ", "", last)
    return text


def _file_size_limit_is_an_error() -> None:
    """A write past the file-size limit (``ulimit -f``) fails with EFBIG, named like a full disk, instead of the
    SIGXFSZ that kills the process (and leaves its data-loader workers waiting)."""
    import signal
    import threading

    if hasattr(signal, "SIGXFSZ") and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def cli(fn: F) -> F:
    """Run a command's main function; a :class:`UserError` becomes ``error: <message>`` on stderr and exit 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _file_size_limit_is_an_error()
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - user errors are shown plainly, anything else re-raised
            user = find_user_error(e)
            if user is None:
                raise
            logging.getLogger("brats_lightning").debug("user error", exc_info=True)
            print(f"error: {one_line(user)}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper  # type: ignore[return-value]
