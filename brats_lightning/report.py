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
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from brats_lightning.data.labels import REGIONS, get_convention
from brats_lightning.papers import PUBLISHED, paper_of
from brats_lightning.utils import atomic_path, write_csv_atomic, write_text_atomic

__all__ = ["Run", "collect_runs", "write_report", "main"]

METRICS = ("dice", "sensitivity", "specificity", "ppv")
REGION_TITLES = {"wt": "Complete (whole tumour)", "tc": "Core", "et": "Enhancing"}
_IGNORED = ("data.fold", "experiment", "hydra.", "paths.", "trainer.", "logger", "data.patches_per_epoch", "seed")
_NAMES = {
    "model=fcn": "FCN (3 blocks)",
    "model=fcn4": "FCN (4 blocks)",
    "model=fcn_sym": "FCN + symmetry (3 blocks)",
    "model=fcn4_sym": "FCN + symmetry (4 blocks)",
    "havaei=twopath_star": "TwoPathCNN*",
    "havaei=twopath": "TwoPathCNN",
    "havaei=localpath_star": "LocalPathCNN*",
    "havaei=localpath": "LocalPathCNN",
    "havaei=globalpath_star": "GlobalPathCNN*",
    "havaei=average_star": "AverageCNN*",
    "havaei=input_cascade_star": "InputCascadeCNN*",
    "havaei=local_cascade_star": "LocalCascadeCNN*",
    "havaei=mf_cascade_star": "MFCascadeCNN*",
}


@dataclass
class Run:
    """One finished job of a multirun."""

    folder: Path
    setting: str
    fold: int
    metrics: dict
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    slices: Path | None = None


def _setting(overrides: list[str], common: set[str]) -> str:
    """A setting's name: its overrides that differ between jobs, without the fold."""
    keep = [o for o in overrides if o not in common and not o.lstrip("+~").startswith(_IGNORED)]
    names = [_NAMES.get(o, o) for o in sorted(keep)]
    return ", ".join(names) if names else "default"


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
    jobs = [
        (ov.parent.parent, yaml.safe_load(ov.read_text()) or []) for ov in sorted(root.glob("*/.hydra/overrides.yaml"))
    ]
    jobs = [(job, ovs) for job, ovs in jobs if (job / "metrics.json").is_file()]
    common = set.intersection(*(set(o) for _, o in jobs)) if len(jobs) > 1 else set()
    runs = []
    for job, overrides in jobs:
        metrics_file = job / "metrics.json"
        fold = next((int(o.split("=", 1)[1]) for o in overrides if o.startswith("data.fold=")), 0)
        last = job
        if (job / "pipeline.json").is_file():
            stages = json.loads((job / "pipeline.json").read_text())
            last = Path(list(stages.values())[-1]["dir"])
            last = last if last.is_dir() else job / list(stages)[-1]
        slices = last / "test_slices.npz"
        curve = last / "val_curve.csv" if (last / "val_curve.csv").is_file() else last / "csv" / "metrics.csv"
        runs.append(
            Run(
                job,
                _setting(overrides, common),
                fold,
                json.loads(metrics_file.read_text()),
                _curves(curve),
                slices if slices.is_file() else None,
            )
        )
    if not runs:
        raise FileNotFoundError(f"no finished job (with metrics.json) under {root}")
    return runs


def _by_setting(runs: list[Run]) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.setting, []).append(r)
    return groups


#: each paper's table layout: (heading, our metric) per column group. Havaei et al. print PPV under
#: "Specificity" (see :mod:`brats_lightning.papers`); true specificity follows in its own columns.
LAYOUTS = {
    "havaei": (
        ("Dice", "dice"),
        ("Specificity†", "ppv"),
        ("Sensitivity", "sensitivity"),
        ("True specificity", "specificity"),
    ),
    "shen": (("Dice", "dice"), ("PPV", "ppv"), ("Sensitivity", "sensitivity"), ("Specificity", "specificity")),
    None: (("Dice", "dice"), ("Sensitivity", "sensitivity"), ("Specificity", "specificity"), ("PPV", "ppv")),
}
_SOURCES = {"havaei": "Havaei et al. 2017", "shen": "Shen et al. 2017"}


