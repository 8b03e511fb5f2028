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
job's ``.hydra/config.yaml`` gives (validated: :class:`~brats_lightning.schema.DataModuleOptions`);
a config that names any other callable (``_target_``) is refused, never called.
"""

from __future__ import annotations

import argparse
import csv
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import yaml

from brats_lightning.data.labels import REGION_TITLES, REGIONS
from brats_lightning.evaluation.metrics import METRICS
from brats_lightning.evaluation.papers import LAYOUTS, PUBLISHED, SOURCES, paper_of
from brats_lightning.evaluation.results import PAPER_METRICS
from brats_lightning.files import write_csv_atomic, write_text_atomic
from brats_lightning.viz import group_by_setting, plot_curves, plot_overlays

if TYPE_CHECKING:
    from brats_lightning.data.datamodule import BratsDataModule

__all__ = ["Run", "collect_runs", "job_datamodule", "write_report", "main"]

log = logging.getLogger("brats_lightning.report.runs")

_IGNORED = ("data.fold", "experiment", "hydra.", "paths.", "trainer.", "logger", "data.patches_per_epoch", "seed")
#: overrides that choose the method: a setting shows the method's name (``summary.json``) instead
_METHOD_KEYS = ("model=", "havaei=")


@dataclass
class Run:
    """One finished job of a multirun."""

    folder: Path
    setting: str
    fold: int
    metrics: dict
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    slices: Path | None = None


def _setting(overrides: list[str], common: set[str], method: str | None = None) -> str:
    """A setting's name: its overrides that differ between jobs, without the fold; the override that
    chooses the model (``model=``, ``havaei=``) is shown as the method's name (e.g. ``TwoPathCNN*``)."""
    keep = [o for o in overrides if o not in common and not o.lstrip("+~").startswith(_IGNORED)]
    names = [method if method and o.startswith(_METHOD_KEYS) else o for o in sorted(keep)]
    return ", ".join(dict.fromkeys(names)) if names else (method or "default")


def _json(path: Path, what: str) -> object | None:
    """A JSON file of a results folder as plain data, ``None`` when it is missing or not usable."""
    from brats_lightning.errors import UserError
    from brats_lightning.schema import read_json

    if not path.is_file():
        return None
    try:
        return read_json(path, what)
    except UserError as e:
        log.warning("%s", e)
        return None


def _method(run_dir: Path) -> str | None:
    """The method's name a run recorded in its ``summary.json`` (``None`` for runs without one)."""
    summary = _json(run_dir / "summary.json", "summary")
    method = summary.get("method") if isinstance(summary, dict) else None
    return method[:200] if isinstance(method, str) else None


def _numbers(doc: object) -> dict[str, float]:
    """The numeric entries of a ``metrics.json`` (anything else is dropped)."""
    if not isinstance(doc, dict):
        return {}
    return {
        str(k): float(v)
        for k, v in doc.items()
        if isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def _overrides(path: Path) -> list[str]:
    """A job's ``.hydra/overrides.yaml``: a list of strings (anything else: none)."""
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError, RecursionError) as e:
        log.warning("%s: unreadable (%s)", path, e)
        return []
    return [o for o in doc if isinstance(o, str)] if isinstance(doc, list) else []


def _last_stage(job: Path) -> Path:
    """A multi-stage job's last stage folder (``pipeline.json``), else the job itself; always inside the job."""
    stages = _json(job / "pipeline.json", "pipeline description")
    if not isinstance(stages, dict) or not stages:
        return job
    name, last = list(stages.items())[-1]
    folder = Path(last["dir"]) if isinstance(last, dict) and isinstance(last.get("dir"), str) else None
    if folder is not None and folder.is_dir():
        return folder
    local = job / str(name)
    return local if local.is_dir() and local.resolve().is_relative_to(job.resolve()) else job


def _curves(csv_file: Path) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = defaultdict(list)
    if not csv_file.is_file():
        return out
    with csv_file.open() as f:
        for row in csv.DictReader(f):
            for r in REGIONS:
                v = row.get(f"val/dice_{r}")
                if v:
                    out[r].append((int(row["epoch"]), float(v)))
    return out


