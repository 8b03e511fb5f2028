"""The ablation table of ``experiment=real_fast``: validation Dice per option, and the time each run took.

Usage::

    python -m brats_lightning experiment=real_fast_ablation data.root=../shared/data/brats2018
    python benchmarks/real_fast_ablation.py outputs/real_fast_ablation/multiruns/<date> [more folders]

Reads every job of the multirun folders (one per ``+ablation=`` setting and fold): the validation
Dice per region of its best epoch, without clean-up or test-time flips (``metrics.json``:
``val/best_dice_*``, as ``best.ckpt`` was chosen), its training steps and its minutes from start to
end (``time/total_s``: training, last validation, tuning). Three rows come from the tuning tables in
``best.ckpt`` (:class:`~brats_lightning.callbacks.postprocess.TunePostprocess`): the ``paper`` jobs'
weights with the clean-up chosen on the validation cases, and with left-right test-time mirroring,
and the ``all`` jobs' weights with what they chose (tuned on those very cases: optimistic).
Means over folds; the last line is a JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml
from _common import json_line, table

from brats_lightning.callbacks.postprocess import choose
from brats_lightning.data.labels import REGIONS
from brats_lightning.utils import read_checkpoint

ORDER = ["paper", "tumour_sampling", "dice_loss", "budget_lr", "bf16", "all"]
NAMES = {
    "paper": "paper (natural slices, CE, constant LR, fp32)",
    "tumour_sampling": "+ tumour-centred sampling (0.5)",
    "dice_loss": "+ CE + region Dice loss",
    "budget_lr": "+ warm-up + cosine LR over the budget",
    "bf16": "+ bf16 autocast, channels_last",
    "all": "real_fast: all of them",
    "paper+cleanup": "paper + tuned connected-component clean-up",
    "paper+tta": "paper + left-right test-time mirroring",
    "all+tuned": "real_fast + its tuned clean-up and mirroring",
}


def _jobs(folders: list[Path]) -> list[dict]:
    jobs = []
    for folder in folders:
        for ov in sorted(folder.glob("*/.hydra/overrides.yaml")):
            job = ov.parent.parent
            if not (job / "metrics.json").is_file():
                print(f"skipping {job}: unfinished (no metrics.json)", file=sys.stderr)
                continue
            overrides = yaml.safe_load(ov.read_text()) or []
            opts = dict(o.lstrip("+").split("=", 1) for o in overrides if "=" in o)
            tuning = read_checkpoint(job / "checkpoints" / "best.ckpt").get("postprocess_tuning")
            jobs.append(
                {
                    "setting": opts.get("ablation", "all"),
                    "fold": int(opts.get("data.fold", 0)),
                    "metrics": json.loads((job / "metrics.json").read_text()),
                    "tuning": tuning,
                }
            )
    return jobs


def _tuned_rows(job: dict) -> dict[str, list[float]]:
    """Rows from a job's tuning table: the paper's weights with the chosen clean-up (no flips) and
    with the flips (no clean-up); real_fast's with what it chose."""
    tuning = job["tuning"] or {}
    table_ = tuning.get("table") or []
    dice = lambda row: [row[f"dice_{r}"] for r in REGIONS]  # noqa: E731
    out = {}
    if job["setting"] == "paper":
        plain = [r for r in table_ if not r["tta_flips"]]
        flipped = [r for r in table_ if r["tta_flips"] and r["postprocess"] is None]
        if plain:
            out["paper+cleanup"] = dice(plain[choose([r["dice_mean"] for r in plain], 0.002)])
        if flipped:
            out["paper+tta"] = dice(flipped[0])
    elif job["setting"] == "all" and table_:
        chosen = [
            r for r in table_ if r["tta_flips"] == tuning["tta_flips"] and r["postprocess"] == tuning["postprocess"]
        ]
        out["all+tuned"] = dice(chosen[0])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="multirun folders of experiment=real_fast_ablation")
    args = parser.parse_args()
    jobs = _jobs(args.folders)
    if not jobs:
        sys.exit(f"no finished job under {', '.join(map(str, args.folders))}")
    dice: dict[str, list[list[float]]] = defaultdict(list)
    steps: dict[str, list[float]] = defaultdict(list)
    minutes: dict[str, list[float]] = defaultdict(list)
    folds: dict[str, set[int]] = defaultdict(set)
    for job in jobs:
        s, m = job["setting"], job["metrics"]
        folds[s].add(job["fold"])
        dice[s].append([m[f"val/best_dice_{r}"] for r in REGIONS])
        steps[s].append(m["train/steps"])
        minutes[s].append(m["time/total_s"] / 60)
        for name, values in _tuned_rows(job).items():
            dice[name].append(values)
            folds[name].add(job["fold"])
    ref = float(np.mean(dice["paper"])) if dice.get("paper") else None
    rows, figures = [], {}
    for s in [*ORDER, "paper+cleanup", "paper+tta", "all+tuned"]:
        if s not in dice:
            continue
        d = np.mean(dice[s], axis=0)
        mean = float(d.mean())
        delta = f"{mean - ref:+.3f}" if ref is not None and s != "paper" else ""
        st = f"{np.mean(steps[s]):.0f}" if s in steps else ""
        mi = f"{np.mean(minutes[s]):.1f}" if s in minutes else ""
        rows.append([NAMES.get(s, s), str(len(folds[s])), *(f"{v:.3f}" for v in d), f"{mean:.3f}", delta, st, mi])
        figures[s] = {**{f"dice_{r}": float(v) for r, v in zip(REGIONS, d)}, "dice_mean": mean}
        if s in minutes:
            figures[s]["minutes"] = float(np.mean(minutes[s]))
    header = ["setting", "folds", "Dice WT", "Dice TC", "Dice ET", "mean", "vs paper", "steps", "run min"]
    print("Validation Dice (best epoch), mean over folds")
    print(table(rows, header))
    print(json_line(figures))


if __name__ == "__main__":
    main()
