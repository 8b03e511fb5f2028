"""Draw docs/symmetry_maps.png: the four modalities and their symmetry maps on a synthetic and a real case.

Usage: ``python docs/make_symmetry_figure.py`` (the real case is used when ``../shared/data`` exists).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from brats_lightning.data.layouts import discover_cases  # noqa: E402
from brats_lightning.data.preprocess import brain_mask, zscore  # noqa: E402
from brats_lightning.data.readers import MODALITIES, load_case
from brats_lightning.data.symmetry import volume_symmetry_maps  # noqa: E402
from brats_lightning.data.synthetic import write_dataset  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def rows() -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    out = []
    tmp = Path(tempfile.mkdtemp())
    write_dataset(tmp, n_cases=1, progress=False)
    cases = [("synthetic", discover_cases(tmp)[0])]
    real = ROOT.parent / "shared" / "data" / "brats2018"
    if real.is_dir():
        cases.append(("BraTS 2018", discover_cases(real)[0]))
    for name, case in cases:
        vol = load_case(case)
        mask = brain_mask(vol.image)
        img = zscore(vol.image, mask)
        maps = volume_symmetry_maps(img, mask)
        z = int(np.argmax((vol.label > 0).sum((0, 1))))
        out.append((f"{name}: {case.case_id}, z={z}", img[..., z], maps[..., z], vol.label[..., z]))
    return out


def main() -> None:
    data = rows()
    fig, axes = plt.subplots(2 * len(data), 5, figsize=(12, 5.2 * len(data)))
    for r, (title, img, maps, label) in enumerate(data):
        for c, m in enumerate(MODALITIES):
            axes[2 * r, c].imshow(img[c].T, cmap="gray", origin="lower", vmin=-2.5, vmax=3.5)
            axes[2 * r, c].set_title(m.upper() if m != "t1c" else "T1c")
            axes[2 * r + 1, c].imshow(maps[c].T, cmap="coolwarm", origin="lower", vmin=0, vmax=1)
            axes[2 * r + 1, c].set_title(f"symmetry map ({m})")
        axes[2 * r, 4].imshow(img[0].T, cmap="gray", origin="lower", vmin=-2.5, vmax=3.5)
        axes[2 * r, 4].contour((label > 0).T, levels=[0.5], colors="lime", linewidths=0.8, origin="lower")
        axes[2 * r, 4].set_title("FLAIR + tumour outline")
        axes[2 * r + 1, 4].axis("off")
        axes[2 * r, 0].set_ylabel(title)
        for a in axes[2 * r : 2 * r + 2].ravel():
            a.set_xticks([])
            a.set_yticks([])
    fig.suptitle("Shen et al. symmetry maps: 0.5 (white) symmetric, red brighter / blue darker than the mirror side")
    fig.tight_layout()
    out = ROOT / "docs" / "symmetry_maps.png"
    fig.savefig(out, dpi=80)
    print(out)


if __name__ == "__main__":
    main()
