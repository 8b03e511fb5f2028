"""Write BraTS cases in the layouts people download, to test that they are read: the Medical Segmentation
Decathlon's ``Task01_BrainTumour``, an nnU-Net v2 raw data set (as nnU-Net's BraTS 2021 conversion writes it) and a
BraTS 2024 post-treatment folder.

    python scripts/convert_layouts.py ../shared/data/brats2018 OUT [--cases N]

writes ``OUT/Task01_BrainTumour/``, ``OUT/Dataset001_BrainTumour/`` and ``OUT/BraTS2024/`` from the first ``N``
cases of a BraTS 2017-2021 folder (labels 1 NCR/NET, 2 edema, 4 enhancing):

* MSD: ``imagesTr/<case>.nii.gz``, one 4D file (FLAIR, T1w, t1gd, T2w), ``labelsTr/<case>.nii.gz`` with 1 edema,
  2 non-enhancing tumour, 3 enhancing; ``dataset.json`` as the Decathlon's (``modality``, ``labels``, ``training``).
* nnU-Net v2: ``imagesTr/<case>_0000.nii.gz`` ... ``_0003`` (T1, T1ce, T2, Flair: nnU-Net's channel order for
  BraTS), ``labelsTr/<case>.nii.gz`` (same labels as MSD), ``dataset.json`` with ``channel_names``, region-based
  ``labels`` and ``regions_class_order``, as nnU-Net's ``Dataset137_BraTS21`` conversion writes it.
* BraTS 2024: ``<case>/<case>-t2f.nii.gz``, ``-t1n``, ``-t1c``, ``-t2w``, ``-seg`` with 1 NETC, 2 SNFH,
  3 ET (the 2018 labels carry no resection cavity, so none has label 4 unless ``--cavity`` paints one).

The images are the originals' arrays with their affines; only names, channel packing and label values change,
so every figure on the converted cases must equal the BraTS layout's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

#: BraTS 2017-2021 file labels -> MSD / nnU-Net labels (1 edema, 2 non-enhancing tumour, 3 enhancing)
TO_MSD = {0: 0, 1: 2, 2: 1, 4: 3}
#: BraTS 2017-2021 file labels -> BraTS 2024 (1 NETC, 2 SNFH, 3 ET)
TO_2024 = {0: 0, 1: 1, 2: 2, 4: 3}
SUFFIX_2018 = {"flair": "flair", "t1": "t1", "t1c": "t1ce", "t2": "t2"}
MSD_ORDER = ("flair", "t1", "t1c", "t2")
NNUNET_ORDER = ("t1", "t1c", "t2", "flair")


def _cases(src: Path, n: int | None) -> list[Path]:
    folders = sorted(p for p in src.rglob("*") if p.is_dir() and (p / f"{p.name}_flair.nii.gz").is_file())
    if not folders:
        raise SystemExit(f"{src}: no BraTS 2017-2021 case folders (<case>/<case>_flair.nii.gz)")
    return folders[:n] if n else folders


def _remap(seg: np.ndarray, table: dict[int, int]) -> np.ndarray:
    out = np.zeros(seg.shape, np.uint8)
    for src, dst in table.items():
        out[seg == src] = dst
    return out


def _save(arr: np.ndarray, like: nib.Nifti1Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(arr, like.affine, like.header)
    img.set_data_dtype(arr.dtype)
    nib.save(img, str(path))


def write_msd(cases: list[Path], out: Path) -> Path:
    """The Decathlon's Task01_BrainTumour layout of ``cases``; returns the task folder."""
    task = out / "Task01_BrainTumour"
    training = []
    for i, case in enumerate(cases):
        name = f"BRATS_{i + 1:03d}"
        images = [nib.load(str(case / f"{case.name}_{SUFFIX_2018[m]}.nii.gz")) for m in MSD_ORDER]
        stack = np.stack([np.asarray(img.dataobj, dtype=np.float32) for img in images], axis=-1)
        _save(stack, images[0], task / "imagesTr" / f"{name}.nii.gz")
        seg = nib.load(str(case / f"{case.name}_seg.nii.gz"))
        _save(_remap(np.asarray(seg.dataobj), TO_MSD), seg, task / "labelsTr" / f"{name}.nii.gz")
        training.append({"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"})
    doc = {
        "name": "BRATS",
        "tensorImageSize": "4D",
        "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
        "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
        "numTraining": len(training),
        "numTest": 0,
        "training": training,
        "test": [],
    }
    (task / "dataset.json").write_text(json.dumps(doc, indent=4))
    (task / "names.json").write_text(json.dumps({f"BRATS_{i + 1:03d}": c.name for i, c in enumerate(cases)}))
    return task


