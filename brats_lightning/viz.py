"""Every picture of the package: the synthetic data montage, the report's figures and the W&B overlays.

Label colours come from one table, :attr:`brats_lightning.data.labels.LabelConvention.colours`
(necrosis / NCR red, edema green, non-enhancing blue, enhancing yellow). Matplotlib (and W&B) are
imported inside the functions, so importing this module stays light; figures are drawn on Agg
canvases of their own (no pyplot state, the session's backend is left as it is).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from brats_lightning.data.labels import REGION_TITLES, REGIONS, LabelConvention, get_convention
from brats_lightning.files import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "OVERLAY_ALPHA",
    "display_image",
    "display_labels",
    "label_rgba",
    "wandb_overlay",
    "save_montage",
    "plot_curves",
    "plot_overlays",
    "group_by_setting",
]

OVERLAY_ALPHA = 0.55
"""Opacity of the label colours drawn over an image."""


class RunLike(Protocol):
    """What the report's figures read of a run (:class:`brats_lightning.report.runs.Run`)."""

    setting: str
    fold: int
    curves: dict[str, list[tuple[int, float]]]
    slices: Path | None


# --------------------------------------------------------------------------------------------
# images and label overlays
# --------------------------------------------------------------------------------------------


def display_image(image: np.ndarray) -> np.ndarray:
    """``(X, Y)`` z-scored slice -> ``(Y, X)`` uint8, anterior up, the patient's right on the right."""
    a = np.asarray(image, dtype=np.float32)
    brain = a != 0  # z-scored images: the background is exactly 0; shown black
    lo, hi = np.percentile(a[brain], [0.5, 99.5]) if brain.any() else (0.0, 1.0)
    a = np.where(brain, 0.08 + 0.92 * np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1), 0.0)
    return (a.T[::-1] * 255).astype(np.uint8)


def display_labels(classes: np.ndarray) -> np.ndarray:
    """``(X, Y)`` label slice -> ``(Y, X)``, oriented as :func:`display_image` (contiguous)."""
    return np.ascontiguousarray(np.asarray(classes).T[::-1])


