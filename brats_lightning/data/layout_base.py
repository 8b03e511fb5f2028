"""The base of every data set layout: :class:`Layout` (which files of a folder make a case) and :class:`BadCase` (a case
that cannot be used, and why). The layouts themselves, and the registry, are :mod:`brats_lightning.data.layouts`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from brats_lightning.data.readers import CaseFiles, file_problem
from brats_lightning.errors import DataError

__all__ = ["BadCase", "Layout"]


@dataclass(frozen=True)
class BadCase:
    """A case folder that cannot be used, and why (reported by the commands, never skipped silently).

    Attributes:
        case_id: the folder's name.
        reason: what is wrong, naming the file.
        missing: the required sequences it lacks, when that is what is wrong (``("t2",)``).
    """

    case_id: str
    reason: str
    missing: tuple[str, ...] = ()


class MissingSequenceError(DataError):
    """A case lacks a required sequence's image (:attr:`sequence`)."""

    def __init__(self, message: str, sequence: str) -> None:
        super().__init__(message)
        self.sequence = sequence


class Layout:
    """How one kind of data set names its files. Subclasses implement :meth:`files`."""

    name: str = ""
    #: default label convention of the layout's segmentations
    convention: str = "brats2017"
    #: how the expected files are described in error messages
    example: str = ""

    def files(self, case_dir: Path) -> dict[str, Path]:
        """The recognised files of ``case_dir``: modality names, ``"label"`` and ``"mask"`` -> path."""
        raise NotImplementedError

    def expected(self, case_dir: Path, key: str) -> str:
        """The file name expected for ``key`` (for error messages)."""
        return key

    def matches(self, case_dir: Path) -> bool:
        """Whether ``case_dir`` holds at least one file named in this layout."""
        return bool(self.files(case_dir))

    def case(self, case_dir: Path, modalities: Sequence[str], optional: Sequence[str] = ()) -> CaseFiles:
        """The case's files; every modality must be there but those in ``optional`` (the label and mask are
        optional too); at least one modality must be.

        Raises:
            DataError: a required modality is missing (or every one), or a file is a directory or a
                broken symbolic link.
        """
        found = self.files(case_dir)
        images = {}
        for m in modalities:
            if m not in found:
                if m in optional:
                    continue
                raise MissingSequenceError(f"{case_dir}: missing {m} image (expected {self.expected(case_dir, m)})", m)
            images[m] = found[m]
        if modalities and not images:
            raise DataError(f"{case_dir}: no image of any of {list(modalities)} (expected e.g. {self.example})")
        for p in (*images.values(), found.get("label"), found.get("mask")):
            problem = file_problem(p) if p is not None else None
            if problem:
                raise DataError(problem)
        return CaseFiles(case_dir.name, images, found.get("label"), self.name, found.get("mask"), case_dir)
