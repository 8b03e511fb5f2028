"""Tables and figures from a multirun: ``python -m brats_lightning.report <multirun folder> [--out DIR]``.

Collects every job of a Hydra multirun (``experiment=shen_blocks``, ``shen_symmetry``,
``havaei_table1``, ``havaei_table2``, or any sweep), groups jobs by setting (their overrides
without ``data.fold``) and writes into ``<multirun folder>/report/``:

* ``results.md`` and ``results.csv``: test Dice, sensitivity, specificity and PPV per region
  (complete / core / enhancing), mean ± std over folds, in the papers' table layout; ``runs.csv``
  has every job;
* ``val_dice.png``: validation Dice against epoch per region (each job's ``val_curve.csv``), one
  line per setting (mean over folds, band = ± std), as Shen et al. Fig. 4 and 5; with two settings
  a fourth panel shows the residual of the whole-tumour curves (Fig. 5b);
* ``overlays.png``: the same test slices for every setting: T1c, T2, FLAIR with the ground truth,
  then each setting's prediction (Shen et al. Fig. 6, Havaei et al. Fig. 5).

A results folder is data, whoever made it: its JSON and YAML files are read as plain values and
checked, and the ensemble rows rebuild only brats_lightning's own data module from the options a
job's ``.hydra/config.yaml`` gives (validated: :class:`~brats_lightning.data.options.DataOptions`);
a config that names any other callable (``_target_``) is refused, never called.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np

from brats_lightning.data.labels import REGION_TITLES, REGIONS
from brats_lightning.errors import ConfigError, UserError, cli
from brats_lightning.evaluation.metrics import METRICS
from brats_lightning.evaluation.papers import LAYOUTS, PUBLISHED, SOURCES, paper_of
from brats_lightning.evaluation.results import PAPER_METRICS
from brats_lightning.files import write_csv_atomic, write_text_atomic
from brats_lightning.report.ensembles import ensemble_of_folds
from brats_lightning.report.runs import Run, by_setting, collect_runs
from brats_lightning.schema import read_yaml, validate
from brats_lightning.viz import plot_curves, plot_overlays

__all__ = ["main", "write_report"]


def _metrics(runs: list[Run]) -> list[str]:
    """The registered metrics the runs report, the papers' first (registry order)."""
    present = {k.removeprefix("test/").rsplit("_", 1)[0] for r in runs for k in r.metrics if k.startswith("test/")}
    return [*PAPER_METRICS, *(m for m in METRICS if m in present and m not in PAPER_METRICS)]


def _summaries(runs: list[Run]) -> list[dict]:
    """Mean and std over folds of every test metric, per setting."""
    rows = []
    for setting, group in by_setting(runs).items():
        row: dict = {"setting": setting, "folds": len(group)}
        for m in _metrics(runs):
            for r in REGIONS:
                vals = [float(v) for g in group if (v := g.metrics.get(f"test/{m}_{r}")) is not None]
                row[f"{m}_{r}_mean"] = float(np.mean(vals)) if vals else float("nan")
                row[f"{m}_{r}_std"] = float(np.std(vals)) if vals else float("nan")
        rows.append(row)
    return rows