def label_rgba(classes: np.ndarray, convention: str | LabelConvention, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """RGBA overlay of internal classes: the convention's colours, transparent background.

    Args:
        classes: internal classes ``0..K-1`` (any shape).
        convention: the label convention (its :attr:`~LabelConvention.colours`).
        alpha: opacity of the tumour classes.

    Returns:
        float32 ``(*classes.shape, 4)``.
    """
    lut = np.array(get_convention(convention).colours, dtype=np.float32)
    rgba = np.zeros((*classes.shape, 4), np.float32)
    rgba[..., :3] = lut[classes]
    rgba[..., 3] = (classes > 0) * alpha
    return rgba


def _legend_handles(conv: LabelConvention, with_values: bool = False) -> list[Any]:
    """Legend patches of the tumour classes (``name (file label)`` with ``with_values``)."""
    from matplotlib.patches import Patch

    return [
        Patch(color=c, label=f"{n} ({v})" if with_values else n)
        for n, c, v in zip(conv.names[1:], conv.colours[1:], conv.labels[1:], strict=True)
    ]


def wandb_overlay(test_slice: dict[str, Any], class_labels: dict[int, str]) -> Any:
    """A ``wandb.Image`` of a test slice's FLAIR with two toggleable masks: ground truth and prediction.

    Args:
        test_slice: ``image`` ``(C, X, Y)``, ``channels``, ``label`` and ``pred`` ``(X, Y)``, ``case``
            (an item of a segmentation module's ``test_slices``).
        class_labels: internal class -> name.
    """
    import wandb

    ch = test_slice["channels"].index("flair") if "flair" in test_slice["channels"] else 0
    masks = {
        key: {"mask_data": display_labels(test_slice[src]), "class_labels": class_labels}
        for key, src in (("ground_truth", "label"), ("prediction", "pred"))
    }
    return wandb.Image(display_image(test_slice["image"][ch]), masks=masks, caption=test_slice["case"])


def _figure(figsize: tuple[float, float], constrained: bool = False) -> Figure:
    """A figure on an Agg canvas of its own (matplotlib imported here: no pyplot, no backend switch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained" if constrained else None)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG atomically (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    return path


# --------------------------------------------------------------------------------------------
# synthetic data set
# --------------------------------------------------------------------------------------------


def save_montage(cases: Sequence[tuple[str, dict[str, np.ndarray]]], out_png: str | Path) -> Path:
    """Save a PNG montage of BraTS cases (2017-2021 labels), one row per case.

    Columns FLAIR, T1, T1c, T2 and FLAIR with the labels (the convention's colours: NCR/NET red, edema
    green, enhancing yellow) on the axial slice where the tumour is largest, shown in radiological
    convention (anterior up, the patient's right on the left).

    Args:
        cases: ``(name, arrays)`` per row; arrays ``flair``, ``t1``, ``t1ce``, ``t2``, ``seg`` in the files'
            voxel order (:func:`brats_lightning.data.synthetic.read_cases` reads a synthetic data set's).
        out_png: output file.

    Returns:
        The PNG path.

    Raises:
        ValueError: no case given.
    """
    if not cases:
        raise ValueError("no case to show")
    conv = get_convention("brats2017")
    titles = ("FLAIR", "T1", "T1c", "T2", "FLAIR + labels")
    nx, ny = cases[0][1]["seg"].shape[:2]
    panel = 2.2  # inches per panel height
    fig = _figure((5 * panel * nx / ny + 0.5, panel * len(cases) + 0.7))
    axes = fig.subplots(len(cases), 5, squeeze=False)
    for row, (name, case) in enumerate(cases):
        area = (case["seg"] > 0).sum(axis=(0, 1))
        brain = (case["t1"] > 0).sum(axis=(0, 1))
        z = int(np.argmax(area)) if area.max() > 0 else int(np.argmax(brain))
        for col, key in enumerate(("flair", "t1", "t1ce", "t2", "flair")):
            ax = axes[row, col]
            vol = case[key]
            vmax = float(np.percentile(vol[vol > 0], 99.5)) if (vol > 0).any() else 1.0
            ax.imshow(vol[:, :, z].T, cmap="gray", vmin=0, vmax=vmax, interpolation="nearest")
            if col == 4:
                classes = conv.to_internal(case["seg"][:, :, z].T, name)
                ax.imshow(label_rgba(classes, conv), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(titles[col], fontsize=9)
            if col == 0:
                ax.set_ylabel(f"{name}\nz={z}", fontsize=8)
    handles = _legend_handles(conv, with_values=True)
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return _save(fig, Path(out_png))


# --------------------------------------------------------------------------------------------
# report figures
# --------------------------------------------------------------------------------------------


def group_by_setting(runs: Sequence[RunLike]) -> dict[str, list[RunLike]]:
    """Runs grouped by setting, in order of first appearance."""
    groups: dict[str, list[RunLike]] = {}
    for r in runs:
        groups.setdefault(r.setting, []).append(r)
    return groups


def _mean_curve(group: Sequence[RunLike], region: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Epochs, mean and std over the group's runs of a region's validation Dice."""
    per_epoch: dict[int, list[float]] = {}
    for g in group:
        for e, v in g.curves.get(region, []):
            per_epoch.setdefault(e, []).append(v)
    epochs = np.array(sorted(per_epoch))
    mean = np.array([np.mean(per_epoch[e]) for e in epochs])
    std = np.array([np.std(per_epoch[e]) for e in epochs])
    return epochs, mean, std


def plot_curves(runs: Sequence[RunLike], out: Path, title: str) -> Path:
    """Validation Dice against epoch, one panel per region (+ the residual with two settings).

    One line per setting (mean over folds, band = +- std), as Shen et al. Fig. 4 and 5; with two
    settings a fourth panel shows the residual of the whole-tumour curves (Fig. 5b).

    Returns:
        ``out / "val_dice.png"``.
    """
    import matplotlib
    from matplotlib.ticker import MaxNLocator

    groups = group_by_setting(runs)
    residual = len(groups) == 2
    ncols = 4 if residual else 3
    fig = _figure((4.2 * ncols, 3.8), constrained=True)
    axes = fig.subplots(1, ncols)
    tab10 = matplotlib.colormaps["tab10"]
    for ax, r in zip(axes, REGIONS, strict=False):
        for i, (setting, group) in enumerate(groups.items()):
            e, m, s = _mean_curve(group, r)
            if e.size == 0:
                continue
            e1 = e + 1  # epochs counted from 1, as in the papers' figures
            ax.plot(e1, m, marker="o", ms=3, color=tab10(i % 10), label=f"{setting} (n={len(group)})")
            if len(group) > 1:
                ax.fill_between(e1, m - s, m + s, color=tab10(i % 10), alpha=0.15, lw=0)
        ax.set_title(f"{REGION_TITLES[r]} ({r.upper()})")
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
        ax.set_title(f"Residual, {REGION_TITLES['wt'].lower()} tumour")
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
    return _save(fig, out / "val_dice.png")


def plot_overlays(runs: Sequence[RunLike], out: Path, cases: int = 3) -> Path | None:
    """The same test slices for each setting: T1c, T2, FLAIR + truth, then every setting's prediction.

    As Shen et al. Fig. 6 and Havaei et al. Fig. 5; the slices are each setting's first fold's
    ``test_slices.npz``.

    Returns:
        ``out / "overlays.png"``, or ``None`` when no run has test slices.
    """
    groups = group_by_setting(runs)
    data = {}
    for setting, group in groups.items():
        files = [g.slices for g in sorted(group, key=lambda g: g.fold) if g.slices is not None]
        if files:
            data[setting] = dict(np.load(files[0], allow_pickle=False))
    if not data:
        return None
    ref = next(iter(data.values()))
    channels = [str(c) for c in ref["channels"]]
    conv = get_convention(str(ref["convention"]))
    ids = sorted({k.split("/")[0] for k in ref if "/" in k})
    ids = [c for c in ids if all(f"{c}/pred" in d for d in data.values())][:cases]
    shown = [m for m in ("t1c", "t2") if m in channels]
    ncols = len(shown) + 1 + len(data)
    fig = _figure((2.3 * ncols, 2.5 * len(ids) + 0.6))
    axes = fig.subplots(len(ids), ncols, squeeze=False)
    for i, case in enumerate(ids):
        image, label = ref[f"{case}/image"].astype(np.float32), ref[f"{case}/label"]
        base = display_image(image[channels.index("flair") if "flair" in channels else 0])
        col = 0
        for m in shown:
            axes[i, col].imshow(display_image(image[channels.index(m)]), cmap="gray")
            axes[i, col].set_title("T1c" if m == "t1c" else m.upper(), fontsize=9)
            col += 1
        axes[i, col].imshow(base, cmap="gray")
        axes[i, col].imshow(label_rgba(display_labels(label), conv))
        axes[i, col].set_title("FLAIR + ground truth", fontsize=9)
        col += 1
        for setting, d in data.items():
            axes[i, col].imshow(base, cmap="gray")
            axes[i, col].imshow(label_rgba(display_labels(d[f"{case}/pred"]), conv))
            axes[i, col].set_title(setting, fontsize=8)
            col += 1
        axes[i, 0].set_ylabel(case, fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.legend(handles=_legend_handles(conv), loc="lower center", ncol=conv.num_classes - 1, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return _save(fig, out / "overlays.png")
