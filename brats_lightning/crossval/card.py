"""``<run>/MODEL_CARD.md``: what a cross-validation run's predictor is worth, for whoever receives the folder.

Written at the end of every cross-validation (``experiment=real_fast``) from what the run itself did and measured:
the cases and sites it learnt from, the out-of-fold figures with their 95% intervals overall and per site, which
kind of estimate they are (site-stratified folds or leave-one-site-out), the budget and the steps it bought, the
clean-up, flips and enhancing threshold chosen out of fold, the machine and the software, and the intended use and
known limits (the sites and sequences it never saw). Nothing in it is typed by hand; rerunning the command over the
folder rewrites it.
"""

from __future__ import annotations

import os
import platform
import re
import sys
from collections import Counter
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from brats_lightning.data.labels import REGIONS
from brats_lightning.data.preprocess import PreprocessConfig
from brats_lightning.data.provenance import package_version
from brats_lightning.files import write_text_atomic

__all__ = ["MODEL_CARD", "cleanup_words", "hardware", "preparation_words", "software", "write_model_card"]

MODEL_CARD = "MODEL_CARD.md"
_NAMES = {"wt": "whole tumour", "tc": "tumour core", "et": "enhancing tumour"}


# the nets of FCNModule's model.arch, in words
_NETS = {
    "fcn": "Shen et al.'s FCN with its upsampling paths",
    "unet": "Shen et al.'s encoder with a U-Net decoder and skip connections",
    "dynunet": "MONAI's DynUNet in 2D",
}


def hardware() -> str:
    """The machine in one line: CPU model, cores, GPUs (``torch.cuda``)."""
    cpu = platform.processor() or platform.machine()
    try:
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        if match:
            cpu = re.sub(r"\s+", " ", match.group(1)).strip()
    except OSError:
        pass
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return f"{cpu}, {os.cpu_count()} cores; " + (", ".join(gpus) if gpus else "no GPU")


def software() -> str:
    """The versions that produced the run, in one line."""
    parts = [f"brats_lightning {package_version()}", f"Python {sys.version.split()[0]}"]
    for dist in ("torch", "pytorch-lightning", "monai", "numpy", "nibabel"):
        try:
            parts.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            continue
    return ", ".join(parts)


def _figure(figures: dict[str, float], key: str) -> str:
    value = figures.get(key)
    if value is None:
        return "n/a"
    low, high = figures.get(f"{key}_ci95_low"), figures.get(f"{key}_ci95_high")
    return f"{value:.3f}" + (f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else "")


def _rule_words(rule: dict[str, Any]) -> str:
    """One component rule (whole tumour, core or enhancing tumour) in words, or ``""`` when it keeps everything."""
    volume, slices = float(rule.get("min_volume_mm3") or 0), int(rule.get("min_slices") or 0)
    size = " and ".join(
        p
        for p in (
            f"of at least {volume:g} mm3" if volume else "",
            f"spanning at least {slices} axial slice{'s' if slices > 1 else ''}" if slices else "",
        )
        if p
    )
    if not rule.get("largest_only"):
        return f"the components {size}" if size else ""
    words = f"the largest of the components {size}" if size else "the largest component"
    within = float(rule.get("keep_within_mm") or 0)
    return words + (f" and those within {within:g} mm of it" if within else " only")


def cleanup_words(post: dict[str, Any] | None) -> str:
    """A stored clean-up (:class:`~brats_lightning.inference.cleanup.PostprocessOptions`, with the enhancing
    tumour's ``et_threshold`` when chosen) in words."""
    if not post:
        return "none"
    parts = []
    if post.get("et_threshold") is not None:
        parts.append(f"enhancing tumour wherever its probability reaches {post['et_threshold']:g}")
    if whole := _rule_words(post):
        parts.append(f"whole tumour: {whole}")
    for key, region, down in (("tc", "core", "edema"), ("et", "enhancing tumour", "necrosis")):
        rule = post.get(key)
        if rule:
            parts.append(f"{region}: {_rule_words(rule) or 'every component'} (the others become {down})")
    if post.get("et_min_volume_mm3"):
        parts.append(f"an enhancing tumour below {post['et_min_volume_mm3']:g} mm3 becomes necrosis")
    return "; ".join(parts) or "none"


