"""A readable ``config.json`` at the root of a generated folder (prepared cache, split): what produced it.

The folder's name holds a hash of the same settings (its identity); the file is for people, so it
is written once, when the folder is first produced, and never rewritten: ``package_version`` is
the version that produced the folder, not the last one that read it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from brats_lightning.files import write_text_atomic

__all__ = ["CONFIG_FILE", "package_version", "write_config"]

CONFIG_FILE = "config.json"


def package_version() -> str:
    """The installed ``brats_lightning`` version (``"unknown"`` when it is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("brats_lightning")
    except PackageNotFoundError:
        return "unknown"


def write_config(folder: str | Path, what: str, config: dict[str, Any]) -> Path:
    """Write ``folder/config.json`` (atomically) unless it exists already.

    Args:
        folder: the generated folder (created if needed).
        what: a short description of the folder's content, stored as ``"what"``.
        config: JSON-serialisable settings that determine the folder's content.

    Returns:
        The file's path.
    """
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"what": what, **config, "package_version": package_version()}
        write_text_atomic(path, json.dumps(doc, indent=1) + "\n")
    return path