def _table(runs: list[Run], ensemble: bool, cache_dir: Path) -> tuple[list[dict], str]:
    """The results in each paper's own layout, with the paper's published rows beside ours."""
    rows = _summaries(runs)
    folds = sorted({r["folds"] for r in rows})
    notes: list[str] = []
    if ensemble:
        for setting, fold_runs in by_setting(runs).items():
            metrics, why = ensemble_of_folds(fold_runs, cache_dir)
            if metrics is None:
                if len(fold_runs) > 1:
                    notes.append(f"No ensemble of the folds of {setting}: {why}.")
                continue
            name = f"{setting}, ensemble of {len(fold_runs)} folds"
            row = _summaries([Run(fold_runs[0].folder, name, 0, metrics)])[0]
            rows.insert(rows.index(next(r for r in rows if r["setting"] == setting)) + 1, row)
            notes.append(f"{name}: the folds' best checkpoints, probabilities averaged ({why}).")
    groups: dict[str | None, list[dict]] = defaultdict(list)
    for row in rows:
        groups[paper_of(row["setting"])].append(row)
    lines: list[str] = []
    for paper, group in groups.items():
        layout = LAYOUTS[paper]
        head = ["Method"] + [f"{h} {REGION_TITLES[r]}" for h, _ in layout for r in REGIONS]
        lines += ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
        for row in group:
            # a standard deviation over one fold says nothing: leave it out rather than print ± 0.00
            cells = [
                f"{row[f'{m}_{r}_mean']:.2f}" + (f" ± {row[f'{m}_{r}_std']:.2f}" if row["folds"] > 1 else "")
                for _, m in layout
                for r in REGIONS
            ]
            lines.append(f"| {row['setting']} (ours) | " + " | ".join(cells) + " |")
        for row in group:  # the published figures of the same methods (BRATS 2013 test set)
            pub = PUBLISHED.get(row["setting"])
            if pub:
                cells = [f"{pub[m][i]:.2f}" if m in pub else "–" for _, m in layout for i in range(3)]
                lines.append(
                    f"| {row['setting']} ({SOURCES[str(paper)]}, BRATS 2013 test) | " + " | ".join(cells) + " |"
                )
        if paper == "havaei":
            lines.append(
                '\n† Havaei et al.\'s tables print PPV, TP / (TP + FP), under the heading "Specificity" (Shen et '
                "al.'s Table 1 lists the same figures as their PPV); it is PPV here too. True specificity, "
                "TN / (TN + FP), close to 1 for every method, is in the last columns. Published figures have no "
                "true specificity (–)."
            )
        lines.append("")
    what = "one fold per setting" if folds == [1] else f"mean ± std over {'/'.join(map(str, folds))} folds per setting"
    lines += [
        f"Test metrics, {what} (ours on this run's data; the papers' on the BRATS 2013 test set). Complete = "
        "whole tumour, Core = tumour core, Enhancing = enhancing tumour.",
        *([""] + notes if notes else []),
    ]
    return rows, "\n".join(lines) + "\n"


def _task_name(root: Path) -> str:
    """The multirun's task name (from Hydra's multirun.yaml), e.g. ``shen_symmetry``."""
    try:
        cfg = read_yaml(root / "multirun.yaml", "multirun config")
    except UserError:
        return root.name
    name = cfg.get("task_name") if isinstance(cfg, dict) else None
    return name[:100] if isinstance(name, str) and name else root.name


def write_report(multirun: str | Path, out: str | Path | None = None, ensemble: bool = True) -> dict[str, Path]:
    """Collect the runs of ``multirun`` and write the tables and figures; returns their paths.

    With ``ensemble``, every setting trained on several folds also gets the row of its folds'
    ensemble (:func:`ensemble_of_folds`), scored on the same held-out test cases.
    """
    runs = collect_runs(multirun)
    out_dir = Path(out) if out else Path(multirun) / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, md = _table(runs, ensemble, out_dir / "cache")  # the ensembles' test cases: inside the report's folder
    title = _task_name(Path(multirun))
    write_text_atomic(out_dir / "results.md", f"# {title}\n\n" + md)
    write_csv_atomic(out_dir / "results.csv", rows, list(rows[0]))
    run_cols = ["folder", "setting", "fold"] + [f"test/{m}_{r}" for m in _metrics(runs) for r in REGIONS]
    write_csv_atomic(
        out_dir / "runs.csv",
        [
            {"folder": r.folder.name, "setting": r.setting, "fold": r.fold}
            | {c: r.metrics.get(c, float("nan")) for c in run_cols[3:]}
            for r in runs
        ],
        run_cols,
    )
    paths = {
        "results.md": out_dir / "results.md",
        "results.csv": out_dir / "results.csv",
        "runs.csv": out_dir / "runs.csv",
        "val_dice.png": plot_curves(runs, out_dir, title),
    }
    overlays = plot_overlays(runs, out_dir)
    if overlays is not None:
        paths["overlays.png"] = overlays
    return paths


@cli
def main(argv: list[str] | None = None) -> None:
    """``python -m brats_lightning.report MULTIRUN [--out DIR] [--no-ensemble]``; options checked with
    :class:`brats_lightning.options.ReportOptions`, every error one line (exit 2)."""
    from brats_lightning.options import ArgumentParser, ReportOptions  # (its schemas import torch: only here)

    parser = ArgumentParser(
        prog="python -m brats_lightning.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("multirun", help="a Hydra multirun folder (outputs/<task>/multiruns/<date>)")
    parser.add_argument("--out", help="output folder (default: <multirun>/report)")
    parser.add_argument(
        "--no-ensemble", action="store_true", help="no 'ensemble of folds' rows (they run the folds' models)"
    )
    args = parser.parse_args(argv)
    validate(ReportOptions, vars(args), "report", ConfigError, options=True)
    try:
        paths = write_report(args.multirun, args.out, ensemble=not args.no_ensemble)
    except FileNotFoundError as e:
        parser.exit(2, f"error: {e}\n")
    print((paths["results.md"]).read_text())
    for p in paths.values():
        print(f"wrote {p}")