def write_nnunet(cases: list[Path], out: Path) -> Path:
    """An nnU-Net v2 raw data set of ``cases`` (nnU-Net's BraTS 2021 conversion); returns its folder."""
    task = out / "Dataset001_BrainTumour"
    for case in cases:
        for k, m in enumerate(NNUNET_ORDER):
            img = nib.load(str(case / f"{case.name}_{SUFFIX_2018[m]}.nii.gz"))
            _save(np.asarray(img.dataobj), img, task / "imagesTr" / f"{case.name}_{k:04d}.nii.gz")
        seg = nib.load(str(case / f"{case.name}_seg.nii.gz"))
        _save(_remap(np.asarray(seg.dataobj), TO_MSD), seg, task / "labelsTr" / f"{case.name}.nii.gz")
    doc = {
        "channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"},
        "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]},
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
        "regions_class_order": [1, 2, 3],
    }
    (task / "dataset.json").write_text(json.dumps(doc, indent=4))
    return task


def write_brats2024(cases: list[Path], out: Path, cavity: bool = False) -> Path:
    """A BraTS 2024 post-treatment folder of ``cases`` (``cavity``: a 4 painted into each label's background, a
    sphere far from the tumour, so that the resection cavity is scored); returns it."""
    root = out / "BraTS2024"
    names = {"flair": "t2f", "t1": "t1n", "t1c": "t1c", "t2": "t2w"}
    for case in cases:
        folder = root / case.name.replace("_", "-")
        for m, suffix in names.items():
            img = nib.load(str(case / f"{case.name}_{SUFFIX_2018[m]}.nii.gz"))
            _save(np.asarray(img.dataobj), img, folder / f"{folder.name}-{suffix}.nii.gz")
        seg = nib.load(str(case / f"{case.name}_seg.nii.gz"))
        labels = _remap(np.asarray(seg.dataobj), TO_2024)
        if cavity:
            labels = paint_cavity(labels)
        _save(labels, seg, folder / f"{folder.name}-seg.nii.gz")
    return root


def paint_cavity(labels: np.ndarray, radius: int = 4) -> np.ndarray:
    """``labels`` with a ball of 4 (resection cavity) in the background, on the side away from the tumour."""
    out = labels.copy()
    tumour = np.argwhere(labels > 0)
    centre = tumour.mean(0) if len(tumour) else np.asarray(labels.shape) / 2
    target = np.asarray(labels.shape, float) - 1 - centre  # mirrored through the volume's centre
    grid = np.indices(labels.shape).transpose(1, 2, 3, 0)
    ball = ((grid - target) ** 2).sum(-1) <= radius**2
    out[ball & (labels == 0)] = 4
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="a BraTS 2017-2021 folder (<case>/<case>_flair.nii.gz ...)")
    parser.add_argument("out", type=Path, help="where the three data sets are written")
    parser.add_argument("--cases", type=int, default=None, help="the first N cases only")
    parser.add_argument("--cavity", action="store_true", help="paint a resection cavity (4) into the 2024 labels")
    args = parser.parse_args(argv)
    cases = _cases(args.src, args.cases)
    for path in (
        write_msd(cases, args.out),
        write_nnunet(cases, args.out),
        write_brats2024(cases, args.out, args.cavity),
    ):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