def preparation_words(preprocess: Any) -> str:
    """What the preparation does to a case's intensities (``data.preprocess``, :class:`PreprocessConfig`), in words."""
    if isinstance(preprocess, DictConfig):
        preprocess = OmegaConf.to_container(preprocess, resolve=True)
    prep = PreprocessConfig.model_validate(preprocess or {})
    steps = []
    if prep.clip_percentiles is not None:
        low, high = prep.clip_percentiles
        steps.append(f"clips each sequence to its {low:g}-{high:g} percentiles inside the brain")
    if prep.n4:
        steps.append(f"corrects the bias field of {', '.join(prep.n4)} (N4)")
    if prep.histogram:
        steps.append("standardises each sequence's histogram inside the brain (its deciles onto a standard normal's)")
    elif prep.zscore:
        steps.append("z-scores each sequence inside the brain")
    return ", then ".join(steps) or "leaves the intensities as they are"


def _estimate_kind(split: str, sites: list[str]) -> str:
    if split == "site":
        return (
            "**leave-one-site-out** cross-validation: each case was segmented by a fold model that never saw a case "
            "of its site, the closest estimate this data allows of a scanner or centre the predictor has not seen"
        )
    return (
        "site-stratified cross-validation: each case was segmented by a fold model that never saw it, but saw other "
        f"cases of its site; the intervals cover new cases of these {len(sites)} site(s), not new sites (for that, "
        "rerun with `data.split=site`: leave-one-site-out)"
    )


