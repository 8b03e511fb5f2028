"""A folder of predictions scored against its ground truth (the work of ``python -m brats_lightning.evaluate``).

For every ground-truth case, the prediction ``<pred_dir>/<case>.nii.gz`` is compared with the
truth on the whole tumour, tumour core and enhancing tumour (:mod:`brats_lightning.evaluation.metrics`:
Dice, HD95, sensitivity, specificity, PPV, BraTS scorer conventions). Label conventions are given
(``pred_convention``, ``gt_convention``) or detected per file: label 4 means BraTS 2017-2021 (or
2013 with label 3 too), label 3 alone means BraTS 2023. A missing prediction, or one that cannot be
read or is on another grid, counts as a failure with the scorer's penalties (Dice 0, HD95 373.13,
sensitivity 0, PPV 0, specificity 1) and is listed with the reason; a case whose ground truth cannot
be read, or a case folder without a label file, is listed as not scored. One bad file never stops
the others; the command exits with status 1 when a file could not be scored as given.

Writes into ``out_dir``: ``per_case.csv`` (``case,region,dice,hd95,sensitivity,specificity,ppv``),
``summary.json`` (mean, median, std per region and metric; missing cases; conventions used) and
``summary.md`` (the papers' table layout).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from nibabel.affines import voxel_sizes

from brats_lightning.data.labels import (
    REGIONS,
    AmbiguousConventionError,
    LabelConvention,
    get_convention,
    resolve_convention,
)
from brats_lightning.data.layouts import (
    BadCase,
    dataset_convention,
    declared_convention,
    detect_layout,
    discover_cases,
)
from brats_lightning.data.readers import read_label
from brats_lightning.errors import DataError, UserError
from brats_lightning.evaluation.metrics import failure_scores, metric_names, region_metrics
from brats_lightning.evaluation.results import summarise, write_results

__all__ = ["ground_truth_files", "evaluate_case", "evaluate_dirs"]

log = logging.getLogger("brats_lightning.evaluate")


def ground_truth_files(gt_dir: str | Path, problems: list[BadCase] | None = None) -> dict[str, Path]:
    """Case id -> label file: a BraTS data set folder (any layout), or a flat folder of ``<case>.nii.gz``.

    Args:
        gt_dir: the folder.
        problems: where case folders without a usable label file are reported (with the file
            expected); without it they are an error.

    Raises:
        DataError: missing or empty folder, no labels found, or (without ``problems``) a case
            folder without a usable label file.
    """
    root = Path(gt_dir)
    if not root.is_dir():
        raise DataError(f"ground-truth folder {root} does not exist")
    flat = sorted(root.glob("*.nii.gz")) + sorted(root.glob("*.nii"))
    if flat:
        return {p.name.split(".nii")[0]: p for p in flat}
    layout = detect_layout(root)
    bad: list[BadCase] = []
    cases = discover_cases(root, layout, modalities=(), problems=bad)
    labels = {c.case_id: c.label for c in cases if c.label is not None}
    for c in cases:
        if c.label is None:
            folder = c.folder or root / c.case_id
            bad.append(BadCase(c.case_id, f"{folder}: no label file (expected {layout.expected(folder, 'label')})"))
    if not labels:
        raise DataError(f"no ground-truth segmentations in {root} ({len(cases)} case folders without a label file)")
    if problems is None and bad:
        raise DataError("; ".join(b.reason for b in bad))
    if problems is not None:
        problems.extend(sorted(bad, key=lambda b: b.case_id))
    return labels


class _Conventions:
    """Decides the label convention of the files of one folder, never by a silent guess.

    A file's candidates are the given convention (one name), the allowed ones (a list) or all
    three (``auto``); when they would score it differently (label 3 without 4), the folder decides
    (a file holding both 3 and 4 proves 2013; scanned only then) or the ground truth's task (a
    prediction of a four-class 2017/2023 ground truth is not in 2013's five classes), else it is
    an error naming the file and the candidates (:func:`~brats_lightning.data.labels.resolve_convention`).
    """

    def __init__(self, setting: str | Sequence[str], files: Sequence[Path]) -> None:
        self.candidates: str | list[str] | None
        if isinstance(setting, str):
            self.candidates = None if setting == "auto" else setting
        else:
            self.candidates = [str(c) for c in setting]
        self.files = list(files)
        self._proof: bool | None = None

    def _folder_has_3_and_4(self) -> bool:
        if self._proof is None:
            self._proof = False
            for f in self.files:
                try:
                    vals = set(np.unique(read_label(f)[0]).tolist())
                except UserError:
                    continue
                if {3, 4} <= vals:
                    self._proof = True
                    break
        return self._proof

    def resolve(self, arr: np.ndarray, source: Path, task: LabelConvention | None = None) -> LabelConvention:
        vals = np.unique(arr)
        try:
            return resolve_convention(vals, str(source), self.candidates, task=task)
        except AmbiguousConventionError:
            return resolve_convention(vals, str(source), self.candidates, self._folder_has_3_and_4(), task)


def _read_regions(
    path: Path, conventions: _Conventions | str, task: LabelConvention | None = None
) -> tuple[dict[str, np.ndarray], LabelConvention, np.ndarray]:
    """Region masks, convention and affine of one label file.

    Raises:
        DataError: unreadable file, NaN or non-integer values, labels of no (or not the given)
            convention, an undecidable convention.
    """
    arr, affine, _ = read_label(path)
    if isinstance(conventions, str):
        conventions = _Conventions(conventions, [path])
    conv = conventions.resolve(arr, path, task)
    classes = conv.to_internal(arr, str(path))
    # a ground truth's regions: all its convention scores; a prediction's: those of its ground truth it has
    wanted = conv.scored_regions if task is None else [r for r in task.scored_regions if r in conv.regions]
    return conv.region_masks(classes, wanted), conv, affine


def evaluate_case(
    pred_file: Path,
    gt_file: Path,
    pred_convention: str = "auto",
    gt_convention: str = "auto",
    hd95: bool = True,
    lesion_wise: bool = False,
) -> tuple[list[dict], dict]:
    """Metrics of one case for every region; returns the rows and the conventions used.

    Raises:
        DataError: unreadable files, different grids, unknown label values, undecidable conventions.
    """
    gm, gc, g_aff = _read_regions(gt_file, gt_convention)
    return _score(pred_file, gm, gc, g_aff, gt_file, _Conventions(pred_convention, [pred_file]), hd95, lesion_wise)


def _score(
    pred_file: Path,
    gm: dict[str, np.ndarray],
    gc: LabelConvention,
    g_aff: np.ndarray,
    gt_file: Path,
    pred_conventions: _Conventions,
    hd95: bool,
    lesion_wise: bool = False,
) -> tuple[list[dict], dict]:
    pm, pc, p_aff = _read_regions(pred_file, pred_conventions, task=gc)
    shape = next(iter(gm.values())).shape
    pshape = next(iter(pm.values())).shape
    if pshape != shape:
        raise DataError(f"{pred_file}: shape {pshape} differs from the ground truth {gt_file} {shape}")
    if not np.allclose(p_aff, g_aff, atol=1e-3):
        raise DataError(f"{pred_file}: affine differs from the ground truth {gt_file}")
    spacing = tuple(float(s) for s in voxel_sizes(g_aff))
    # a region the prediction's convention lacks (a 2017-style model on BraTS 2024's cavity) is predicted empty
    rows = [
        {
            "region": r,
            **region_metrics(
                pm[r] if r in pm else np.zeros_like(gm[r]), gm[r], spacing, include_hd95=hd95, lesion_wise=lesion_wise
            ),
        }
        for r in gm
    ]
    return rows, {"prediction": pc.name, "ground_truth": gc.name}


def evaluate_dirs(
    pred_dir: str | Path,
    gt_dir: str | Path,
    out_dir: str | Path,
    pred_convention: str | Sequence[str] = "auto",
    gt_convention: str | Sequence[str] = "auto",
    hd95: bool = True,
    name: str | None = None,
    lesion_wise: bool = True,
) -> dict:
    """Evaluate every case of ``gt_dir`` against ``pred_dir``; writes and returns the summary.

    One bad file never stops the others. A missing prediction, or one that cannot be read or does
    not fit the ground truth's grid, is scored as a failure (Dice 0, HD95 373.13) and listed
    (``missing``, ``invalid``); a ground truth that cannot be read, or a case folder without a label
    file, cannot be scored and is listed under ``not_scored``. Every listing gives the file and the reason.

    Conventions: a ground-truth folder in a BraTS layout has the layout's (2013, 2017 or 2023);
    otherwise see :class:`_Conventions`. With ``lesion_wise`` the lesion-wise columns of
    :mod:`brats_lightning.evaluation.lesions` are added (a missing or invalid prediction scores 0, HD95 374, as
    the official package's missing cases).
    """
    t0 = time.perf_counter()
    bad_gt: list[BadCase] = []
    gts = ground_truth_files(gt_dir, bad_gt)
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise DataError(f"prediction folder {pred_dir} does not exist")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    missing: list[str] = []
    invalid: dict[str, str] = {}
    not_scored: dict[str, str] = {b.case_id: b.reason for b in bad_gt}
    conventions: dict[str, dict] = {}
    gt_root = Path(gt_dir)
    if gt_convention == "auto":
        declared = declared_convention(gt_root)  # a dataset.json's (labelsTr, a task folder), or a layout's
        if declared is None and not any(gt_root.glob("*.nii*")):
            detect_layout(gt_root)  # (a folder no layout fits is an error here)
            declared = dataset_convention(gt_root)  # its layout's; BraTS 2024's when its labels hold 4
        gt_convention = declared or "auto"
    if pred_convention == "auto" and isinstance(gt_convention, str) and gt_convention != "auto":
        if not get_convention(gt_convention).detectable:
            # labels whose values mean something else elsewhere (MSD, BraTS 2024): predictions of these cases are
            # read in the same convention (what predict writes for them), not guessed from their values
            pred_convention = gt_convention
            log.info("Predictions read in the ground truth's declared label convention, %s", gt_convention)
    gt_conv = _Conventions(gt_convention, list(gts.values()))
    pred_conv = _Conventions(pred_convention, [pred_dir / f"{c}.nii.gz" for c in gts])
    regions = (
        get_convention(gt_convention).scored_regions
        if gt_convention != "auto" and isinstance(gt_convention, str)
        else REGIONS
    )
    failure = failure_scores(metric_names(hd95, lesion_wise))
    from rich.progress import Progress

    with Progress() as bar:
        task = bar.add_task("Evaluating", total=len(gts))
        for case_id, gt_file in sorted(gts.items()):
            bar.advance(task)
            try:
                gm, gc, g_aff = _read_regions(gt_file, gt_conv)
            except UserError as e:
                not_scored[case_id] = str(e)
                log.error("%s: not scored (%s)", case_id, e)
                continue
            pred_file = pred_dir / f"{case_id}.nii.gz"
            if not pred_file.exists() and not pred_file.is_symlink():
                missing.append(case_id)
                rows += [{"case": case_id, "region": r, **failure} for r in regions]
                continue
            try:
                case_rows, conventions[case_id] = _score(
                    pred_file, gm, gc, g_aff, gt_file, pred_conv, hd95, lesion_wise
                )
            except UserError as e:
                invalid[case_id] = str(e)
                log.error("%s: prediction scored as a failure (%s)", case_id, e)
                rows += [{"case": case_id, "region": r, **failure} for r in gm]
                continue
            rows += [{"case": case_id, **r} for r in case_rows]
    if not rows:
        raise DataError(
            f"no case of {gt_dir} could be scored:\n" + "\n".join(f"  - {why}" for why in not_scored.values())
        )
    summary = summarise(
        rows,
        pred_dir=str(pred_dir),
        gt_dir=str(gt_dir),
        missing=missing,
        invalid=dict(sorted(invalid.items())),
        not_scored=dict(sorted(not_scored.items())),
        conventions=conventions,
        time_s=round(time.perf_counter() - t0, 2),
    )
    write_results(out, rows, summary, name or pred_dir.name)
    return summary