def _summaries(runs: list[Run]) -> list[dict]:
    """Mean and std over folds of every test metric, per setting."""
    rows = []
    for setting, group in _by_setting(runs).items():
        row: dict = {"setting": setting, "folds": len(group)}
        for m in METRICS:
            for r in REGIONS:
                vals = [g.metrics.get(f"test/{m}_{r}") for g in group]
                vals = [v for v in vals if v is not None]
                row[f"{m}_{r}_mean"] = float(np.mean(vals)) if vals else float("nan")
                row[f"{m}_{r}_std"] = float(np.std(vals)) if vals else float("nan")
        rows.append(row)
    return rows


def _table(runs: list[Run]) -> tuple[list[dict], str]:
    """The results in each paper's own layout, with the paper's published rows beside ours."""
    rows = _summaries(runs)
    groups: dict[str | None, list[dict]] = defaultdict(list)
    for row in rows:
        groups[paper_of(row["setting"])].append(row)
    lines: list[str] = []
    for paper, group in groups.items():
        layout = LAYOUTS[paper]
        head = ["Method"] + [f"{h} {REGION_TITLES[r].split()[0]}" for h, _ in layout for r in REGIONS]
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
                lines.append(f"| {row['setting']} ({_SOURCES[paper]}, BRATS 2013 test) | " + " | ".join(cells) + " |")
        if paper == "havaei":
            lines.append(
                '\n† Havaei et al.\'s tables print PPV, TP / (TP + FP), under the heading "Specificity" (Shen et '
                "al.'s Table 1 lists the same figures as their PPV); it is PPV here too. True specificity, "
                "TN / (TN + FP), close to 1 for every method, is in the last columns. Published figures have no "
                "true specificity (–)."
            )
        lines.append("")
    folds = sorted({r["folds"] for r in rows})
    what = "one fold per setting" if folds == [1] else f"mean ± std over {'/'.join(map(str, folds))} folds per setting"
    lines += [
        f"Test metrics, {what} (ours on this run's data; the papers' on the BRATS 2013 test set). Complete = "
        "whole tumour, Core = tumour core, Enhancing = enhancing tumour.",
    ]
    return rows, "\n".join(lines) + "\n"


