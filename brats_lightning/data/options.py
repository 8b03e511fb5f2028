"""The data module's options, declared once, and what a trained model stores of its data.

:class:`DataOptions` is the one declaration of ``data.*``: :class:`~brats_lightning.data.datamodule.BratsDataModule`
is built from it (from Hydra's keyword arguments), ``report`` rebuilds a job's data module from a results folder's
``.hydra/config.yaml`` through it, and the preprocessing and symmetry options inside it are
:class:`~brats_lightning.data.preprocess.PreprocessConfig` and :class:`~brats_lightning.data.preprocess.SymmetryConfig`,
the classes the preprocessing itself runs on. :class:`DataConfig` is the part a checkpoint and an exported model
store (:meth:`BratsDataModule.describe <brats_lightning.data.datamodule.BratsDataModule.describe>`), validated
the same way when read back. Every problem is one line naming the option (``data.fold``) or the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from omegaconf import DictConfig, ListConfig, OmegaConf
from pydantic import Field, StrictBool, field_validator, model_validator

from brats_lightning.data.augment import AugmentOptions
from brats_lightning.data.labels import CONVENTIONS, get_convention
from brats_lightning.data.layouts import LAYOUTS
from brats_lightning.data.preprocess import PreprocessConfig, SymmetryConfig
from brats_lightning.data.readers import MODALITIES
from brats_lightning.errors import CheckpointError, ConfigError
from brats_lightning.schema import Int, Name, Number, Strict, Sub, validate

__all__ = ["DataConfig", "DataOptions", "SyntheticOptions", "check_data_config", "convention_name"]

#: the keys a generic layout's ``files`` may name
FileKey = Literal["flair", "t1", "t1c", "t2", "label", "mask"]
Modalities = Annotated[list[Name], Field(strict=False, min_length=1, max_length=4)]
Files = dict[FileKey, Annotated[str, Field(max_length=512)]]
Path_ = Annotated[str, Field(max_length=4096)]
#: a case id as layouts find it: its folder's name
CaseId = Annotated[str, Field(min_length=1, max_length=255)]
Shape = Annotated[tuple[Annotated[Int, Field(ge=16, le=1024)], ...], Field(strict=False, min_length=3, max_length=3)]


def _modalities_known(v: list[str]) -> list[str]:
    bad = [m for m in v if m not in MODALITIES]
    if bad or len(set(v)) != len(v):
        raise ValueError(f"expected distinct modalities from {list(MODALITIES)}, got {v}")
    return v


def convention_name(value: str) -> str:
    """The canonical name of a label convention (a validator: ``2021`` -> ``brats2017``)."""
    try:
        return get_convention(value).name
    except KeyError:
        raise ValueError(f"unknown label convention {value!r} (expected one of {sorted(CONVENTIONS)})") from None


def _layout_name(value: str) -> str:
    if value not in ("auto", "generic", "") and value not in LAYOUTS:
        raise ValueError(f"unknown layout {value!r} (expected auto, generic or one of {sorted(LAYOUTS)})")
    return value


class SyntheticOptions(Strict):
    """The built-in synthetic data set (``data.synthetic``; :func:`brats_lightning.data.synthetic.write_dataset`)."""

    n_cases: Annotated[Int, Field(ge=1, le=10_000)] = 24
    shape: Annotated[
        tuple[Annotated[Int, Field(ge=16, le=1024)], ...], Field(strict=False, min_length=3, max_length=3)
    ] = (
        80,
        96,
        64,
    )
    spacing: Annotated[Number, Field(gt=0, le=10)] = 2.5
    seed: Annotated[Int, Field(ge=0)] = 0


class DataOptions(Strict):
    """Every option of :class:`~brats_lightning.data.datamodule.BratsDataModule` (``data.*``), checked.

    Attributes:
        root: folder of BraTS cases; ``None`` for the built-in synthetic data set.
        layout: file layout (``"auto"`` detects it; ``"generic"`` uses ``files``; :data:`~.layouts.LAYOUTS`).
        files: the generic layout's filename pattern per modality (and ``label``, ``mask``).
        modalities: canonical modalities stacked as channels, in this order.
        convention: label convention of the files (:mod:`brats_lightning.data.labels`).
        symmetry: append Shen et al.'s symmetry maps as extra channels (the one switch for them).
        symmetry_options: the other options of :class:`~brats_lightning.data.preprocess.SymmetryConfig`.
        preprocess: :class:`~brats_lightning.data.preprocess.PreprocessConfig`.
        synthetic: :class:`SyntheticOptions`, used when ``root`` is ``None``; ``False`` forbids the synthetic
            fallback (``data=brats``: a missing root is then an error).
        cache_dir: where prepared cases, splits and synthetic data are stored.
        cache_shared: the cache folder is on storage shared by every node (prepared once in all, split over
            the global ranks); otherwise every node prepares its own copy.
        split_file: an explicit split file; default ``<cache_dir>/splits/<dataset>-<hash>/split.json``.
        seed: seed of the split, the data order and the augmentation.
        test_fraction: share of the cases held out for testing.
        num_folds: cross-validation folds of the remaining cases.
        fold: the fold used for validation (``-1``: none: train on the cases of every fold, validate on none, as a
            cross-validation's final model trained on all its cases).
        groups: how a case's site is read (:func:`~brats_lightning.data.groups.case_groups`): ``auto`` (BraTS
            2017-2019 ids), a regular expression with one group, or a CSV ``case,group``.
        split: ``stratified`` (every fold and the test set hold every site in proportion) or ``site`` (one fold
            per site: leave-one-site-out; ``num_folds`` is then the number of sites).
        exclude: case ids left out of the data set before the split (e.g. cases known to be mislabelled, or
            kept for a later test); an id the data set lacks is an error, so that a typo leaves nothing in.
        max_cases: use only the first ``max_cases`` cases (quick runs).
        crop_size: in-plane ``(X, Y)`` training size (Shen et al.: 144 x 192).
        batch_size: training slices (or patches) per batch.
        num_workers: loader workers per rank, or ``"auto"`` (:func:`~.datamodule.resolve_workers`).
        prepare_workers: processes preparing cases, or ``"auto"`` (the cores of this rank's share).
        augment: random window positions, flips, rotations and scaling of training slices.
        augment_options: keyword arguments of :class:`~brats_lightning.data.augment.SliceAugment`.
        modality_dropout: slice mode: the probability that a training slice loses each of its modalities (its
            image and symmetry-map channels zeroed; at least one is kept), so that the model learns to segment
            cases that lack a sequence (``predict`` then accepts them, filling zeros).
        context_slices: 2.5D context: each slice with this many neighbouring slices on either side as extra
            channels (``0``: 2D, the papers).
        tumour_fraction: share of training slices drawn through a tumour voxel, class-balanced (``0``: every
            brain slice equally often, the papers).
        mode: ``"slices"`` (whole 2D slices, Shen et al.) or ``"patches"`` (Havaei et al.'s patch CNNs).
        patch_size: side of training patches (the model's input size: 33, or larger for cascades).
        dense_size: patch mode: pixels labelled per sample, ``D x D`` (1: the paper's one centre pixel).
        patches_per_epoch: training patches per epoch in patch mode (over all ranks).
        patch_distribution: label distribution of patch centres, ``"balanced"`` (phase 1) or ``"natural"``.
        in_channels: expected input channels; checked against modalities and symmetry when given.
        num_classes: expected classes; checked against the convention when given.
    """

    root: Path_ | None = None
    layout: Annotated[str, Field(max_length=64)] = "auto"
    files: Files | None = None
    modalities: Modalities = list(MODALITIES)
    convention: Name = "brats2017"
    symmetry: StrictBool = False
    symmetry_options: Annotated[dict[str, Any] | None, Sub(SymmetryConfig)] = None
    preprocess: Annotated[dict[str, Any] | None, Sub(PreprocessConfig)] = None
    synthetic: SyntheticOptions | Literal[False] | None = None
    cache_dir: Path_ = "data/cache"
    cache_shared: StrictBool = False
    split_file: Path_ | None = None
    seed: Annotated[Int, Field(ge=0)] = 0
    test_fraction: Annotated[Number, Field(ge=0, lt=1)] = 0.2
    num_folds: Annotated[Int, Field(ge=2, le=100)] = 5
    fold: Annotated[Int, Field(ge=-1, le=99)] = 0
    groups: Path_ | None = "auto"
    split: Literal["stratified", "site"] = "stratified"
    exclude: Annotated[list[CaseId], Field(strict=False, max_length=100_000)] = []
    max_cases: Annotated[Int, Field(ge=1)] | None = None
    crop_size: Annotated[
        tuple[Annotated[Int, Field(ge=1, le=4096)], ...], Field(strict=False, min_length=2, max_length=2)
    ] = (144, 192)
    batch_size: Annotated[Int, Field(ge=1, le=65536)] = 8
    num_workers: Annotated[Int, Field(ge=0, le=256)] | Literal["auto"] = "auto"
    prepare_workers: Annotated[Int, Field(ge=1, le=256)] | Literal["auto"] = "auto"
    augment: StrictBool = True
    augment_options: Annotated[dict[str, Any] | None, Sub(AugmentOptions)] = None
    modality_dropout: Annotated[Number, Field(ge=0, lt=1)] = 0.0
    context_slices: Annotated[Int, Field(ge=0, le=5)] = 0
    tumour_fraction: Annotated[Number, Field(ge=0, le=1)] = 0.0
    mode: Literal["slices", "patches"] = "slices"
    patch_size: Annotated[Int, Field(ge=1, le=1024)] = 33
    dense_size: Annotated[Int, Field(ge=1, le=257)] = 1
    patches_per_epoch: Annotated[Int, Field(ge=1)] = 20000
    patch_distribution: Literal["balanced", "natural"] = "balanced"
    in_channels: Annotated[Int, Field(ge=1, le=64)] | None = None
    num_classes: Annotated[Int, Field(ge=2, le=16)] | None = None

    @field_validator("root", "split_file", mode="before")
    @classmethod
    def _no_path(cls, v: Any) -> Any:
        return None if v in ("", "null") else v

    @field_validator("modalities")
    @classmethod
    def _modalities(cls, v: list[str]) -> list[str]:
        return _modalities_known(v)

    @field_validator("convention")
    @classmethod
    def _convention(cls, v: str) -> str:
        return convention_name(v)

    @field_validator("layout")
    @classmethod
    def _layout(cls, v: str) -> str:
        return _layout_name(v)

    @field_validator("crop_size", mode="before")
    @classmethod
    def _two_sizes(cls, v: Any) -> Any:
        if not (isinstance(v, (list, tuple)) and len(v) == 2 and all(type(x) is int and x > 0 for x in v)):
            raise ValueError(f"must be two positive integers [X, Y], got {v!r}")
        return v

    @field_validator("symmetry_options")
    @classmethod
    def _symmetry_options(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None:
            if "enabled" in v:
                raise ValueError("enabled is data.symmetry's to say, not data.symmetry_options'")
            SymmetryConfig.model_validate(v)
        return v

    @field_validator("preprocess")
    @classmethod
    def _preprocess(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None:
            PreprocessConfig.model_validate(v)
        return v

    @field_validator("augment_options")
    @classmethod
    def _augment_options(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None:
            AugmentOptions.model_validate(v)
        return v

    @model_validator(mode="after")
    def _consistent(self) -> DataOptions:
        if self.root is None and self.synthetic is False:
            raise ValueError(
                "data.root is not set: give the folder of your BraTS cases, e.g. data.root=/data/BraTS2021"
            )
        # leave-one-site-out: as many folds as sites, known once the cases are found (data.fold checked then)
        if self.split == "stratified" and self.fold >= self.num_folds:
            raise ValueError(
                f"data.fold must be one of 0..{self.num_folds - 1} (data.num_folds={self.num_folds}), or -1 (every "
                f"fold trains), got {self.fold}"
            )
        if self.mode == "patches" and self.patches_per_epoch < self.batch_size:
            raise ValueError(
                f"data.patches_per_epoch must be at least data.batch_size ({self.batch_size}), "
                f"got {self.patches_per_epoch}"
            )
        if self.mode != "slices":
            for name in ("context_slices", "modality_dropout"):
                if getattr(self, name):
                    raise ValueError(f"data.{name} is for slice models (data.mode=slices)")
        sym = self.symmetry_config()
        if sym.enabled and sym.axis_modality not in self.modalities:
            raise ValueError(
                f"data.symmetry: the mid-sagittal axis is found on {sym.axis_modality}, which "
                f"data.modalities={list(self.modalities)} lacks: add it, or set "
                f"data.symmetry_options.axis_modality to one of them"
            )
        channels = len(self.modalities) * (2 if self.symmetry else 1) * (2 * self.context_slices + 1)
        if self.in_channels is not None and self.in_channels != channels:
            raise ValueError(
                f"data.in_channels={self.in_channels} but {len(self.modalities)} modalities"
                f"{' with symmetry maps' if self.symmetry else ''} give {channels}"
            )
        classes = get_convention(self.convention).num_classes
        if self.num_classes is not None and self.num_classes != classes:
            raise ValueError(f"data.num_classes={self.num_classes} but convention {self.convention} has {classes}")
        return self

    @classmethod
    def of(cls, options: Mapping[str, Any], source: str | Path | None = None) -> DataOptions:
        """``options`` (Hydra's keyword arguments, or the ``data`` node of a results folder's ``source`` file) checked.

        Raises:
            ConfigError: one line naming the option (``data.fold: ...``) and, for a file, the file.
        """
        plain = {
            k: OmegaConf.to_container(v) if isinstance(v, (DictConfig, ListConfig)) else v for k, v in options.items()
        }
        if source is not None:
            return validate(cls, plain, source, ConfigError)
        return validate(cls, plain, "data", ConfigError, options=True)

    def symmetry_config(self) -> SymmetryConfig:
        """The symmetry maps' options (:attr:`symmetry` and :attr:`symmetry_options` together)."""
        return SymmetryConfig.model_validate({**(self.symmetry_options or {}), "enabled": self.symmetry})

    def preprocess_config(self) -> PreprocessConfig:
        """The preprocessing options."""
        return PreprocessConfig.model_validate(self.preprocess or {})

    def synthetic_options(self) -> SyntheticOptions:
        """The synthetic data set's options (defaults where ``synthetic`` says nothing)."""
        return self.synthetic if isinstance(self.synthetic, SyntheticOptions) else SyntheticOptions()


class DataConfig(Strict):
    """What a model was trained on, stored in its checkpoint (``data_config``) and export sidecar.

    The keys of :meth:`BratsDataModule.describe <brats_lightning.data.datamodule.BratsDataModule.describe>`;
    the fields have the types of :class:`DataOptions`.
    """

    modalities: Modalities
    convention: Name
    symmetry: SymmetryConfig = SymmetryConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    layout: Annotated[str, Field(max_length=64)] = "auto"
    files: Files | None = None
    context_slices: Annotated[Int, Field(ge=0, le=5)] = 0
    modality_dropout: Annotated[Number, Field(ge=0, lt=1)] = 0.0

    @field_validator("modalities")
    @classmethod
    def _modalities(cls, v: list[str]) -> list[str]:
        return _modalities_known(v)

    @field_validator("convention")
    @classmethod
    def _convention(cls, v: str) -> str:
        return convention_name(v)

    @field_validator("layout")
    @classmethod
    def _layout(cls, v: str) -> str:
        return _layout_name(v)


def check_data_config(data: Any, source: str | Path) -> dict[str, Any]:
    """A checkpoint's (or sidecar's) ``data_config`` as a validated plain dict (lists, no tuples).

    Raises:
        CheckpointError: naming ``source`` and the problem.
    """
    return validate(DataConfig, data, f"{source} (data_config)", CheckpointError).model_dump(mode="json")
