"""Data sets whose cases are files described by a ``dataset.json``: the Medical Segmentation Decathlon's
(``Task01_BrainTumour``: one 4D image per case) and nnU-Net v2 raw data sets (a file per channel; labels by name or
by region). Registered in :data:`brats_lightning.data.layouts.LAYOUTS` as ``msd`` and ``nnunet``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from brats_lightning.data.layout_base import BadCase, Layout
from brats_lightning.data.readers import CaseFiles, file_problem
from brats_lightning.errors import DataError

__all__ = ["DATASET_JSON", "DatasetJsonLayout", "MSDLayout", "NNUNetLayout"]


#: a channel's name in a ``dataset.json`` (lower case, letters and digits only) -> the canonical modality
_CHANNEL_NAMES = {
    "flair": "flair", "t2f": "flair", "t2flair": "flair", "t2fl": "flair",
    "t1": "t1", "t1w": "t1", "t1n": "t1", "t1native": "t1", "native": "t1", "t1pre": "t1",
    "t1gd": "t1c", "t1ce": "t1c", "t1c": "t1c", "t1post": "t1c", "t1contrast": "t1c", "t1wce": "t1c",
    "t2": "t2", "t2w": "t2",
}  # fmt: skip
DATASET_JSON = "dataset.json"


def _channel_modality(name: str) -> str | None:
    return _CHANNEL_NAMES.get("".join(ch for ch in str(name).lower() if ch.isalnum()))


class DatasetJsonLayout(Layout):
    """A data set whose cases are files, described by a ``dataset.json``: a task folder with ``dataset.json``,
    ``imagesTr/``, ``labelsTr/`` (and ``imagesTs/``). The root given may be the task folder (its training cases)
    or one of its image folders (``imagesTs``: what ``predict`` segments).

    Subclasses say which json key names the channels (:attr:`channel_key`) and how a case's files are named
    (:meth:`case_files`); the labels are read by name or by region (:meth:`declared_convention`).
    """

    flat = True
    #: the ``dataset.json`` key holding channel index -> name
    channel_key = ""

    def files(self, case_dir: Path) -> dict[str, Path]:
        return {}

    def matches(self, case_dir: Path) -> bool:
        return False

    @staticmethod
    def task_folder(root: Path) -> Path | None:
        """The task folder of ``root`` (itself, or its parent for an image or label folder), when it holds a
        ``dataset.json``."""
        for cand in (root, root.parent):
            if (cand / DATASET_JSON).is_file():
                return cand
        return None

    def read_json(self, task: Path) -> dict:
        from brats_lightning.schema import read_json

        doc = read_json(task / DATASET_JSON, "dataset description", DataError)
        if not isinstance(doc, dict):
            raise DataError(f"{task / DATASET_JSON}: not a dataset description (a JSON object)")
        return doc

    def channels(self, task: Path, doc: dict) -> dict[str, int]:
        """Canonical modality -> channel index, from the json's channel names.

        Raises:
            DataError: no channel names, a name that is no MRI sequence we know, or one sequence twice.
        """
        names = doc.get(self.channel_key)
        if not isinstance(names, dict) or not names:
            raise DataError(f"{task / DATASET_JSON}: no {self.channel_key!r} (channel index -> sequence name)")
        out: dict[str, int] = {}
        for index, name in names.items():
            modality = _channel_modality(str(name))
            if modality is None or not str(index).isdigit():
                raise DataError(
                    f"{task / DATASET_JSON}: channel {index} is {name!r}, not a sequence this package reads "
                    f"(FLAIR, T1, T1 with contrast, T2; e.g. 'FLAIR', 'T1w', 't1gd', 'T2w')"
                )
            if modality in out:
                raise DataError(f"{task / DATASET_JSON}: two channels are {modality} ({out[modality]} and {index})")
            out[modality] = int(index)
        return out

    def declared_convention(self, task: Path, doc: dict) -> str:
        """The label convention the json's ``labels`` describe (by the tissues they name, or the regions).

        Raises:
            DataError: no labels, or labels no convention of :mod:`~brats_lightning.data.labels` has.
        """
        from brats_lightning.data.labels import convention_of_tissues, tissue_of

        labels = doc.get("labels")
        if not isinstance(labels, dict) or not labels:
            raise DataError(f"{task / DATASET_JSON}: no 'labels'")
        pairs = []  # (value or values, name)
        for key, value in labels.items():
            if str(key).lstrip("-").isdigit():  # MSD: "1": "edema"
                pairs.append((int(key), str(value)))
            else:  # nnU-Net: "edema": 1, or a region: "tumor core": [2, 3]
                pairs.append((value, str(key)))
        tissues: dict[int, str] = {}
        regions = {}
        for value, name in pairs:
            if isinstance(value, (list, tuple)):
                if not value or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                    raise DataError(f"{task / DATASET_JSON}: label {name!r} is {value!r}, not a list of integers")
                regions[name] = set(value)
                continue
            if not isinstance(value, int) or isinstance(value, bool):
                raise DataError(f"{task / DATASET_JSON}: label {name!r} has the value {value!r}, not an integer")
            tissue = tissue_of(name)
            if tissue is None and value != 0:
                # a region of one label given as an integer (nnU-Net's "enhancing tumor": 3 among region lists)
                regions[name] = {value}
            elif tissue is not None:
                tissues[value] = tissue
        if regions:
            tissues = self._region_tissues(task, regions, tissues)
        conv = convention_of_tissues(tissues)
        if conv is None:
            raise DataError(
                f"{task / DATASET_JSON}: its labels ({labels}) match no label convention this package knows "
                "(MSD/nnU-Net BraTS: 1 edema, 2 non-enhancing tumour, 3 enhancing; BraTS 2017-2021, 2023, 2024)"
            )
        return conv.name

    @staticmethod
    def _region_tissues(task: Path, regions: dict[str, set[int]], tissues: dict[int, str]) -> dict[int, str]:
        """Tissues from region-based labels: enhancing = the enhancing region, core = the core less it, edema = the
        whole tumour less the core."""
        named: dict[str, set[int]] = {}
        for name, values in regions.items():
            key = "".join(ch for ch in name.lower() if ch.isalnum())
            if "whole" in key or key in ("wt", "complete"):
                named["wt"] = values
            elif "core" in key or key == "tc":
                named["tc"] = values
            elif "enhanc" in key or key == "et":
                named["et"] = values
        enhancing = {v for v, t in tissues.items() if t == "enhancing"}
        if "et" not in named and enhancing:  # the enhancing tumour named as a label among region lists
            named["et"] = enhancing
        if set(named) != {"wt", "tc", "et"}:
            raise DataError(
                f"{task / DATASET_JSON}: region-based labels need a whole tumour, a tumour core and an enhancing "
                f"tumour region; found {sorted(regions)}"
            )
        out = dict(tissues)
        for value in named["et"]:
            out[value] = "enhancing"
        for value in named["tc"] - named["et"]:
            out[value] = "core"
        for value in named["wt"] - named["tc"]:
            out[value] = "edema"
        return out

    def image_folder(self, root: Path, task: Path) -> Path:
        """The folder of images the root means: itself when it is one, else the task's ``imagesTr``."""
        if root != task:
            return root
        folder = task / "imagesTr"
        if not folder.is_dir():
            raise DataError(f"{task}: no imagesTr/ folder beside its {DATASET_JSON}")
        return folder

    @staticmethod
    def label_folder(images: Path) -> Path:
        """``imagesTr`` -> ``labelsTr`` (``imagesTs`` -> ``labelsTs``)."""
        return images.parent / images.name.replace("images", "labels", 1)

    def case_files(
        self, images: Path, channels: dict[str, int], ending: str
    ) -> tuple[dict[str, dict[str, Path]], list[BadCase]]:
        """Case id -> modality -> file, and the files that fit no case."""
        raise NotImplementedError

    def discover(
        self, root: Path, modalities: Sequence[str], optional: Sequence[str] = ()
    ) -> tuple[list[CaseFiles], list[BadCase]]:
        """Every case of the folder (see the class docstring) and the files that cannot be used, with why."""
        task = self.task_folder(root)
        if task is None:
            raise DataError(f"{root}: no {DATASET_JSON} here or in its parent folder ({self.example})")
        doc = self.read_json(task)
        channels = self.channels(task, doc)
        convention = self.declared_convention(task, doc)
        images = self.image_folder(root, task)
        ending = str(doc.get("file_ending") or ".nii.gz")
        found, bad = self.case_files(images, channels, ending)
        labels = self.label_folder(images)
        cases = []
        for case_id, files in sorted(found.items()):
            missing = [m for m in modalities if m not in files and m not in optional]
            if missing:
                why = f"{images}: case {case_id} lacks {missing} ({task / DATASET_JSON})"
                bad.append(BadCase(case_id, why, tuple(missing)))
                continue
            label = labels / f"{case_id}{ending}"
            problem = next((file_problem(p) for p in files.values() if file_problem(p)), None)
            if problem:
                bad.append(BadCase(case_id, problem))
                continue
            cases.append(
                CaseFiles(
                    case_id,
                    {m: files[m] for m in modalities if m in files} if modalities else dict(files),
                    label if label.is_file() else None,
                    self.name,
                    folder=images,
                    channels=self.case_channels(channels, modalities),
                    convention=convention,
                )
            )
        return cases, bad

    def case_channels(self, channels: dict[str, int], modalities: Sequence[str]) -> dict[str, int] | None:
        """The channel of each modality inside its file (``None``: one file per channel)."""
        return None


