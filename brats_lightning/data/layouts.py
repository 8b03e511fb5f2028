"""Data set layouts: which files of a folder make a case, and every case of a data set.

A *layout* knows how one kind of data set names its files (BraTS 2012-2015 VSD folders, BraTS 2017-2021,
BraTS 2023+, or glob patterns for anything else; data sets described by a ``dataset.json``, MSD and nnU-Net, are
:mod:`brats_lightning.data.dataset_json`'s). Adding a layout touches this file only: an entry of :data:`LAYOUTS`.
Reading the files is :mod:`brats_lightning.data.readers`' job; the base class is
:mod:`brats_lightning.data.layout_base`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from brats_lightning.data.dataset_json import DATASET_JSON, DatasetJsonLayout, MSDLayout, NNUNetLayout
from brats_lightning.data.layout_base import BadCase, Layout, MissingSequenceError
from brats_lightning.data.readers import IMAGE_EXTENSIONS, MODALITIES, CaseFiles
from brats_lightning.errors import DataError

__all__ = [
    "BadCase",
    "Layout",
    "PatternLayout",
    "SuffixLayout",
    "LAYOUTS",
    "get_layout",
    "discover_cases",
    "detect_layout",
    "declared_convention",
    "dataset_convention",
    "DatasetJsonLayout",
    "FLAT_LAYOUTS",
]

_NIFTI_EXT = (".nii.gz", ".nii")


class SuffixLayout(Layout):
    """``<case>/<case><sep><suffix>.nii.gz`` (BraTS 2017-2021 and 2023+).

    Args:
        name: the layout's name (``data.layout=<name>``).
        sep: between the case name and the suffix (``_``, ``-``).
        suffixes: modality, ``"label"`` or ``"mask"`` -> file suffix.
        convention: label convention of its segmentations.
        example: the expected file names, for error messages.
    """

    def __init__(self, name: str, sep: str, suffixes: dict[str, str], convention: str, example: str) -> None:
        self.name, self.sep, self.suffixes, self.convention, self.example = name, sep, suffixes, convention, example

    def files(self, case_dir: Path) -> dict[str, Path]:
        out = {}
        for key, suffix in self.suffixes.items():
            for ext in _NIFTI_EXT:
                p = case_dir / f"{case_dir.name}{self.sep}{suffix}{ext}"
                if p.exists() or p.is_symlink():  # a directory or broken link is reported by case()
                    out[key] = p
                    break
        return out

    def expected(self, case_dir: Path, key: str) -> str:
        return f"{case_dir.name}{self.sep}{self.suffixes.get(key, key)}.nii.gz"


class _VSDLayout(Layout):
    """BRATS 2012-2015 (VSD): ``<case>/VSD.Brain.XX.O.MR_Flair.<id>/VSD.Brain.XX.O.MR_Flair.<id>.mha``.

    Modalities are recognised by their tag (``MR_Flair``, ``MR_T1``, ``MR_T1c``, ``MR_T2``; ground
    truth ``OT``), ``.mha`` files directly in the case folder or one level below it.
    """

    name = "brats2013"
    convention = "brats2013"
    example = "<case>/VSD.Brain.XX.O.MR_Flair.<id>/VSD.Brain.XX.O.MR_Flair.<id>.mha"
    _tags = {"mr_flair": "flair", "mr_t1": "t1", "mr_t1c": "t1c", "mr_t2": "t2", "ot": "label"}

    def files(self, case_dir: Path) -> dict[str, Path]:
        out: dict[str, Path] = {}
        for p in sorted([*case_dir.glob("*.mha"), *case_dir.glob("*/*.mha")]):
            for part in p.stem.split("."):
                key = self._tags.get(part.lower())
                if key is not None:
                    out.setdefault(key, p)
                    break
        return out

    def expected(self, case_dir: Path, key: str) -> str:
        tag = {v: k for k, v in self._tags.items()}.get(key, key)
        return f"a VSD.*.{tag.upper().replace('MR_T1C', 'MR_T1c').replace('MR_FLAIR', 'MR_Flair')}.*.mha file"


class PatternLayout(Layout):
    """A generic layout: each modality (and ``label``, ``mask``) is a glob pattern in the case folder.

    Patterns may use ``{case}`` for the folder name, e.g.
    ``{"flair": "Flair_*.nii.gz", "t1c": "T1c_*.nii.gz", "label": "OTMultiClass.nii.gz",
    "mask": "brainmask.nii.gz"}`` for DeepMedic's BraTS 2015 examples.
    """

    name = "generic"

    def __init__(self, patterns: dict[str, str], convention: str = "brats2017") -> None:
        if not patterns:
            raise DataError("the generic layout needs data.files: a filename pattern per modality")
        self.patterns = dict(patterns)
        self.convention = convention
        self.example = ", ".join(f"{k}: {v}" for k, v in self.patterns.items())

    def files(self, case_dir: Path) -> dict[str, Path]:
        out = {}
        for key, pattern in self.patterns.items():
            hits = sorted(case_dir.glob(pattern.replace("{case}", case_dir.name)))
            if len(hits) > 1:
                raise DataError(f"{case_dir}: pattern {pattern!r} for {key} matches {len(hits)} files: {hits[:3]}")
            if hits:
                out[key] = hits[0]
        return out

    def expected(self, case_dir: Path, key: str) -> str:
        return self.patterns.get(key, f"a pattern for {key} in data.files").replace("{case}", case_dir.name)


def _flat_layout_of(root: Path) -> DatasetJsonLayout | None:
    """The dataset.json layout of ``root`` (MSD or nnU-Net), or ``None`` when there is no dataset.json.

    Raises:
        DataError: a dataset.json that says neither (no ``modality`` nor ``channel_names``).
    """
    task = DatasetJsonLayout.task_folder(root)
    if task is None or not ((task / "imagesTr").is_dir() or (task / "imagesTs").is_dir()):
        return None
    doc = FLAT_LAYOUTS["msd"].read_json(task)
    if "channel_names" in doc:
        return FLAT_LAYOUTS["nnunet"]
    if "modality" in doc:
        return FLAT_LAYOUTS["msd"]
    raise DataError(
        f"{task / DATASET_JSON}: neither an MSD (modality) nor an nnU-Net (channel_names) dataset description"
    )


def declared_convention(root: str | Path) -> str | None:
    """The label convention a folder's ``dataset.json`` declares (a task folder, or its ``imagesTr`` / ``labelsTr``),
    or ``None`` when there is none.

    Raises:
        DataError: a ``dataset.json`` whose labels no convention has, or that is not a dataset description.
    """
    root = Path(root)
    task = DatasetJsonLayout.task_folder(root)
    if task is None:
        return None
    layout = _flat_layout_of(root) or FLAT_LAYOUTS["msd"]
    return layout.declared_convention(task, layout.read_json(task))


#: label files read to tell BraTS 2024's post-treatment labels (with a resection cavity, 4) from 2023's
CONVENTION_SAMPLE = 16


def dataset_convention(root: str | Path | None, layout: str = "auto", sample: int = CONVENTION_SAMPLE) -> str:
    """The label convention of a data set, for ``data.convention`` left to the data set (``data=brats``): its
    ``dataset.json``'s, else its layout's; a BraTS 2023-named folder whose label files hold 4 (up to ``sample`` of
    them read, spread over the cases) is BraTS 2024's post-treatment set. A root that cannot be read yet gives
    ``brats2017``: the data module names the problem when it reads the folder.
    """
    if root in (None, "", "null"):
        return "brats2017"
    try:
        declared = declared_convention(root)
        if declared is not None:
            return declared
        lay = detect_layout(root) if layout in ("auto", "", None) else get_layout(str(layout))
        if lay.convention != "brats2023":
            return lay.convention
        cases = discover_cases(root, lay, modalities=(), problems=[])
    except (DataError, OSError):
        return "brats2017"
    from brats_lightning.data.readers import read_label

    labelled = [c.label for c in cases if c.label is not None]
    step = max(1, len(labelled) // max(1, sample))
    for path in labelled[::step][:sample]:
        try:
            if (read_label(path)[0] == 4).any():
                return "brats2024"
        except DataError:
            continue
    return "brats2023"


LAYOUTS: dict[str, Layout] = {
    "brats2018": SuffixLayout(
        "brats2018",
        "_",
        {"flair": "flair", "t1": "t1", "t1c": "t1ce", "t2": "t2", "label": "seg"},
        "brats2017",
        "<case>/<case>_flair.nii.gz",
    ),
    "brats2023": SuffixLayout(
        "brats2023",
        "-",
        {"flair": "t2f", "t1": "t1n", "t1c": "t1c", "t2": "t2w", "label": "seg"},
        "brats2023",
        "<case>/<case>-t2f.nii.gz",
    ),
    "brats2013": _VSDLayout(),
    "msd": MSDLayout(),
    "nnunet": NNUNetLayout(),
}
#: the layouts whose cases are files described by a dataset.json
FLAT_LAYOUTS: dict[str, DatasetJsonLayout] = {
    n: lay for n, lay in LAYOUTS.items() if isinstance(lay, DatasetJsonLayout)
}


def _check_root(root: Path) -> None:
    if not root.exists():
        raise DataError(f"data root {root} does not exist")
    if not root.is_dir():
        raise DataError(f"data root {root} is not a folder")


def _subdirs(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_in(d: Path) -> list[str]:
    """Names of the image files directly in ``d``."""
    return sorted(
        p.name for p in d.iterdir() if p.name.lower().endswith(IMAGE_EXTENSIONS) and not p.name.startswith(".")
    )


def _case_dirs(root: Path, layout: Layout, depth: int = 3) -> tuple[list[Path], list[BadCase]]:
    """Folders under ``root`` (down to ``depth`` levels, e.g. ``HGG/<case>``) that hold this layout's files.

    Returns:
        The case folders, and the folders that hold image files named otherwise (reported, not skipped
        silently: e.g. a folder renamed without renaming its files).
    """
    out, bad, level = [], [], _subdirs(root)
    for _ in range(depth):
        nxt = []
        for d in level:
            try:
                matched = layout.matches(d)
            except DataError as e:  # e.g. a generic pattern matching several files
                bad.append(BadCase(d.name, str(e)))
                continue
            if matched:
                out.append(d)
                continue
            images = _images_in(d)
            if images:
                shown = ", ".join(images[:4]) + (", ..." if len(images) > 4 else "")
                bad.append(
                    BadCase(
                        d.name,
                        f"{d}: holds {shown} but no file named as the {layout.name} layout expects "
                        f"({layout.expected(d, 'flair') if layout.name != 'generic' else layout.example})",
                    )
                )
            else:
                nxt.append(d)
        level = [s for d in nxt for s in _subdirs(d)]
        if not level:
            break
    return sorted(out, key=lambda p: p.name), bad


def get_layout(name: str, files: dict[str, str] | None = None, convention: str = "brats2017") -> Layout:
    """A layout by name (``generic`` is built from ``files``)."""
    if name == "generic":
        return PatternLayout(files or {}, convention)
    if name not in LAYOUTS:
        raise DataError(f"unknown layout {name!r}; expected 'auto', 'generic' or one of {sorted(LAYOUTS)}")
    return LAYOUTS[name]


def detect_layout(root: str | Path) -> Layout:
    """Detect the layout of a data root from its case folders.

    Raises:
        DataError: the folder is empty, matches no layout, or matches several.
    """
    root = Path(root)
    _check_root(root)
    flat = _flat_layout_of(root)
    if flat is not None:
        return flat
    top = _subdirs(root)
    if not top:
        found = sorted(p.name for p in root.iterdir())[:10]
        raise DataError(
            f"no case folders in {root} (found {found or 'nothing'}); expected one folder per case: "
            + "; ".join(f"{lay.example} ({n})" for n, lay in LAYOUTS.items())
        )
    hits = {name: len(_case_dirs(root, layout)[0]) for name, layout in LAYOUTS.items() if name not in FLAT_LAYOUTS}
    matched = [n for n, h in hits.items() if h]
    if len(matched) == 1:
        return LAYOUTS[matched[0]]
    if not matched:
        example = sorted(f.name for f in top[0].iterdir())[:8]
        raise DataError(
            f"cannot detect the layout of {root}: no folder matches a known layout. First folder {top[0].name} "
            f"holds {example}; expected "
            + "; ".join(f"{lay.example} ({n})" for n, lay in LAYOUTS.items())
            + ", or data.layout=generic with data.files patterns"
        )
    raise DataError(f"{root} is ambiguous: folders match layouts {matched} ({hits}); set data.layout explicitly")


def discover_cases(
    root: str | Path,
    layout: str | Layout = "auto",
    modalities: Sequence[str] = MODALITIES,
    files: dict[str, str] | None = None,
    problems: list[BadCase] | None = None,
    optional: Sequence[str] = (),
) -> list[CaseFiles]:
    """Find every case under ``root`` (case folders may sit in sub-folders such as ``HGG/``, ``LGG/``).

    A case folder that cannot be used (a missing modality, a directory or broken symbolic link where
    a file should be, image files named for another case) is a *bad case*. With ``problems`` given,
    bad cases are appended to it and the good ones returned (prediction and evaluation do every case
    they can); without it, any bad case is an error that lists them all.

    Args:
        root: folder holding the case folders.
        layout: a key of :data:`LAYOUTS`, ``"generic"`` (with ``files``), ``"auto"`` to detect it
            (``generic`` when ``files`` is given), or a :class:`Layout`.
        modalities: canonical modalities every case must have.
        files: the generic layout's patterns.
        problems: where to collect bad cases instead of raising.
        optional: modalities a case may lack (``predict`` of a model trained with ``data.modality_dropout``).

    Returns:
        The usable cases sorted by id.

    Raises:
        DataError: missing or empty root, unknown layout, no usable case, duplicate ids, or (without
            ``problems``) any bad case.
    """
    root = Path(root)
    _check_root(root)
    if isinstance(layout, Layout):
        lay = layout
    elif layout == "auto":
        lay = PatternLayout(files) if files else detect_layout(root)
    else:
        lay = get_layout(layout, files)
    if isinstance(lay, DatasetJsonLayout):
        cases, bad = lay.discover(root, modalities, optional)
        return _checked(root, lay, cases, bad, problems, modalities)
    dirs, bad = _case_dirs(root, lay)
    if not dirs and not bad:
        if not _subdirs(root):
            detect_layout(root)  # raises the "no case folders" error
        raise DataError(f"no {lay.name} cases found in {root} (expected {lay.example})")
    cases = []
    for d in dirs:
        try:
            cases.append(lay.case(d, modalities, optional))
        except MissingSequenceError as e:
            bad.append(BadCase(d.name, str(e), (e.sequence,)))
        except DataError as e:
            bad.append(BadCase(d.name, str(e)))
    return _checked(root, lay, cases, bad, problems, modalities)


def _checked(
    root: Path,
    lay: Layout,
    cases: list[CaseFiles],
    bad: list[BadCase],
    problems: list[BadCase] | None,
    modalities: Sequence[str] = MODALITIES,
) -> list[CaseFiles]:
    """The usable cases; bad ones reported into ``problems``, or an error listing them all."""
    ids = [c.case_id for c in cases]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise DataError(f"{root}: case ids {dup[:5]} appear in several folders")
    bad.sort(key=lambda b: b.case_id)
    lacking = {b.missing for b in bad}
    if not cases and bad and len(lacking) == 1 and len(next(iter(lacking))) == 1:
        ((sequence,),) = lacking  # the data set has no such sequence at all: an option to change, not files to fix
        rest = [m for m in modalities if m != sequence]
        raise DataError(
            f"{root}: every case ({len(bad)}) lacks its {sequence} image ({bad[0].reason}): "
            f"add the files, or train without it: data.modalities=[{','.join(rest)}]"
        )
    if problems is None and bad:
        raise DataError(
            f"{len(bad)} case folder(s) of {root} cannot be used:\n"
            + "\n".join(f"  - {b.reason}" for b in bad)
            + "\nFix or move them, then run again."
        )
    if problems is not None:
        problems.extend(bad)
    if not cases:
        raise DataError(f"no usable {lay.name} case in {root} ({len(bad)} bad: {bad[0].reason})")
    return cases
