"""On-disk cache of preprocessed cases.

Loading a BraTS case (four gzipped NIfTI files), clipping, z-scoring and computing symmetry maps
takes seconds; training reads thousands of slices. So every case is prepared once per
preprocessing configuration (:func:`~brats_lightning.data.preprocess.preprocess_case`) and stored
as memory-mappable ``.npy`` arrays in slice-major layout:

``<cache_dir>/<dataset>-<key>/config.json``
    what produced the folder (:func:`cache_config`: root, layout, modalities, convention, every
    preprocessing and symmetry option, cache and package versions), for people; written once

``<cache_dir>/<dataset>-<key>/<case_id>/``
    ``image.npy``  ``(Z, C, X, Y)`` float16, cropped to the brain's bounding box
    ``label.npy``  ``(Z, X, Y)`` uint8 internal classes (labelled cases only)
    ``mask.npy``   ``(Z, X, Y)`` bool brain mask
    ``index.npy``  int32 flat ``(Z, X, Y)`` offsets of the brain voxels, grouped by class (class 0
                   first; ``meta["label_counts"]`` gives the group sizes): the compact patch index
    ``meta.json``  geometry (box, shapes, affine, orientation, spacing), channels, label counts, the
                   slices holding brain, the size and mtime of every source file (a changed
                   source is re-prepared), and the size and xxh3-64 checksum of every array

``key`` hashes the data root, layout, modalities, convention and every preprocessing option, so a
second run with the same configuration does no work, and a different one never reads stale data.
Each case folder is written under a temporary name and renamed into place (atomic). Nothing per
case is kept in memory: arrays are memory-mapped when first used (shared through the page cache by
every process and rank of a machine), through a bounded cache of open files.

The cache is derived data, so it heals itself: a case whose array file is missing, empty or of
another size than recorded (a truncated copy, a full disk) is prepared again before any work
(:func:`is_fresh`, a ``stat`` per file). An array of the right size whose bytes changed is caught
the first time a process reads it (:meth:`PreparedCase.verify`: its xxh3-64 checksum, about 3 ms
per 65 MB case when the file is in the page cache): the error names the file, and the case is
marked stale so that the next run prepares it again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import xxhash
from pydantic import BaseModel, ConfigDict, Field

from brats_lightning.data.labels import LabelConvention
from brats_lightning.data.preprocess import PreprocessConfig, SymmetryConfig, crop, preprocess_case
from brats_lightning.data.provenance import write_config
from brats_lightning.data.readers import CaseFiles
from brats_lightning.data.splits import CaseId
from brats_lightning.errors import DataError, UserError
from brats_lightning.files import temporary_name
from brats_lightning.schema import Int, Number, parse_json, read_json, validate

__all__ = [
    "CACHE_VERSION",
    "PreparedCase",
    "cache_config",
    "cache_key",
    "write_cache_config",
    "prepare_case",
    "load_prepared",
    "is_fresh",
    "open_array",
    "checksum",
]

log = logging.getLogger(__name__)


class ArrayRecord(BaseModel):
    """What ``meta.json`` records of an array file when it is written: its size and its checksum (both required)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    bytes: Annotated[Int, Field(ge=0)]
    xxh3: Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]


class PreparedMeta(BaseModel):
    """The fields of a prepared case's ``meta.json`` (:mod:`brats_lightning.data.cache`) that training reads."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    case_id: CaseId
    cached_shape: Annotated[list[Annotated[Int, Field(ge=1, le=4096)]], Field(min_length=4, max_length=4)]
    ras_shape: Annotated[list[Annotated[Int, Field(ge=1, le=4096)]], Field(min_length=3, max_length=3)]
    box: Annotated[
        list[Annotated[list[Annotated[Int, Field(ge=0, le=4096)]], Field(min_length=2, max_length=2)]],
        Field(min_length=3, max_length=3),
    ]
    spacing: Annotated[list[Annotated[Number, Field(gt=0, le=100)]], Field(min_length=3, max_length=3)]
    brain_slices: list[Annotated[Int, Field(ge=0, le=4096)]]
    label_counts: list[Annotated[Int, Field(ge=0)]] | None = None
    channels: list[Annotated[str, Field(max_length=64)]] = []
    arrays: dict[Literal["image", "label", "mask", "index"], ArrayRecord]


CACHE_VERSION = 3
#: the arrays of a prepared case (``label`` and ``index`` for labelled cases only)
ARRAYS = ("image", "label", "mask", "index")


def _fd_budget() -> int:
    """How many memory-mapped arrays may stay open (each holds a file descriptor).

    The soft limit on open files is raised to the hard limit when that is possible (1,251 BraTS
    cases need about 5,000 open arrays for patch sampling); a quarter of the limit is kept free.
    """
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        if soft != resource.RLIM_INFINITY and soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        return max(64, int(soft * 3 // 4))
    except (ImportError, ValueError, OSError):
        return 768


@lru_cache(maxsize=_fd_budget())
def open_array(path: str) -> np.ndarray:
    """A read-only memory map of the ``.npy`` file at ``path`` (kept open, least recently used first out)."""
    try:
        # a plain ndarray view of the memmap (it keeps the map alive): indexing it is cheaper
        return np.load(path, mmap_mode="r").view(np.ndarray)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read the prepared array ({e}); delete its case folder to rebuild it") from e


def checksum(array: np.ndarray) -> str:
    """The xxh3-64 hex digest of an array's bytes (C order; a memory map is read once)."""
    return xxhash.xxh3_64_hexdigest(np.ascontiguousarray(array).data)