def _image_names(folder: Path, ending: str) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder")
    return sorted(p for p in folder.iterdir() if p.name.endswith(ending) and not p.name.startswith("."))


class MSDLayout(DatasetJsonLayout):
    """The Medical Segmentation Decathlon (``Task01_BrainTumour``): ``imagesTr/<case>.nii.gz``, one 4D file per
    case whose channels ``dataset.json``'s ``modality`` names (FLAIR, T1w, t1gd, T2w); ``labelsTr/<case>.nii.gz``
    with 1 edema, 2 non-enhancing tumour, 3 enhancing tumour."""

    name = "msd"
    convention = "msd"
    channel_key = "modality"
    example = "Task01_BrainTumour/{dataset.json, imagesTr/BRATS_001.nii.gz (4D), labelsTr/BRATS_001.nii.gz}"

    def case_files(
        self, images: Path, channels: dict[str, int], ending: str
    ) -> tuple[dict[str, dict[str, Path]], list[BadCase]]:
        cases = {p.name[: -len(ending)]: {m: p for m in channels} for p in _image_names(images, ending)}
        return cases, []

    def case_channels(self, channels: dict[str, int], modalities: Sequence[str]) -> dict[str, int] | None:
        return dict(channels)


class NNUNetLayout(DatasetJsonLayout):
    """An nnU-Net v2 raw data set: ``imagesTr/<case>_0000.nii.gz`` ... (one file per channel, numbered as
    ``dataset.json``'s ``channel_names``), ``labelsTr/<case>.nii.gz``, labels by name or by region (nnU-Net's
    BraTS 2021 conversion: whole tumor [1, 2, 3], tumor core [2, 3], enhancing tumor 3)."""

    name = "nnunet"
    convention = "msd"
    channel_key = "channel_names"
    example = "Dataset001_BrainTumour/{dataset.json, imagesTr/<case>_0000.nii.gz, labelsTr/<case>.nii.gz}"

    def case_files(
        self, images: Path, channels: dict[str, int], ending: str
    ) -> tuple[dict[str, dict[str, Path]], list[BadCase]]:
        by_index = {i: m for m, i in channels.items()}
        cases: dict[str, dict[str, Path]] = {}
        bad = []
        for p in _image_names(images, ending):
            stem = p.name[: -len(ending)]
            case_id, _, index = stem.rpartition("_")
            if not (case_id and len(index) == 4 and index.isdigit()):
                bad.append(BadCase(stem, f"{p}: not named <case>_<4-digit channel>{ending} (nnU-Net's naming)"))
                continue
            modality = by_index.get(int(index))
            if modality is None:
                bad.append(BadCase(case_id, f"{p}: channel {int(index)} is not in dataset.json's channel_names"))
                continue
            cases.setdefault(case_id, {})[modality] = p
        return cases, bad