def write_model_card(
    out: Path,
    cfg: DictConfig,
    figures: dict[str, float],
    groups: dict[str, str],
    folds: list[list[str]],
    fold_records: dict[str, dict[str, Any]],
    predictor: dict[str, Any],
) -> Path:
    """Write ``<out>/MODEL_CARD.md`` (atomically).

    Args:
        out: the run folder.
        cfg: the run's composed config.
        figures: the run's figures, as in ``metrics.json`` (``cv/...`` with intervals, ``test/...`` when tested).
        groups: case id -> site.
        folds: the cases of each fold.
        fold_records: ``cv_state.json``'s record of each training (``steps``, ``train_s``; ``"all"``: the final
            model).
        predictor: the content of ``predictor.json`` (what ships: checkpoints, clean-up, flips, threshold).

    Returns:
        The card's path.
    """
    cases = sorted(c for fold in folds for c in fold)
    sites = Counter(groups.get(c, "all") for c in cases)
    data, model = cfg.data, cfg.model
    split = str(data.get("split", "stratified"))
    modalities = list(data.get("modalities") or [])
    dropout = float(data.get("modality_dropout") or 0.0)
    name = str(model.get("name") or "model")
    width = model.get("width")
    steps = {k: int(r.get("steps") or 0) for k, r in fold_records.items()}
    minutes = {k: float(r.get("train_s") or 0.0) / 60 for k, r in fold_records.items()}
    budget = cfg.get("budget_minutes")

    lines = [
        f"# Model card: {name}",
        "",
        f"Written by `brats_lightning` at the end of the cross-validation in `{out}` "
        f"({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC). Every figure below is the run's own; "
        "`metrics.json` holds them all.",
        "",
        "## What it is",
        "",
        f"- **The predictor** (`predict ckpt_path=<this folder>`): {predictor.get('what', 'see predictor.json')}.",
        f"- Checkpoints: {', '.join(f'`{c}`' for c in predictor.get('checkpoints', []))}; the net "
        f"`{model.get('arch', model.get('_target_', '?'))}`"
        + (f" ({_NETS[model['arch']]})" if model.get("arch") in _NETS else "")
        + (f" at width {width}" if width is not None else "")
        + ".",
        f"- Input: the sequences {', '.join(modalities)} of one case, co-registered, skull-stripped and on one 1 mm "
        f"grid as BraTS distributes them (the preparation {preparation_words(data.get('preprocess'))}; it does not "
        "register or skull-strip)"
        + (", with Shen et al.'s symmetry maps computed from them" if data.get("symmetry") else "")
        + ".",
        f"- Output: one label map per case in the `{data.get('convention')}` label convention; regions "
        + ", ".join(f"{r.upper()} ({_NAMES[r]})" for r in REGIONS)
        + ".",
        f"- Test-time flips: {', '.join(predictor.get('tta_flips') or []) or 'none'} (plus the identity); "
        f"clean-up: {cleanup_words(predictor.get('postprocess'))}; enhancing-tumour threshold: "
        f"{predictor.get('et_threshold') if predictor.get('et_threshold') is not None else 'none (argmax)'}; all "
        "chosen on the out-of-fold segmentations.",
        "",
        "## What it learnt from",
        "",
        f"- {len(cases)} labelled cases from `{data.get('root')}` (layout `{data.get('layout')}`), in "
        f"{len(sites)} site(s): " + ", ".join(f"{s} ({n})" for s, n in sorted(sites.items())) + ".",
        f"- {len(folds)} folds ({'one per site' if split == 'site' else 'stratified by site'}); "
        + ", ".join(
            f"fold {k}: {steps.get(str(k), 0):,} steps in {minutes.get(str(k), 0.0):.1f} min" for k in range(len(folds))
        )
        + (
            f"; the final model on every case: {steps['all']:,} steps in {minutes.get('all', 0.0):.1f} min"
            if "all" in steps
            else ""
        )
        + ".",
        (f"- Budget: {budget} minutes in all" if budget is not None else "- Budget: none (fixed epochs)")
        + f", {figures.get('time/cv_s', 0.0) / 60:.1f} minutes spent; precision `{cfg.trainer.get('precision')}`.",
        "",
        "<details><summary>The cases</summary>",
        "",
        ", ".join(f"{c} ({groups.get(c, 'all')})" for c in cases),
        "",
        "</details>",
        "",
        "## How good it is",
        "",
        f"The figures are {_estimate_kind(split, sorted(sites))}. They estimate the shipped predictor through models "
        "of the same recipe trained on part of the cases; with 95% intervals from a bootstrap over cases (stratified "
        "by site). The recipe's options were chosen on the same cases, so they are not a test.",
        "",
    ]
    intervals = out / "cv" / "intervals.md"
    lines += [intervals.read_text().rstrip() if intervals.is_file() else "(no cv/intervals.md)", ""]
    if any(k.startswith("test/dice_") for k in figures):
        lines += [
            "Held out (cases that chose nothing: a test): "
            + ", ".join(f"{r.upper()} {_figure(figures, f'test/dice_{r}')}" for r in REGIONS)
            + ".",
            "",
        ]
    per_site = {
        s: [figures.get(f"cv/site/{s}/dice_{r}") for r in REGIONS] for s in sites if f"cv/site/{s}/dice_wt" in figures
    }
    worst = min(per_site.items(), key=lambda kv: sum(v or 0.0 for v in kv[1]), default=None)
    lines += [
        "## Intended use and known limits",
        "",
        "- Research on brain-tumour segmentation. Not a medical device; not validated for any clinical decision.",
        f"- It never saw a case from a site other than {', '.join(sorted(sites))}. "
        + (
            f"Sites differ: its worst site here, {worst[0]}, scored Dice "
            + " / ".join(f"{v:.3f}" for v in worst[1] if v is not None)
            + " (WT / TC / ET). "
            if worst
            else ""
        )
        + "Expect lower figures, most of all for the enhancing tumour, on scanners and protocols unlike these.",
        (
            f"- It was trained with every sequence dropped at random (p = {dropout}), so it segments cases that lack "
            "some; its figures above are on complete cases."
            if dropout > 0
            else f"- It needs all of {', '.join(modalities)}: it never saw a case without one (`predict` refuses it)."
        ),
        "- Tumour types, time points (e.g. post-operative) and label sets other than those of its cases were never "
        "seen; neither were images not preprocessed as above.",
        f"- {len(cases)} cases make wide intervals: read the intervals, not the means.",
        "",
        "## Machine and software",
        "",
        f"- Hardware: {hardware()}.",
        f"- Software: {software()}.",
        "",
    ]
    path = out / MODEL_CARD
    write_text_atomic(path, "\n".join(lines))
    return path
