"""Scoring the out-of-fold segmentations: the clean-up chosen on them (nested), every case's figures, the
run's ``cv/`` folder (per case, per fold, per site, the uncertainty's figures) and ``metrics.json`` figures.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from omegaconf import DictConfig

from brats_lightning.crossval.card import cleanup_words
from brats_lightning.crossval.choice import STAGE_TITLES, choose_stages, cleanup_stages, cleanup_table
from brats_lightning.crossval.options import CVOptions
from brats_lightning.crossval.predictor import predictor_description, write_predictor
from brats_lightning.data.cache import PreparedCase
from brats_lightning.data.labels import REGIONS, LabelConvention
from brats_lightning.data.preparation import available_cores
from brats_lightning.data.preprocess import uncrop
from brats_lightning.data.readers import read_label, to_file_order
from brats_lightning.evaluation.intervals import interval_table, region_intervals, site_intervals
from brats_lightning.evaluation.intervals import site_table as site_interval_table
from brats_lightning.evaluation.lesions import brats2023_lesion_metrics
from brats_lightning.evaluation.metrics import dice, region_metrics
from brats_lightning.evaluation.results import print_table, run_metrics, summarise, write_results
from brats_lightning.files import atomic_path, write_csv_atomic, write_text_atomic
from brats_lightning.inference.cleanup import apply_cleanup
from brats_lightning.inference.decision import decide
from brats_lightning.inference.uncertainty import auroc, spearman
from brats_lightning.stats import bootstrap, bootstrap_mean

__all__ = ["VARIANTS", "aggregate", "site_table", "uncertainty_figures"]

log = logging.getLogger("brats_lightning.crossval")


#: a choice's keys that decide the classes from the probabilities (the rest is the clean-up)
DECISION_KEYS = ("et_threshold",)


def cleanup_part(option: dict) -> dict:
    """The clean-up of a chosen option (:func:`~brats_lightning.inference.cleanup.apply_cleanup`'s options)."""
    return {k: v for k, v in option.items() if k not in DECISION_KEYS}


def _load_case(
    oof: Path, folder: Path, decision: tuple[LabelConvention, str] | None = None, et_threshold: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A case's out-of-fold classes and its label, ``(X, Y, Z)`` in the brain's box (the cache's crop); with an
    ``et_threshold``, the classes decided again from the saved probabilities (``decision``: convention and rule)."""
    with np.load(oof) as z:
        if et_threshold is None:
            classes = z["classes"]
        else:
            if "probabilities" not in z.files or decision is None:
                raise FileNotFoundError(f"{oof}: no probabilities to decide the enhancing tumour again from")
            probs = torch.from_numpy(z["probabilities"].astype(np.float32))
            classes = decide(probs, decision[0], decision[1], et_threshold).to(torch.uint8).numpy()
    label = np.load(folder / "label.npy", mmap_mode="r")
    return np.ascontiguousarray(classes.transpose(1, 2, 0)), np.ascontiguousarray(label.transpose(1, 2, 0))


def _figures(
    pred: np.ndarray, gt: np.ndarray, convention: LabelConvention, spacing, regions: Sequence[str]
) -> list[float]:
    """Each region's Dice, then each region's lesion-wise Dice: the clean-up's objective is their mean."""

    pm, gm = convention.region_masks(pred), convention.region_masks(gt)
    lesion = [brats2023_lesion_metrics(pm[r], gm[r], spacing)["lesion_dice"] for r in regions]
    return [dice(pm[r], gm[r]) for r in regions] + lesion


def _candidate_scores(job: tuple) -> list[list[float]]:
    """Figures of the candidates of one case (a worker's job): per candidate, :func:`_figures`."""

    oof, folder, spacing, convention, candidates, regions, rule = job
    decided: dict[float | None, tuple[np.ndarray, np.ndarray]] = {}
    out = []
    for c in candidates:
        t = c.get("et_threshold")
        if t not in decided:
            decided[t] = _load_case(oof, folder, (convention, rule), t)
        pred, gt = decided[t]
        out.append(
            _figures(apply_cleanup(pred, spacing, convention, cleanup_part(c)), gt, convention, spacing, regions)
        )
    return out


def _case_metrics(job: tuple) -> list[dict]:
    """Every metric of every region of one case on its full grid, after its clean-up (a worker's job); the
    cleaned segmentation written in the case's own grid and label values when ``write`` is a path."""

    case_id, oof, folder, spacing, box, ras_shape, convention, options, label_file, write, rule = job
    pred, gt = _load_case(oof, folder, (convention, rule), options.get("et_threshold"))
    pred = apply_cleanup(pred, spacing, convention, cleanup_part(options))
    p, g = uncrop(pred, box, ras_shape), uncrop(gt, box, ras_shape)
    if write is not None:
        _, affine, header = read_label(label_file)
        labels = to_file_order(convention.from_internal(p), affine)
        img = nib.Nifti1Image(labels.astype(np.uint8), affine, header)
        img.set_data_dtype(np.uint8)
        with atomic_path(write) as tmp:
            nib.save(img, str(tmp))
    pm, gm = convention.region_masks(p), convention.region_masks(g)
    return [
        {"case": case_id, "region": r, **region_metrics(pm[r], gm[r], spacing, True, lesion_wise=True)} for r in REGIONS
    ]


#: the out-of-fold predictions scored without clean-up (Dice only): name in metrics.json -> array in the npz
VARIANTS = {"cv_flips": "classes", "cv_single": "classes_single", "cv_raw": "classes_raw"}


def _variant_dice(job: tuple) -> dict[str, list[float]]:
    """Region Dice of every saved prediction of one case, without clean-up (a worker's job)."""

    oof, folder, convention = job
    label = np.load(folder / "label.npy", mmap_mode="r")
    gm = convention.region_masks(np.asarray(label))
    out = {}
    with np.load(oof) as z:
        keys = {**VARIANTS, **{f"cv_missing_{k.removeprefix('classes_missing_')}": k for k in z.files
                               if k.startswith("classes_missing_")}}  # fmt: skip
        for name, key in keys.items():
            if key in z.files:
                pm = convention.region_masks(z[key])
                out[name] = [dice(pm[r], gm[r]) for r in REGIONS]
    return out


def _fold_means(values: dict[str, list[float]], fold_of: dict[str, int], prefix: str) -> dict[str, float]:
    """``<prefix>/dice_<region>``, ``<prefix>/dice_mean`` and ``<prefix>/fold<k>/dice_mean`` of per-case region Dice."""
    arr = np.array([values[c] for c in sorted(values)])
    out = {f"{prefix}/dice_{r}": float(arr[:, i].mean()) for i, r in enumerate(REGIONS)}
    out[f"{prefix}/dice_mean"] = float(arr.mean())
    for k in sorted(set(fold_of.values())):
        sel = [values[c] for c in sorted(values) if fold_of[c] == k]
        out[f"{prefix}/fold{k}/dice_mean"] = float(np.mean(sel))
    return out


def _one_thread() -> None:
    """A scoring worker's torch runs on one thread: a forked child must not enter the parent's OpenMP thread pool
    (it hangs there; PyTorch's DataLoader workers do the same)."""
    torch.set_num_threads(1)


def _pool_map(fn: Callable[[tuple], Any], jobs: list[tuple], workers: int) -> list[Any]:

    workers = min(len(jobs), workers or available_cores())
    if workers <= 1:
        return [fn(j) for j in jobs]

    methods = mp.get_all_start_methods()
    ctx = mp.get_context("fork" if "fork" in methods else "spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_one_thread) as pool:
        return list(pool.map(fn, jobs))


def _tuning_subset(ids: list[str], fold_of: dict[str, int], n: int) -> list[str]:
    """At most ``n`` cases, spread evenly over the folds (deterministic)."""
    if len(ids) <= n:
        return ids
    by_fold: dict[int, list[str]] = {}
    for c in ids:
        by_fold.setdefault(fold_of[c], []).append(c)
    per = max(1, n // len(by_fold))
    return sorted(c for members in by_fold.values() for c in members[:: max(1, len(members) // per)][:per])


def aggregate(
    out: Path,
    dm: Any,
    folds: list[list[str]],
    groups: dict[str, str],
    cases: dict[str, PreparedCase],
    opts: CVOptions,
    cfg: DictConfig,
) -> dict[str, float]:
    """Choose the clean-up on the out-of-fold segmentations, score every case with the choice made
    without it, write ``cv/`` and the final predictor. Returns the ``cv/...`` figures."""

    conv: LabelConvention = dm.convention
    fold_of = {c: k for k, f in enumerate(folds) for c in f}
    ids = sorted(fold_of)
    oof = {c: out / "oof" / f"{c}.npz" for c in ids}
    missing = [c for c in ids if not oof[c].is_file()]
    if missing:
        raise FileNotFoundError(f"out-of-fold predictions missing for {missing[:5]} in {out / 'oof'}")
    tune = _tuning_subset(ids, fold_of, opts.tune_max_cases)
    n_folds = len(folds)
    t0 = time.perf_counter()

    rule = "regions" if cfg.model.get("outputs") == "regions" else "argmax"  # how the OOF classes were decided

    def figures_of(options: list[dict], regions: tuple[str, ...]) -> np.ndarray:
        """(cases, candidates, Dice per region then lesion-wise Dice per region) on the tuning cases."""
        jobs = [(oof[c], cases[c].folder, cases[c].spacing, conv, options, regions, rule) for c in tune]
        return np.array(_pool_map(_candidate_scores, jobs, opts.workers))

    final, nested, tuning = choose_stages(
        cleanup_stages(opts, conv), figures_of, np.array([fold_of[c] for c in tune]), n_folds
    )
    tuning = {"cases": len(tune), **tuning, "seconds": time.perf_counter() - t0}
    log.info(
        "Clean-up chosen on %d out-of-fold cases: %s (nested, each fold's cases by the other folds: %s)",
        len(tune),
        cleanup_words(final),
        "; ".join(f"fold {k}: {cleanup_words(choice)}" for k, choice in sorted(nested.items())),
    )
    for stage in ("et_threshold", "components", "tc", "et"):
        if stage in tuning:
            print(f"Clean-up, {STAGE_TITLES[stage]}:\n" + cleanup_table(tuning[stage], stage))
    segmentations = out / "cv" / "segmentations"
    segmentations.mkdir(parents=True, exist_ok=True)
    metric_jobs = [
        (c, oof[c], cases[c].folder, cases[c].spacing, cases[c].box, cases[c].ras_shape, conv, nested[fold_of[c]],
         cases[c].meta["sources"]["label"][0], segmentations / f"{c}.nii.gz", rule)
        for c in ids
    ]  # fmt: skip
    rows = [row for case_rows in _pool_map(_case_metrics, metric_jobs, opts.workers) for row in case_rows]
    name = str(cfg.model.get("name") or "model")
    summary = summarise(
        rows,
        method=name,
        evaluation="cross-validation: every case segmented by the fold model that never trained on it, "
        "cleaned up as chosen on the other folds",
        run=str(out),
        folds=n_folds,
        cleanup=final,
        tta_flips=list(opts.tta_flips),
    )
    cv_dir = out / "cv"
    write_results(cv_dir, rows, summary, f"{name} (cross-validation)")
    write_csv_atomic(
        cv_dir / "folds.csv",
        [
            {"case": c, "fold": fold_of[c], "site": groups.get(c, "all"), "cleanup": json.dumps(nested[fold_of[c]])}
            for c in ids
        ],
        ["case", "fold", "site", "cleanup"],
    )
    write_text_atomic(cv_dir / "cleanup.json", json.dumps(tuning, indent=1) + "\n")
    write_text_atomic(cv_dir / "sites.md", site_table(rows, groups))
    print_table(summary, f"Cross-validation, out of fold ({summary['n_cases']} cases, {n_folds} folds) - {out}")
    print(site_table(rows, groups))
    site_of = {c: groups.get(c, "all") for c in ids}
    ci_figures, estimates = region_intervals(rows, site_of, "cv/")
    site_figures, by_site = site_intervals(rows, site_of, "cv/")
    counts = {s: sum(1 for c in ids if site_of[c] == s) for s in by_site}
    intervals = (
        interval_table(
            estimates,
            "cv/",
            f"Out of fold, {len(ids)} cases: mean [95% interval], a bootstrap over cases stratified by site",
        )
        + "\nPer site: Dice [95% interval, a bootstrap over the site's own cases; none below two cases]\n\n"
        + site_interval_table(by_site, counts)
    )
    write_text_atomic(cv_dir / "intervals.md", intervals)
    print(intervals)
    log.info(
        "Out of fold, %d cases: Dice %s (95%% intervals, a bootstrap over cases stratified by site)",
        len(ids),
        ", ".join(f"{r.upper()} {estimates[f'cv/dice_{r}'].describe()}" for r in REGIONS),
    )
    write_predictor(out, opts.final, len(folds), len(ids), final, list(opts.tta_flips))
    log.info(
        "The shipped predictor (predict ckpt_path=%s): %s", out, predictor_description(opts.final, n_folds, len(ids))
    )
    figures = ci_figures | site_figures | run_metrics(summary, prefix="cv/")
    per_case = {c: [next(r["dice"] for r in rows if r["case"] == c and r["region"] == g) for g in REGIONS] for c in ids}
    figures |= {k: v for k, v in _fold_means(per_case, fold_of, "cv").items() if "/fold" in k}
    variants: dict[str, dict[str, list[float]]] = {}
    for c, scores in zip(ids, _pool_map(_variant_dice, [(oof[c], cases[c].folder, conv) for c in ids], opts.workers)):
        for name, values in scores.items():
            variants.setdefault(name, {})[c] = values
    for name, values in variants.items():
        if len(values) == len(ids):
            figures |= _fold_means(values, fold_of, name)
    if opts.uncertainty:
        figures |= uncertainty_figures(out, ids, cases, per_case, groups)
    figures["cv/cleanup_s"] = time.perf_counter() - t0
    return figures


def _case_uncertainty(job: tuple) -> dict[str, Any]:
    """One case: its wrong voxels, the voxel uncertainty (entropy) and the baseline (one minus the probability of
    the class decided) on a seeded sample of its brain voxels, their AUROCs, and its members' agreement."""

    oof, folder, sample = job
    with np.load(oof) as z:
        classes, score = z["classes"], float(z["agreement"])
        unc = z["uncertainty"].astype(np.float32)
        top = z["max_probability"].astype(np.float32) if "max_probability" in z.files else None
    label, brain = np.load(folder / "label.npy"), np.load(folder / "mask.npy")
    wrong, u = (classes != label)[brain], unc[brain]
    pick = np.sort(np.random.default_rng(0).choice(u.size, size=min(sample, u.size), replace=False))
    base = (1.0 - top[brain])[pick] if top is not None else np.full(pick.size, np.nan, np.float32)
    return {
        "wrong": wrong[pick],
        "entropy": u[pick],
        "baseline": base,
        "auroc": auroc(u[pick], wrong[pick]),
        "auroc_baseline": auroc(base, wrong[pick]) if top is not None else float("nan"),
        "agreement": score,
    }


def _pooled_auroc(scores: np.ndarray, wrong: np.ndarray) -> float:
    """The AUROC of the cases' voxel samples pooled (object arrays: one sample per case)."""
    return auroc(np.concatenate(list(scores)), np.concatenate(list(wrong)))


def uncertainty_figures(
    out: Path,
    ids: list[str],
    cases: dict[str, PreparedCase],
    dice: dict[str, list[float]],
    groups: dict[str, str] | None = None,
    sample: int = 20_000,
    n_boot: int = 1000,
) -> dict[str, float]:
    """How well the out-of-fold uncertainty does its job (``cv.uncertainty``), each figure with its 95% interval
    (a bootstrap over cases, stratified by site: :mod:`brats_lightning.stats`):

    * ``cv/uncertainty_voxel_auroc``: the AUROC of the voxel map (the normalised entropy of the members' mean
      probabilities) for the wrong voxels, on ``sample`` brain voxels per case (seeded), pooled over the cases;
    * ``cv/uncertainty_voxel_auroc_max_probability``: the same of the baseline it must beat, one minus the mean
      probability of the class decided, and ``..._gain_over_max_probability`` the paired difference;
    * ``cv/uncertainty_voxel_auroc_per_case``: the mean of the cases' own AUROCs;
    * ``cv/uncertainty_case_spearman``: Spearman's correlation between the members' agreement and the case's
      real mean Dice (does the agreement rank the cases to look at first?).

    Per case in ``cv/uncertainty.csv``.
    """

    per = min(sample, max(1000, 2_000_000 // max(1, len(ids))))  # (the bootstrap pools the samples)
    results = _pool_map(_case_uncertainty, [(out / "oof" / f"{c}.npz", cases[c].folder, per) for c in ids], 0)
    real = np.array([float(np.mean(dice[c])) for c in ids])
    rows = [
        {
            "case": c,
            "voxel_auroc": r["auroc"],
            "voxel_auroc_max_probability": r["auroc_baseline"],
            "agreement": r["agreement"],
            "mean_dice": d,
        }
        for c, r, d in zip(ids, results, real)
    ]
    write_csv_atomic(out / "cv" / "uncertainty.csv", rows, list(rows[0]))
    strata = [(groups or {}).get(c, "all") for c in ids]
    wrong = np.empty(len(ids), object)
    entropy, baseline = np.empty(len(ids), object), np.empty(len(ids), object)
    for k, r in enumerate(results):
        wrong[k], entropy[k], baseline[k] = r["wrong"], r["entropy"], r["baseline"]
    voxel = bootstrap(_pooled_auroc, entropy, wrong, strata=strata, n_boot=n_boot)
    figures = voxel.as_dict("cv/uncertainty_voxel_auroc")
    base = None
    if all(np.isfinite(r["auroc_baseline"]) for r in results):
        base = bootstrap(_pooled_auroc, baseline, wrong, strata=strata, n_boot=n_boot)
        gain = bootstrap(
            lambda e, b, w: _pooled_auroc(e, w) - _pooled_auroc(b, w),
            entropy,
            baseline,
            wrong,
            strata=strata,
            n_boot=n_boot,
        )
        figures |= base.as_dict("cv/uncertainty_voxel_auroc_max_probability")
        figures |= gain.as_dict("cv/uncertainty_voxel_auroc_gain_over_max_probability")
    per_case = bootstrap_mean([r["auroc"] for r in results], strata=strata, n_boot=n_boot)
    figures |= per_case.as_dict("cv/uncertainty_voxel_auroc_per_case")
    agreement = np.array([r["agreement"] for r in results])
    rho = bootstrap(lambda a, d: spearman(list(a), list(d)), agreement, real, strata=strata, n_boot=n_boot)
    figures |= rho.as_dict("cv/uncertainty_case_spearman")
    log.info(
        "Uncertainty, out of fold: voxel AUROC %s, of the max-probability baseline %s; Spearman(agreement, Dice) %s",
        voxel.describe(),
        base.describe() if base is not None else "(not kept)",
        rho.describe(signed=True),
    )
    return figures


def site_table(rows: list[dict], groups: dict[str, str]) -> str:
    """Markdown: per site (and all), the number of cases and the mean Dice, HD95 and lesion-wise Dice per region."""
    sites = sorted({groups.get(r["case"], "all") for r in rows})
    head = ["site", "cases"] + [f"{m} {r.upper()}" for m in ("Dice", "HD95", "lesion Dice") for r in REGIONS]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for site in [*sites, None] if len(sites) > 1 else sites:
        sel = [r for r in rows if site is None or groups.get(r["case"], "all") == site]
        n = len({r["case"] for r in sel})
        cells = []
        for metric, fmt in (("dice", "{:.3f}"), ("hd95", "{:.1f}"), ("lesion_dice", "{:.3f}")):
            for region in REGIONS:
                vals = [r[metric] for r in sel if r["region"] == region and metric in r]
                cells.append(fmt.format(float(np.mean(vals))) if vals else "–")
        lines.append(f"| {site if site is not None else '**all**'} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