#: the array files whose checksum this process has verified
_VERIFIED: set[str] = set()


@dataclass
class PreparedCase:
    """A preprocessed case in the cache; its arrays are memory-mapped on first use.

    Attributes:
        case_id: case identifier.
        folder: the case's cache folder.
        meta: geometry and provenance (see the module docstring).
    """

    case_id: str
    folder: Path
    meta: dict = field(repr=False)

    def _array(self, name: str) -> np.ndarray:
        paths = self.__dict__.get("_paths")
        if paths is None:  # built once: path objects cost more than the array access itself
            paths = self.__dict__["_paths"] = {n: str(self.folder / f"{n}.npy") for n in ARRAYS}
        path = paths[name]
        arr = open_array(path)
        if path not in _VERIFIED:
            self.verify(name, arr)
        return arr

    def verify(self, name: str, arr: np.ndarray | None = None) -> None:
        """Check array ``name`` against the checksum recorded when it was written (once per process).

        Raises:
            DataError: the bytes changed since; names the file. The case's ``meta.json`` is removed
                so that the next run prepares it again.
        """
        path = str(self.folder / f"{name}.npy")
        expected = (self.meta.get("arrays") or {}).get(name, {}).get("xxh3")
        if not isinstance(expected, str):  # an array without its checksum is not what prepare_case writes
            (self.folder / "meta.json").unlink(missing_ok=True)
            raise DataError(
                f"{self.folder / 'meta.json'}: records no checksum of {name}.npy, so the array cannot be verified; "
                "the case is marked stale and will be prepared again on the next run"
            )
        arr = open_array(path) if arr is None else arr
        if checksum(arr) != expected:
            (self.folder / "meta.json").unlink(missing_ok=True)
            open_array.cache_clear()
            raise DataError(
                f"{path}: the prepared array does not match the checksum recorded when it was written (the file "
                "was changed or damaged); the case is marked stale and will be prepared again on the next run"
            )
        _VERIFIED.add(path)

    @property
    def image(self) -> np.ndarray:
        """``(Z, C, X, Y)`` float16."""
        return self._array("image")

    @property
    def has_label(self) -> bool:
        return self.meta.get("label_counts") is not None

    @property
    def label(self) -> np.ndarray | None:
        """``(Z, X, Y)`` uint8 internal classes, or ``None``."""
        return self._array("label") if self.has_label else None

    @property
    def mask(self) -> np.ndarray:
        """``(Z, X, Y)`` bool brain mask."""
        return self._array("mask")

    @property
    def index(self) -> np.ndarray:
        """int32 flat offsets of the brain voxels grouped by class (see :attr:`class_starts`)."""
        return self._array("index")

    @property
    def class_starts(self) -> np.ndarray:
        """``K + 1`` offsets into :attr:`index`: class ``k`` is ``index[starts[k]:starts[k + 1]]``."""
        return np.concatenate([[0], np.cumsum(self.meta["label_counts"])]).astype(np.int64)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(Z, C, X, Y)`` of :attr:`image` (from the metadata, without opening it)."""
        return tuple(self.meta["cached_shape"])

    @property
    def brain_slices(self) -> list[int]:
        """Axial slices (indices into axis 0 of :attr:`image`) that hold brain."""
        return list(self.meta["brain_slices"])

    @property
    def box(self) -> tuple[tuple[int, int], ...]:
        """The crop box in RAS voxel indices ``((x0, x1), (y0, y1), (z0, z1))``."""
        return tuple(tuple(b) for b in self.meta["box"])

    @property
    def ras_shape(self) -> tuple[int, int, int]:
        return tuple(self.meta["ras_shape"])

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(self.meta["spacing"])


def cache_config(
    root: str | Path,
    layout: str,
    modalities: Sequence[str],
    convention: str,
    prep: PreprocessConfig,
    sym: SymmetryConfig,
) -> dict[str, Any]:
    """Everything that changes the prepared arrays: what :func:`cache_key` hashes, and the folder's ``config.json``."""
    return {
        "cache_version": CACHE_VERSION,
        "root": str(Path(root).resolve()),
        "layout": layout,
        "modalities": list(modalities),
        "convention": convention,
        "preprocess": prep.to_dict(),
        "symmetry": sym.key_dict(),
    }


def cache_key(
    root: str | Path,
    layout: str,
    modalities: Sequence[str],
    convention: str,
    prep: PreprocessConfig,
    sym: SymmetryConfig,
) -> str:
    """A short hash of everything that changes the prepared arrays (:func:`cache_config`)."""
    return _key(cache_config(root, layout, modalities, convention, prep, sym))


