"""The clean-up chosen on out-of-fold segmentations, stage by stage and nested per fold: the whole tumour's
connected components, then (``cv.region_components``) the tumour core's and the enhancing tumour's, then the
enhancing-to-necrosis rule (:mod:`brats_lightning.inference.cleanup` applies them and holds the rule that takes a
candidate: its per-fold gain's 95% interval above zero).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np

from brats_lightning.crossval.options import CVOptions
from brats_lightning.data.labels import REGIONS, LabelConvention
from brats_lightning.inference.cleanup import (
    NO_CLEANUP,
    candidates,
    choose_cleanup,
    et_rule_candidates,
    region_rule_candidates,
)
from brats_lightning.inference.decision import region_levels

__all__ = ["STAGE_TITLES", "Stage", "choose_stages", "cleanup_stages", "cleanup_table"]


#: a clean-up stage: its name, the candidates given the options chosen so far (the first changes nothing), and the
#: regions whose (Dice + lesion-wise Dice) / 2 choose it
Stage = tuple[str, Callable[[dict], list[dict]], tuple[str, ...]]

#: the stages' names in the tables
STAGE_TITLES = {
    "et_threshold": "the enhancing tumour's probability threshold (the decision)",
    "components": "the whole tumour's components",
    "tc": "the tumour core's components (removed ones become edema)",
    "et": "the enhancing tumour's components (removed ones become necrosis)",
    "et_rule": "the enhancing-to-necrosis rule",
}


def cleanup_stages(opts: CVOptions, convention: LabelConvention) -> list[Stage]:
    """The clean-up's stages, chosen one after the other (each on the choice before): the whole tumour's
    components (on every region), then with ``cv.region_components`` the core's (on the core and the enhancing
    tumour) and the enhancing tumour's (on it), then the enhancing-to-necrosis rule (on the enhancing tumour)."""
    comps = candidates(opts.min_volumes_mm3, opts.largest_only, opts.keep_within_mm)
    stages: list[Stage] = []
    if opts.et_thresholds:
        thresholds: list[float | None] = [None, *sorted((float(t) for t in opts.et_thresholds), reverse=True)]
        stages.append(("et_threshold", lambda base: [{**base, "et_threshold": t} for t in thresholds], ("tc", "et")))
    stages.append(("components", lambda base: [{**base, **c} for c in comps], REGIONS))
    try:
        region_levels(convention)
        nests = True
    except ValueError:  # BRATS 2013's two core classes: a region's components cannot go one level down
        nests = False
    if opts.region_components and nests:
        for region, scored in (("tc", ("tc", "et")), ("et", ("et",))):

            def rules(base: dict, region: str = region) -> list[dict]:
                return region_rule_candidates(base, region, opts.et_volumes_mm3, opts.keep_within_mm)

            stages.append((region, rules, scored))
    stages.append(("et_rule", lambda base: et_rule_candidates(base, opts.et_volumes_mm3), ("et",)))
    return stages


def choose_stages(
    stages: list[Stage],
    figures_of: Callable[[list[dict], tuple[str, ...]], np.ndarray],
    folds: np.ndarray,
    n_folds: int,
) -> tuple[dict, dict[int, dict], dict[str, Any]]:
    """Choose the clean-up stage by stage (:func:`~brats_lightning.inference.cleanup.choose_cleanup` on each
    stage's regions), on all the cases (the final choice) and, nested, for each fold without its cases.

    Args:
        stages: :func:`cleanup_stages`.
        figures_of: ``(options, regions) -> (cases, candidates, 2 * regions)`` figures of the tuning cases.
        folds: ``(cases,)`` the fold of every tuning case.
        n_folds: the folds.

    Returns:
        The final options, fold -> its nested options, and per stage the table of its candidates on the final
        path (gains, intervals, Dice and lesion-wise Dice), with the rule and the number of folds.
    """
    final: dict = dict(NO_CLEANUP)
    nested: dict[int, dict] = {k: dict(NO_CLEANUP) for k in range(n_folds)}
    tuning: dict[str, Any] = {}
    everyone = np.ones(len(folds), bool)
    for name, make, regions in stages:
        cache: dict[str, tuple[list[dict], np.ndarray]] = {}  # a path's candidates are scored once

        def scored(
            base: dict,
            make: Callable[[dict], list[dict]] = make,
            regions: tuple[str, ...] = regions,
            cache: dict = cache,
        ) -> tuple[list[dict], np.ndarray]:
            key = json.dumps(base, sort_keys=True)
            if key not in cache:
                options = make(base)
                cache[key] = (options, figures_of(options, regions))
            return cache[key]

        options, figures = scored(final)
        index, stats = choose_cleanup(figures.mean(-1), folds, everyone)
        tuning[name] = _stage_table(options, stats, figures, regions)
        if "rule" not in tuning:
            tuning |= {"rule": stats["rule"], "folds": stats["folds"]}
            if "refused" in stats:
                tuning["refused"] = stats["refused"]
        final = options[index]
        for k in range(n_folds):
            options_k, figures_k = scored(nested[k])
            nested[k] = options_k[choose_cleanup(figures_k.mean(-1), folds, folds != k)[0]]
    tuning |= {"final": final, "nested": {str(k): v for k, v in nested.items()}}
    return final, nested, tuning


def _stage_table(options: list[dict], stats: dict[str, Any], per_case: np.ndarray, regions: tuple) -> list[dict]:
    """A stage's candidates: each one's options, gain, sd, se and interval, and mean Dice and lesion-wise Dice."""
    keys = ("gain", "sd", "se", "ci95_low", "ci95_high")
    names = [f"dice_{r}" for r in regions] + [f"lesion_dice_{r}" for r in regions]
    means = per_case.mean(0)  # (candidates, figures): each figure's mean over the cases, beside the gains
    return [
        {"option": o, **{k: stats[k][i] for k in keys}, **dict(zip(names, means[i].tolist()))}
        for i, o in enumerate(options)
    ]


def _rule_name(rule: dict | None) -> str:
    if not rule:
        return "none"
    if rule.get("largest_only"):
        within = float(rule.get("keep_within_mm") or 0)
        return f"largest + within {within:g} mm" if within else "largest only"
    volume = float(rule.get("min_volume_mm3") or 0)
    return f"components >= {volume:g} mm3" if volume else "none"


def cleanup_table(rows: list[dict], stage: str = "components") -> str:
    """Markdown: a stage's candidates (``cv/cleanup.json``), their mean Dice and lesion-wise Dice per region over the
    cases they were chosen on, and their per-fold gain in the stage's objective with its 95% interval."""
    regions = [r for r in REGIONS if f"dice_{r}" in rows[0]]
    head = ["clean-up", *(f"Dice {r.upper()}" for r in regions), *(f"lesion Dice {r.upper()}" for r in regions)]
    head += ["gain", "95% interval (t, folds)"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for row in rows:
        option = row["option"]
        cells = [f"{row[f'dice_{r}']:.3f}" for r in regions] + [f"{row[f'lesion_dice_{r}']:.3f}" for r in regions]
        cells += [f"{row['gain']:+.4f}", f"[{row['ci95_low']:+.4f}, {row['ci95_high']:+.4f}]"]
        if stage == "et_threshold":
            t = option.get("et_threshold")
            label = "the decision rule alone" if t is None else f"enhancing where p >= {t:g}"
        elif stage == "et_rule":
            label = f"enhancing under {float(option.get('et_min_volume_mm3') or 0):g} mm3 -> necrosis"
        else:
            label = _rule_name(option if stage == "components" else option.get(stage))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