def collect_runs(multirun: str | Path) -> list[Run]:
    """Every job folder under ``multirun`` that has test metrics (pipeline jobs: their last stage).

    Raises:
        FileNotFoundError: the folder does not exist or holds no finished job.
    """
    root = Path(multirun)
    if not root.is_dir():
        raise FileNotFoundError(f"multirun folder {root} does not exist")
    jobs = [(ov.parent.parent, _overrides(ov)) for ov in sorted(root.glob("*/.hydra/overrides.yaml"))]
    jobs = [(job, ovs) for job, ovs in jobs if (job / "metrics.json").is_file()]
    common = set.intersection(*(set(o) for _, o in jobs)) if len(jobs) > 1 else set()
    runs = []
    for job, overrides in jobs:
        metrics_file = job / "metrics.json"
        folds = [o.split("=", 1)[1] for o in overrides if o.startswith("data.fold=")]
        fold = int(folds[0]) if folds and folds[0].isdigit() else 0
        last = _last_stage(job)
        slices = last / "test_slices.npz"
        curve = last / "val_curve.csv" if (last / "val_curve.csv").is_file() else last / "csv" / "metrics.csv"
        runs.append(
            Run(
                job,
                _setting(overrides, common, _method(last)),
                fold,
                _numbers(_json(metrics_file, "metrics")),
                _curves(curve),
                slices if slices.is_file() else None,
            )
        )
    if not runs:
        raise FileNotFoundError(f"no finished job (with metrics.json) under {root}")
    return runs


def _metrics(runs: list[Run]) -> list[str]:
    """The registered metrics the runs report, the papers' first (registry order)."""
    present = {k.removeprefix("test/").rsplit("_", 1)[0] for r in runs for k in r.metrics if k.startswith("test/")}
    return [*PAPER_METRICS, *(m for m in METRICS if m in present and m not in PAPER_METRICS)]


def _by_setting(runs: list[Run]) -> dict[str, list[Run]]:
    return group_by_setting(runs)  # type: ignore[return-value]  # Run fulfils viz.RunLike


def _summaries(runs: list[Run]) -> list[dict]:
    """Mean and std over folds of every test metric, per setting."""
    rows = []
    for setting, group in _by_setting(runs).items():
        row: dict = {"setting": setting, "folds": len(group)}
        for m in _metrics(runs):
            for r in REGIONS:
                vals = [float(v) for g in group if (v := g.metrics.get(f"test/{m}_{r}")) is not None]
                row[f"{m}_{r}_mean"] = float(np.mean(vals)) if vals else float("nan")
                row[f"{m}_{r}_std"] = float(np.std(vals)) if vals else float("nan")
        rows.append(row)
    return rows


def ensemble_of_folds(group: list[Run]) -> tuple[dict[str, float] | None, str]:
    """The test metrics of the folds' ensemble (their best checkpoints' probabilities averaged), on the
    test cases the folds were scored on, with the same data module and metrics as their own test.

    Returns:
        The flat test metrics (``test/dice_wt`` ...), or ``None`` with the reason when it cannot be
        computed (fewer than two folds, no held-out test cases, a multi-stage job, missing files).
    """
    import pytorch_lightning as pl
    import torch

    from brats_lightning.errors import UserError
    from brats_lightning.evaluation.results import run_metrics, summarise
    from brats_lightning.load import find_checkpoints, load_predictor
    from brats_lightning.precision import inference_dtype

    if len(group) < 2:
        return None, "one fold"
    if any((g.folder / "pipeline.json").is_file() for g in group):
        return None, "multi-stage jobs (predict with their checkpoints instead)"
    try:
        paths = [find_checkpoints(g.folder)[0] for g in group]
        dm = job_datamodule(group[0].folder)
        dm.prepare_data()
        dm.setup("test")
        if not dm.test_cases:
            return None, "no held-out test cases (data.test_fraction=0: each fold is scored on its own validation fold)"
        ensemble, _ = load_predictor(paths, flips=[])  # the members must share their data (else: an error)
    except (UserError, OSError) as e:
        log.warning("No ensemble of the folds of %s: %s", group[0].setting, e)
        return None, str(e)
    bf16 = inference_dtype("auto", "cpu") == torch.bfloat16  # as the folds' own test (precision auto)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        precision="bf16-mixed" if bf16 else "32-true",
    )
    trainer.test(ensemble, datamodule=dm, verbose=False)
    return run_metrics(summarise(ensemble.test_results)), f"{len(paths)} folds on {len(dm.test_cases)} test cases"