def _mean_curve(group: list[Run], region: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    per_epoch: dict[int, list[float]] = defaultdict(list)
    for g in group:
        for e, v in g.curves.get(region, []):
            per_epoch[e].append(v)
    epochs = np.array(sorted(per_epoch))
    mean = np.array([np.mean(per_epoch[e]) for e in epochs])
    std = np.array([np.std(per_epoch[e]) for e in epochs])
    return epochs, mean, std


def plot_curves(runs: list[Run], out: Path, title: str) -> Path:
    """Validation Dice against epoch, one panel per region (+ the residual with two settings)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    groups = _by_setting(runs)
    residual = len(groups) == 2
    ncols = 4 if residual else 3
    fig, axes = plt.subplots(1, ncols, figsize=(4.2 * ncols, 3.8), constrained_layout=True)
    colours = plt.cm.tab10.colors
    for ax, r in zip(axes, REGIONS):
        for i, (setting, group) in enumerate(groups.items()):
            e, m, s = _mean_curve(group, r)
            if e.size == 0:
                continue
            e1 = e + 1  # epochs counted from 1, as in the papers' figures
            ax.plot(e1, m, marker="o", ms=3, color=colours[i % 10], label=f"{setting} (n={len(group)})")
            if len(group) > 1:
                ax.fill_between(e1, m - s, m + s, color=colours[i % 10], alpha=0.15, lw=0)
        ax.set_title(REGION_TITLES[r])
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation Dice")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    if residual:
        (s0, g0), (s1, g1) = groups.items()
        e0, m0, _ = _mean_curve(g0, "wt")
        e1_, m1, _ = _mean_curve(g1, "wt")
        common = np.intersect1d(e0, e1_)
        diff = m1[np.isin(e1_, common)] - m0[np.isin(e0, common)]
        ax = axes[3]
        ax.bar(common + 1, diff, color=["tab:green" if d >= 0 else "tab:red" for d in diff])
        ax.axhline(0, color="k", lw=0.8)
        if diff.size:
            ax.axhline(diff.mean(), color="tab:blue", ls="--", lw=1, label=f"mean {diff.mean():+.3f}")
            ax.legend(loc="best", fontsize=8)
        ax.set_title("Residual, complete tumour")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"Dice: {s1}\nminus {s0}", fontsize=8)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 3), fontsize=9, frameon=False)
    else:
        for ax in axes[:3]:
            ax.text(0.5, 0.5, "no validation curves", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(title)
    path = out / "val_dice.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def _colour(classes: np.ndarray, convention: str) -> np.ndarray:
    conv = get_convention(convention)
    lut = np.array(conv.colours, dtype=np.float32)
    rgba = np.zeros((*classes.shape, 4), np.float32)
    rgba[..., :3] = lut[classes]
    rgba[..., 3] = (classes > 0) * 0.55
    return rgba


def plot_overlays(runs: list[Run], out: Path, cases: int = 3) -> Path | None:
    """The same test slices for each setting: T1c, T2, FLAIR + truth, then every setting's prediction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from brats_lightning.callbacks.wandb_media import display_image

    groups = _by_setting(runs)
    data = {}
    for setting, group in groups.items():
        first = next((g for g in sorted(group, key=lambda g: g.fold) if g.slices is not None), None)
        if first is not None:
            data[setting] = dict(np.load(first.slices, allow_pickle=False))
    if not data:
        return None
    ref = next(iter(data.values()))
    channels = [str(c) for c in ref["channels"]]
    convention = str(ref["convention"])
    ids = sorted({k.split("/")[0] for k in ref if "/" in k})
    ids = [c for c in ids if all(f"{c}/pred" in d for d in data.values())][:cases]
    shown = [m for m in ("t1c", "t2") if m in channels]
    ncols = len(shown) + 1 + len(data)
    fig, axes = plt.subplots(len(ids), ncols, figsize=(2.3 * ncols, 2.5 * len(ids) + 0.6), squeeze=False)
    for i, case in enumerate(ids):
        image, label = ref[f"{case}/image"].astype(np.float32), ref[f"{case}/label"]
        base = display_image(image[channels.index("flair") if "flair" in channels else 0])
        col = 0
        for m in shown:
            axes[i, col].imshow(display_image(image[channels.index(m)]), cmap="gray")
            axes[i, col].set_title("T1c" if m == "t1c" else m.upper(), fontsize=9)
            col += 1
        axes[i, col].imshow(base, cmap="gray")
        axes[i, col].imshow(_colour(label.T[::-1], convention))
        axes[i, col].set_title("FLAIR + ground truth", fontsize=9)
        col += 1
        for setting, d in data.items():
            axes[i, col].imshow(base, cmap="gray")
            axes[i, col].imshow(_colour(d[f"{case}/pred"].T[::-1], convention))
            axes[i, col].set_title(setting, fontsize=8)
            col += 1
        axes[i, 0].set_ylabel(case, fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    conv = get_convention(convention)
    fig.legend(
        handles=[Patch(color=c, label=n) for n, c in zip(conv.names[1:], conv.colours[1:])],
        loc="lower center",
        ncol=len(conv.names) - 1,
        fontsize=9,
        frameon=False,
    )
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    path = out / "overlays.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def _task_name(root: Path) -> str:
    """The multirun's task name (from Hydra's multirun.yaml), e.g. ``shen_symmetry``."""
    try:
        cfg = yaml.safe_load((root / "multirun.yaml").read_text())
        return str(cfg.get("task_name") or root.name)
    except (OSError, yaml.YAMLError, AttributeError):
        return root.name


def write_report(multirun: str | Path, out: str | Path | None = None) -> dict[str, Path]:
    """Collect the runs of ``multirun`` and write the tables and figures; returns their paths."""
    runs = collect_runs(multirun)
    out_dir = Path(out) if out else Path(multirun) / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, md = _table(runs)
    title = _task_name(Path(multirun))
    write_text_atomic(out_dir / "results.md", f"# {title}\n\n" + md)
    write_csv_atomic(out_dir / "results.csv", rows, list(rows[0]))
    run_cols = ["folder", "setting", "fold"] + [f"test/{m}_{r}" for m in METRICS for r in REGIONS]
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
    args = parser.parse_args(argv)
    try:
        paths = write_report(args.multirun, args.out)
    except FileNotFoundError as e:
        parser.exit(2, f"error: {e}\n")
    print((paths["results.md"]).read_text())
    for p in paths.values():
        print(f"wrote {p}")


if __name__ == "__main__":
    main()