def _key(config: dict[str, Any]) -> str:
    """The hash of a :func:`cache_config` (``cache_version`` spelt ``version``, so existing caches keep their keys)."""
    payload = {k: v for k, v in config.items() if k != "cache_version"} | {"version": config["cache_version"]}
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:10]


def write_cache_config(out_dir: Path, config: dict[str, Any]) -> Path:
    """Write the readable ``config.json`` of a prepared folder (once; see :mod:`~brats_lightning.data.provenance`).

    Args:
        out_dir: the prepared folder (``<cache_dir>/prepared/<dataset>-<key>``).
        config: its :func:`cache_config`.
    """
    return write_config(out_dir, "prepared cases (brats_lightning.data.cache)", {"key": _key(config), **config})


def _sources(case: CaseFiles) -> dict[str, list]:
    files = dict(case.images)
    if case.label is not None:
        files["label"] = case.label
    if case.mask is not None:
        files["mask"] = case.mask
    out = {}
    for k, p in files.items():
        st = Path(p).stat()
        out[k] = [str(Path(p).resolve()), st.st_size, int(st.st_mtime)]
    return out


def is_fresh(folder: Path, case: CaseFiles) -> bool:
    """Whether ``folder`` holds a complete prepared case of this cache version whose sources are unchanged
    and whose array files all have the size recorded when they were written (a ``stat`` each)."""
    meta_file = folder / "meta.json"
    if not meta_file.is_file():
        return False
    try:
        # bounded: a record nested too deep or too large is derived data to rebuild, not a crash
        meta = parse_json(meta_file.read_text(), meta_file, "case record", DataError)
        if not isinstance(meta, dict) or meta.get("cache_version") != CACHE_VERSION:
            return False
        if meta.get("sources") != _sources(case):
            return False
        # the record load_prepared will accept, of this very case (the cache is derived data: a record that
        # describes another case, or has the wrong shape, is rebuilt rather than refused)
        checked = validate(PreparedMeta, meta, meta_file, DataError)
        if checked.case_id != folder.name:
            log.warning("%s describes case %r; the case is prepared again", meta_file, checked.case_id)
            return False
        arrays = meta.get("arrays")
        if not isinstance(arrays, dict) or "image" not in arrays or "mask" not in arrays:
            return False
        for name, rec in arrays.items():
            if name not in ARRAYS or not isinstance(rec, dict) or not isinstance(rec.get("xxh3"), str):
                log.warning("%s: meta.json records no checksum of %s.npy; the case is prepared again", folder, name)
                return False
            if (folder / f"{name}.npy").stat().st_size != rec.get("bytes"):
                log.warning("%s: %s.npy is missing, empty or truncated; the case is prepared again", folder, name)
                return False
        return True
    except (OSError, ValueError, AttributeError, TypeError, UserError):
        return False


def prepare_case(
    case: CaseFiles,
    folder: Path,
    convention: LabelConvention,
    prep: PreprocessConfig,
    sym: SymmetryConfig,
) -> Path:
    """Preprocess one case and store it, cropped, in ``folder`` (written atomically).

    Raises:
        DataError: unreadable or inconsistent files, an empty image, unknown label values.
    """
    p = preprocess_case(case, convention, prep, sym)
    tmp = temporary_name(folder)  # named by host and process: a killed writer's is removed by the next run
    tmp.mkdir(parents=True)
    try:
        image = np.ascontiguousarray(crop(p.image, p.box).transpose(3, 0, 1, 2), dtype=np.float16)
        mask = np.ascontiguousarray(crop(p.mask, p.box).transpose(2, 0, 1))
        arrays = {"image": image, "mask": mask}
        meta = {
            **p.meta,
            "cache_version": CACHE_VERSION,
            "sources": _sources(case),
            "cached_shape": list(image.shape),
            "brain_slices": np.flatnonzero(mask.any(axis=(1, 2))).tolist(),
        }
        if p.label is not None:
            label = np.ascontiguousarray(crop(p.label, p.box).transpose(2, 0, 1))
            brain = np.flatnonzero(mask.ravel())
            # brain voxels grouped by class (a stable sort keeps them in scan order within a class)
            index = brain[np.argsort(label.ravel()[brain], kind="stable")].astype(np.int32)
            arrays |= {"label": label, "index": index}
        meta["arrays"] = {}
        for name, arr in arrays.items():
            np.save(tmp / f"{name}.npy", arr)
            meta["arrays"][name] = {"bytes": (tmp / f"{name}.npy").stat().st_size, "xxh3": checksum(arr)}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_prepared(folder: str | Path) -> PreparedCase:
    """Open a prepared case (its metadata only; arrays are mapped on first use)."""

    folder = Path(folder)
    meta = read_json(folder / "meta.json", "prepared case's metadata", DataError)
    checked = validate(PreparedMeta, meta, folder / "meta.json", DataError)
    if checked.case_id != folder.name:
        raise DataError(f"{folder / 'meta.json'}: describes case {checked.case_id!r}, not {folder.name!r}")
    return PreparedCase(checked.case_id, folder, meta)