def job_datamodule(job: str | Path) -> BratsDataModule:
    """The data module a job trained on, rebuilt from its ``.hydra/config.yaml`` as data.

    The ``data`` node is read as plain values (OmegaConf resolves its interpolations with the
    registered resolvers, none of which runs code), its ``_target_`` must name brats_lightning's
    :class:`~brats_lightning.data.datamodule.BratsDataModule`, no value may name another callable,
    and every option is type- and range-checked (:class:`~brats_lightning.schema.DataModuleOptions`);
    the class is then called directly, never through ``hydra.utils.instantiate``.

    Raises:
        ConfigError: the file is unreadable, names another callable, or has an option of the wrong
            type or range; the message names the file and the option.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from brats_lightning.config import register_resolvers
    from brats_lightning.data.datamodule import BratsDataModule
    from brats_lightning.errors import ConfigError
    from brats_lightning.schema import DataModuleOptions, check_no_targets, validate

    register_resolvers()
    cfg_file = Path(job) / ".hydra" / "config.yaml"
    try:
        cfg = OmegaConf.load(cfg_file)
        data = OmegaConf.to_container(cfg.data, resolve=True) if "data" in cfg else None
    except (OSError, yaml.YAMLError, OmegaConfBaseException, ValueError, RecursionError) as e:
        why = f"{type(e).__name__}: {str(e).splitlines()[0]}"
        raise ConfigError(f"{cfg_file}: not a usable run config ({why})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{cfg_file}: no data options (data: ...) in this run config")
    target = data.get("_target_")
    expected = f"{BratsDataModule.__module__}.{BratsDataModule.__qualname__}"
    if target != expected:
        raise ConfigError(
            f"{cfg_file}: data._target_ names {target!r:.80}: only {expected} is rebuilt from a results folder; "
            "nothing else it names is called"
        )
    check_no_targets({k: v for k, v in data.items() if k != "_target_"}, cfg_file, "data")
    options = validate(DataModuleOptions, data, f"{cfg_file} (data)", ConfigError)
    return BratsDataModule(**options.kwargs())


def _table(runs: list[Run], ensemble: bool = True) -> tuple[list[dict], str]:
    """The results in each paper's own layout, with the paper's published rows beside ours."""
    rows = _summaries(runs)
    folds = sorted({r["folds"] for r in rows})
    notes: list[str] = []
    if ensemble:
        for setting, fold_runs in _by_setting(runs).items():
            metrics, why = ensemble_of_folds(fold_runs)
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
        cfg = yaml.safe_load((root / "multirun.yaml").read_text())
    except (OSError, yaml.YAMLError, RecursionError):
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
    rows, md = _table(runs, ensemble)
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("multirun", help="a Hydra multirun folder (outputs/<task>/multiruns/<date>)")
    parser.add_argument("--out", help="output folder (default: <multirun>/report)")
    parser.add_argument(
        "--no-ensemble", action="store_true", help="no 'ensemble of folds' rows (they run the folds' models)"
    )
    args = parser.parse_args(argv)
    try:
        paths = write_report(args.multirun, args.out, ensemble=not args.no_ensemble)
    except FileNotFoundError as e:
        parser.exit(2, f"error: {e}\n")
    print((paths["results.md"]).read_text())
    for p in paths.values():
        print(f"wrote {p}")


if __name__ == "__main__":
    main()
