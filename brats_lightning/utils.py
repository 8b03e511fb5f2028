"""Small shared helpers: atomic file writes and checked ``torch.load``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "write_text_atomic", "load_torch_file"]


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` when the block succeeds.

    The temporary name keeps ``path``'s suffixes (``x.nii.gz`` -> ``.x.<pid>.tmp.nii.gz``) so that
    writers choosing a format from the name still work. On any error the temporary file is removed
    and ``path`` is left as it was: a reader never sees a half-written file.
    """
    path = Path(path)
    stem, dot, suffix = path.name.partition(".")
    tmp = path.with_name(f".{stem}.{os.getpid()}.tmp{dot}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def load_torch_file(path: str | Path, what: str = "checkpoint") -> Any:
    """``torch.load`` a file on the CPU with ``weights_only=True``, with errors that name the file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file cannot be read (corrupt, not a torch file, or holding arbitrary objects).
    """
    import torch  # here, so that the file helpers above stay light to import

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same message
        raise ValueError(f"{path}: cannot read the {what} ({e})") from e
