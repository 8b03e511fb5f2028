"""Small shared helpers: atomic file writes and checked ``torch.load``."""

from __future__ import annotations

import os
import re
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_path",
    "remove_stale_temporaries",
    "temporary_name",
    "write_csv_atomic",
    "write_text_atomic",
    "load_torch_file",
    "read_checkpoint",
]

_HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname().split(".")[0]) or "host"
_TMP_NAME = re.compile(r"^\.(?P<stem>.+)\.(?P<host>.+)-(?P<pid>\d+)\.tmp(\..*)?$")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` when the block succeeds.

    The temporary name keeps ``path``'s suffixes (``x.nii.gz`` -> ``.x.<pid>.tmp.nii.gz``) so that
    writers choosing a format from the name still work. On any error the temporary file is removed
    and ``path`` is left as it was: a reader never sees a half-written file.
    """
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def temporary_name(path: str | Path) -> Path:
    """The temporary name of ``path`` while it is written (a file, or a folder written whole): hidden, beside it,
    with this host and process in it (``x.nii.gz`` -> ``.x.<host>-<pid>.tmp.nii.gz``), so that
    :func:`remove_stale_temporaries` can tell a killed writer's leftovers from a running writer's."""
    path = Path(path)
    stem, dot, suffix = path.name.partition(".")
    return path.with_name(f".{stem}.{_HOST}-{os.getpid()}.tmp{dot}{suffix}")


def remove_stale_temporaries(folder: str | Path, max_age_s: float = 86400.0) -> list[Path]:
    """Remove the temporary files (and folders) that :func:`atomic_path` and the writers using
    :func:`temporary_name` left in ``folder`` when they were killed.

    A temporary file is stale when its writer (host and process id are in its name) is no longer
    running on this host, or, for another host's, when it is older than ``max_age_s``.

    Returns:
        The files removed.
    """
    import time

    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = _TMP_NAME.match(p.name)
        if m is None or p.is_symlink() or not (p.is_file() or p.is_dir()):
            continue
        if m["host"] == _HOST:
            stale = not _pid_alive(int(m["pid"]))
        else:
            stale = time.time() - p.stat().st_mtime > max_age_s
        if stale:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_csv_atomic(path: str | Path, rows: list[dict], columns: list[str]) -> None:
    """Write ``rows`` as CSV with ``columns`` (floats with 6 significant digits) through a temporary file."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
    write_text_atomic(path, buf.getvalue())


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def load_torch_file(path: str | Path, what: str = "checkpoint") -> Any:
    """``torch.load`` a file on the CPU with ``weights_only=True`` (whatever the environment says).

    Only tensors and plain values can be read back, so a file cannot run code. Errors name the
    file and say what is wrong with it.

    Raises:
        CheckpointError: the file is missing, empty, truncated or corrupt, not a torch file, or
            holding Python objects other than tensors and plain values.
    """
    import pickle

    import torch  # here, so that the file helpers above stay light to import

    from brats_lightning.errors import CheckpointError

    path = Path(path)
    if not path.is_file():
        kind = "is a directory" if path.is_dir() else "not found"
        raise CheckpointError(f"{path}: {what} {kind}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the {what} is empty (0 bytes; was its run killed while saving it?)")
    try:
        # weights_only=True passed explicitly: TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD cannot turn it off
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        code = _named_callable(str(e)) or _pickled_globals(path)
        if code is not None:
            raise CheckpointError(
                f"{path}: the {what} holds Python objects that could run code ({code}); it is not loaded. "
                "brats_lightning checkpoints hold only tensors and plain values."
            ) from e
        raise CheckpointError(f"{path}: cannot read the {what}: not a torch file, or a corrupt one") from e
    except RecursionError as e:
        raise CheckpointError(f"{path}: cannot read the {what}: nested too deeply (not a file we wrote)") from e
    except Exception as e:  # noqa: BLE001 - whatever torch raises on a bad file, the message names it
        msg = _first_line(e).split(". ")[0]
        if "central directory" in msg or "zip archive" in msg or isinstance(e, EOFError):
            raise CheckpointError(f"{path}: the {what} is truncated or corrupt ({msg})") from e
        raise CheckpointError(f"{path}: cannot read the {what}: not a torch file ({type(e).__name__}: {msg})") from e


#: what torch's weights-only unpickler says when a file names a class or function (any torch version since 2.4):
#: "Unsupported global: GLOBAL x.y ...", "Trying to load unsupported GLOBAL x.y whose module x is blocked",
#: "Trying to call reduce for unrecognized function ...", "... unsupported class ..."
_CALLABLE = re.compile(
    r"GLOBAL\s+(?P<name>[\w.]+)|reduce for unrecognized function\s+(?P<fn>\S+)|unsupported class", re.I
)


def _named_callable(message: str) -> str | None:
    """The class or function an unpickling refusal names (``"a class or function"`` when it does not say)."""
    m = _CALLABLE.search(message)
    if m is None:
        return None
    name = (m["name"] or m["fn"] or "").strip("<>'\".,")
    return f"it names {name}" if name else "it names a class or function"


def _pickled_globals(path: Path) -> str | None:
    """The classes or functions a pickle stream names (a torch zip's ``data.pkl`` or a plain pickle), found
    by reading its opcodes without executing any (``pickletools``); ``None`` when it names none or cannot be read."""
    import pickletools
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                name = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
                data = z.read(name) if name else b""
        else:
            data = path.read_bytes()
        names: list[str] = []
        strings: list[str] = []
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("GLOBAL", "INST") and isinstance(arg, str):
                names.append(arg.replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
    except Exception:  # noqa: BLE001 - a stream pickletools cannot walk is simply corrupt
        return None
    unexpected = [n for n in dict.fromkeys(names) if not n.startswith(("torch.", "collections.OrderedDict"))]
    return f"it names {', '.join(unexpected[:3])}" if unexpected else None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def read_checkpoint(path: str | Path, what: str = "checkpoint") -> dict[str, Any]:
    """The checkpoint at ``path`` as a dict (``weights_only=True``); it must hold a state dict.

    Raises:
        CheckpointError: missing, empty, truncated or foreign file, or no state dict.
    """
    from brats_lightning.errors import CheckpointError

    ckpt = load_torch_file(path, what)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(f"{path}: not a Lightning checkpoint (it holds no state_dict)")
    return ckpt
