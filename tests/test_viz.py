"""Pictures (:mod:`brats_lightning.viz`): one colour table, display orientation, the report's figures."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from brats_lightning.data.labels import get_convention
from brats_lightning.viz import OVERLAY_ALPHA, display_image, display_labels, label_rgba, plot_curves, plot_overlays


@dataclass
class _Run:
    setting: str
    fold: int
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    slices: Path | None = None


@pytest.mark.parametrize("name", ["brats2013", "brats2017", "brats2023"])
def test_label_colours_are_the_conventions(name: str) -> None:
    conv = get_convention(name)
    classes = np.arange(conv.num_classes).reshape(1, -1)
    rgba = label_rgba(classes, name)
    np.testing.assert_allclose(rgba[0, :, :3], np.array(conv.colours, np.float32))
    assert rgba[0, 0, 3] == 0 and np.all(rgba[0, 1:, 3] == np.float32(OVERLAY_ALPHA))
    colour = dict(zip(conv.names, conv.colours, strict=True))
    necrosis = colour.get("necrosis", colour.get("NCR/NET", colour.get("NCR")))
    assert necrosis is not None and necrosis[0] > 0.8 > max(necrosis[1:])  # red
    assert colour["edema"][1] > 0.6 > max(colour["edema"][0], colour["edema"][2])  # green
    assert min(colour["enhancing"][:2]) > 0.8 > colour["enhancing"][2]  # yellow


def test_images_and_labels_share_the_display_orientation() -> None:
    image = np.ones((6, 4), np.float32)
    labels = np.zeros((6, 4), np.uint8)
    image[0, 3], labels[0, 3] = 5.0, 1  # x = 0, y = 3 (RAS: the patient's left, anterior)
    shown, shown_labels = display_image(image), display_labels(labels)
    assert shown.shape == shown_labels.shape == (4, 6) and shown_labels.flags.c_contiguous
    assert shown[0, 0] == 255 and shown_labels[0, 0] == 1  # anterior up, left on the left


def test_report_figures(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays: dict[str, np.ndarray] = {
        "channels": np.array(["flair", "t1", "t1c", "t2"]),
        "convention": np.array("brats2017"),
    }
    for case in ("A", "B"):
        arrays[f"{case}/image"] = rng.normal(size=(4, 24, 20)).astype(np.float32)
        arrays[f"{case}/label"] = rng.integers(0, 4, (24, 20)).astype(np.uint8)
        arrays[f"{case}/pred"] = rng.integers(0, 4, (24, 20)).astype(np.uint8)
    np.savez(tmp_path / "slices.npz", **arrays)
    curves = {"wt": [(0, 0.5), (1, 0.6)], "tc": [(0, 0.4), (1, 0.5)], "et": [(0, 0.3), (1, 0.4)]}
    runs = [
        _Run("a", 0, curves, tmp_path / "slices.npz"),
        _Run("a", 1, curves),
        _Run("b", 0, curves, tmp_path / "slices.npz"),
    ]
    from matplotlib.image import imread

    curves_png = plot_curves(runs, tmp_path, "title")
    assert curves_png == tmp_path / "val_dice.png"
    img = imread(curves_png)
    assert img.shape[1] > 3 * img.shape[0]  # two settings: 4 panels in a row (the residual)
    overlays = plot_overlays(runs, tmp_path)
    assert overlays == tmp_path / "overlays.png" and imread(overlays).shape[0] > 100
    assert plot_overlays([_Run("a", 0, curves)], tmp_path / "none") is None


def test_importing_the_package_pictures_does_not_import_matplotlib() -> None:
    code = "import sys, brats_lightning.viz, brats_lightning.report.runs; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
