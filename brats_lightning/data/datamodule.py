"""LightningDataModule for BraTS: case discovery, preprocessing cache, seeded splits, loaders.

With ``root=None`` it generates the built-in synthetic BraTS-like data set
(:mod:`brats_lightning.data.synthetic`) into the cache folder, so that a new user can train at once.

At scale (Havaei et al.'s and Shen et al.'s models on 1,251 BraTS 2021 cases, one or many GPUs):

* cases are prepared by a pool of processes (``prepare_workers``); under DDP every rank prepares
  its own share, so no case is prepared twice and no rank waits for the others' whole data set;
* loader workers only cut from the memory-mapped cache; augmentation runs batched on the device
  (:meth:`on_after_batch_transfer`); loaders persist across epochs (pinned memory on a GPU);
* nothing per case stays in memory: patch indices, cascades' first-stage maps and the images are
  memory-mapped files, shared by the ranks of a machine through the page cache.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import BatchSampler, DataLoader

from brats_lightning.data.augment import SliceAugment
from brats_lightning.data.cache import (
    PreparedCase,
    available_cores,
    cache_config,
    cache_key,
    is_fresh,
    load_prepared,
    prepare_cases,
    write_cache_config,
)
from brats_lightning.data.channels import in_channels_for, modality_channels
from brats_lightning.data.datasets import EpochItems, FixedBatches, SliceDataset, VolumeDataset, first_item
from brats_lightning.data.groups import case_groups
from brats_lightning.data.labels import get_convention
from brats_lightning.data.layouts import detect_layout, discover_cases
from brats_lightning.data.loading import RingLoader
from brats_lightning.data.preprocess import PreprocessConfig, SymmetryConfig
from brats_lightning.data.readers import MODALITIES, CaseFiles
from brats_lightning.data.sampling import DISTRIBUTIONS, PatchBatchDataset, PatchSampler
from brats_lightning.data.splits import SPLIT_FILE, STRATEGIES, fold_cases, load_or_create_splits, split_config
from brats_lightning.errors import ConfigError, DataError
from brats_lightning.seeding import stream_seed, training_epoch

__all__ = ["BratsDataModule", "resolve_workers"]

log = logging.getLogger(__name__)


def resolve_workers(value: int | str, ranks_per_node: int = 1, accelerator: str = "cpu") -> int:
    """Loader workers for ``value`` (an integer, or ``"auto"``).

    ``auto``: on a GPU, the cores of this rank's share of the machine minus one (for the training
    process), at most 8; on the CPU, where the training process needs every core and the loader
    only copies from memory maps, ``cores // 4`` (0 on a 2-core machine).
    """
    if value == "auto":
        cores = max(1, available_cores() // max(1, ranks_per_node))
        return min(8, max(1, cores - 1)) if accelerator != "cpu" else cores // 4
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"data.num_workers must be auto or an integer >= 0, got {value!r}")
    return value


def _progress(description: str, total: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=False,
    )
    return progress, progress.add_task(description, total=total)


class BratsDataModule(pl.LightningDataModule):
    """Slices (or patches) for training, whole volumes for validation and test.

    Args:
        root: folder of BraTS cases; ``None`` for the built-in synthetic data set.
        layout: file layout (``"auto"`` detects it; ``"generic"`` uses ``files``; see
            :data:`brats_lightning.data.layouts.LAYOUTS`).
        files: the generic layout's filename pattern per modality (and ``label``, ``mask``).
        modalities: canonical modalities stacked as channels, in this order.
        convention: label convention of the files (:mod:`brats_lightning.data.labels`).
        symmetry: append Shen et al.'s symmetry maps as extra channels (the one switch for them).
        symmetry_options: keyword arguments of :class:`~brats_lightning.data.preprocess.SymmetryConfig`.
        preprocess: keyword arguments of :class:`~brats_lightning.data.preprocess.PreprocessConfig`.
        synthetic: options of :func:`brats_lightning.data.synthetic.write_dataset` (``n_cases``,
            ``shape``, ``spacing``, ``seed``), used when ``root`` is ``None``; ``False`` forbids the
            synthetic fallback (``data=brats``: a missing root is then an error).
        cache_dir: where prepared cases, splits and synthetic data are stored.
        cache_shared: the cache folder is on storage shared by every node (prepared once in all,
            split over the global ranks); otherwise every node prepares its own copy.
        split_file: an explicit split file; default ``<cache_dir>/splits/<dataset>-<hash>/split.json``
            (beside it, ``config.json`` says what produced it).
        seed: seed of the split, the data order and the augmentation.
        test_fraction: share of the cases held out for testing.
        num_folds: cross-validation folds of the remaining cases.
        fold: the fold used for validation.
        groups: how a case's site is read (:func:`~brats_lightning.data.groups.case_groups`): ``auto``
            (BraTS 2017-2019 ids), a regular expression with one group, or a CSV ``case,group``.
        split: ``stratified`` (every fold and the test set hold every site in proportion) or
            ``site`` (one fold per site: leave-one-site-out; ``num_folds`` is then the number of sites).
        max_cases: use only the first ``max_cases`` cases (quick runs).
        crop_size: in-plane ``(X, Y)`` training size (Shen et al.: 144 x 192).
        batch_size: training slices (or patches) per batch.
        num_workers: loader workers per rank, or ``"auto"`` (see :func:`resolve_workers`).
        prepare_workers: processes preparing cases, or ``"auto"`` (the cores of this rank's share).
        augment: random window positions, flips, rotations and scaling of training slices.
        augment_options: keyword arguments of :class:`~brats_lightning.data.augment.SliceAugment`.
        modality_dropout: slice mode: the probability that a training slice loses each of its modalities
            (its image and symmetry-map channels zeroed; at least one is kept), so that the model learns
            to segment cases that lack a sequence (``predict`` then accepts them, filling zeros).
        context_slices: 2.5D context: each slice comes with this many neighbouring slices on either side
            as extra channels (training, validation, test and ``predict``; ``0``: 2D, the papers).
        tumour_fraction: share of training slices drawn through a tumour voxel, class-balanced, with
            the window placed to hold it (:class:`~brats_lightning.data.datasets.SliceDataset`);
            ``0``: every brain slice equally often (the papers).
        mode: ``"slices"`` (whole 2D slices, Shen et al.) or ``"patches"`` (Havaei et al.'s patch CNNs).
        patch_size: side of training patches (the model's input size: 33, or larger for cascades).
        dense_size: patch mode: pixels labelled per sample, ``D x D`` (1: the paper's one centre pixel
            per patch; e.g. 33: windows of 65x65 whose 33x33 centre pixels are labelled in one pass, the
            loss class-balanced inside each window; :mod:`~brats_lightning.data.sampling`).
        patches_per_epoch: training patches per epoch in patch mode (over all ranks).
        patch_distribution: label distribution of patch centres, ``"balanced"`` (phase 1) or
            ``"natural"`` (phase 2); the two-phase callback switches it.
        in_channels: expected input channels; checked against modalities and symmetry when given.
        num_classes: expected classes; checked against the convention when given.
    """

    def __init__(
        self,
        root: str | None = None,
        layout: str = "auto",
        files: dict | None = None,
        modalities: Sequence[str] = MODALITIES,
        convention: str = "brats2017",
        symmetry: bool = False,
        symmetry_options: dict | None = None,
        preprocess: dict | None = None,
        synthetic: dict | bool | None = None,
        cache_dir: str = "data/cache",
        cache_shared: bool = False,
        split_file: str | None = None,
        seed: int = 0,
        test_fraction: float = 0.2,
        num_folds: int = 5,
        fold: int = 0,
        groups: str | None = "auto",
        split: str = "stratified",
        max_cases: int | None = None,
        crop_size: Sequence[int] = (144, 192),
        batch_size: int = 8,
        num_workers: int | str = "auto",
        prepare_workers: int | str = "auto",
        augment: bool = True,
        augment_options: dict | None = None,
        modality_dropout: float = 0.0,
        context_slices: int = 0,
        tumour_fraction: float = 0.0,
        mode: str = "slices",
        patch_size: int = 33,
        dense_size: int = 1,
        patches_per_epoch: int = 20000,
        patch_distribution: str = "balanced",
        in_channels: int | None = None,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        self.root = None if root in (None, "", "null") else Path(root)
        if self.root is None and synthetic is False:
            raise ConfigError(
                "data.root is not set: give the folder of your BraTS cases, e.g. data.root=/data/BraTS2021"
            )
        self.layout = layout
        self.files = dict(files) if files else None
        self.modalities = tuple(modalities)
        unknown = [m for m in self.modalities if m not in MODALITIES]
        if unknown:
            raise ConfigError(f"data.modalities: unknown {unknown}; expected names from {MODALITIES}")
        if split not in STRATEGIES:
            raise ConfigError(f"data.split must be one of {list(STRATEGIES)}, got {split!r}")
        self.groups_spec, self.split = groups, split
        # leave-one-site-out: as many folds as sites, known once the cases are found (data.fold checked then)
        _check_options(
            num_folds,
            fold if split == "stratified" else 0,
            test_fraction,
            crop_size,
            batch_size,
            patch_size,
            patches_per_epoch,
        )
        self.convention = get_convention(convention)
        try:
            self.symmetry = SymmetryConfig(enabled=bool(symmetry), **(symmetry_options or {}))
        except TypeError as e:
            raise ConfigError(f"data.symmetry_options: {e}") from None
        if self.symmetry.enabled and self.symmetry.axis_modality not in self.modalities:
            raise ConfigError(
                f"data.symmetry: the mid-sagittal axis is found on {self.symmetry.axis_modality}, which "
                f"data.modalities={list(self.modalities)} lacks: add it, or set "
                f"data.symmetry_options.axis_modality to one of them"
            )
        self.prep = PreprocessConfig.from_dict(preprocess or {})
        self.synthetic = dict(synthetic) if isinstance(synthetic, dict) else {}
        self.cache_dir = Path(cache_dir)
        # Lightning calls prepare_data on every node's local rank 0 unless the storage is shared
        self.prepare_data_per_node = not cache_shared
        self.split_file = None if split_file in (None, "", "null") else Path(split_file)
        self.seed = seed
        self.test_fraction = test_fraction
        self.num_folds = num_folds
        self.fold = fold
        self.max_cases = max_cases
        self.crop_size = tuple(int(s) for s in crop_size)
        self.batch_size = batch_size
        resolve_workers(num_workers)  # checks the value
        self.num_workers = num_workers
        if prepare_workers != "auto" and (not isinstance(prepare_workers, int) or prepare_workers < 1):
            raise ConfigError(f"data.prepare_workers must be auto or an integer >= 1, got {prepare_workers!r}")
        self.prepare_workers = prepare_workers
        self.augment = augment
        if not isinstance(tumour_fraction, (int, float)) or not 0.0 <= float(tumour_fraction) <= 1.0:
            raise ConfigError(f"data.tumour_fraction must be a number in [0, 1], got {tumour_fraction!r}")
        self.tumour_fraction = float(tumour_fraction)
        if not isinstance(context_slices, int) or isinstance(context_slices, bool) or not 0 <= context_slices <= 5:
            raise ConfigError(f"data.context_slices must be an integer in 0..5, got {context_slices!r}")
        if context_slices and mode != "slices":
            raise ConfigError("data.context_slices: neighbouring slices are for slice models (data.mode=slices)")
        self.context_slices = context_slices
        if not isinstance(modality_dropout, (int, float)) or not 0.0 <= float(modality_dropout) < 1.0:
            raise ConfigError(f"data.modality_dropout must be a probability in [0, 1), got {modality_dropout!r}")
        if modality_dropout and mode != "slices":
            raise ConfigError("data.modality_dropout is for slice models (data.mode=slices)")
        self.modality_dropout = float(modality_dropout)
        try:
            self.augmenter = SliceAugment(**(augment_options or {}))
        except TypeError as e:
            raise ConfigError(f"data.augment_options: {e}") from None
        if mode not in ("slices", "patches"):
            raise ConfigError(f"data.mode must be 'slices' or 'patches', got {mode!r}")
        self.mode = mode
        self.patch_size = int(patch_size)
        if not isinstance(dense_size, int) or isinstance(dense_size, bool) or not 1 <= dense_size <= 257:
            raise ConfigError(f"data.dense_size must be an integer in 1..257, got {dense_size!r}")
        self.dense_size = dense_size
        self.patches_per_epoch = int(patches_per_epoch)
        self.patch_distribution = "balanced"
        self.set_patch_distribution(patch_distribution)
        self._patch_sampler: PatchSampler | None = None
        if in_channels is not None and in_channels != self.in_channels:
            raise ConfigError(
                f"data.in_channels={in_channels} but {len(self.modalities)} modalities"
                f"{' with symmetry maps' if self.symmetry.enabled else ''} give {self.in_channels}"
            )
        if num_classes is not None and num_classes != self.num_classes:
            raise ConfigError(
                f"data.num_classes={num_classes} but convention {self.convention.name} has {self.num_classes}"
            )
        self.train_cases: list[PreparedCase] = []
        self.val_cases: list[PreparedCase] = []
        self.test_cases: list[PreparedCase] = []
        self.splits: dict | None = None

    # -- derived properties -------------------------------------------------------------------

    @property
    def in_channels(self) -> int:
        return in_channels_for(self.modalities, self.symmetry.enabled, self.context_slices)

    @property
    def num_classes(self) -> int:
        return self.convention.num_classes

    @property
    def dataset_root(self) -> Path:
        """The folder cases are read from (the synthetic data set's folder when ``root`` is None)."""
        if self.root is not None:
            return self.root
        s = self._synthetic_settings()
        shape = "x".join(str(int(v)) for v in s["shape"])
        return self.cache_dir / f"synthetic-n{s['n_cases']}-{shape}-sp{s['spacing']}-seed{s['seed']}"

    @property
    def dataset_name(self) -> str:
        return self.dataset_root.name

    def _layout_name(self) -> str:
        if self.files:
            return "generic:" + ",".join(f"{k}={v}" for k, v in sorted(self.files.items()))
        return detect_layout(self.dataset_root).name if self.layout == "auto" else self.layout

    def _cache_args(self) -> tuple[Path, str, tuple[str, ...], str, PreprocessConfig, SymmetryConfig]:
        """The arguments of :func:`~brats_lightning.data.cache.cache_key` for this data module."""
        return self.dataset_root, self._layout_name(), self.modalities, self.convention.name, self.prep, self.symmetry

    def prepared_config(self) -> dict[str, Any]:
        """What determines the prepared cases (written to :attr:`prepared_dir`'s ``config.json``)."""
        return cache_config(*self._cache_args())

    @property
    def prepared_dir(self) -> Path:
        """Cache folder of this data set under this preprocessing configuration."""
        return self.cache_dir / "prepared" / f"{self.dataset_name}-{cache_key(*self._cache_args())}"

    # -- distribution helpers -----------------------------------------------------------------

    def _dist(self) -> tuple[int, int, int]:
        """``(rank, world size, ranks per node)`` of the preparation split (1 process without a trainer)."""
        t = self.trainer
        if t is None or t.world_size <= 1:
            return 0, 1, 1
        if self.prepare_data_per_node:  # node-local cache: the node's ranks share its cases
            return t.local_rank, t.num_devices, t.num_devices
        return t.global_rank, t.world_size, t.num_devices

    def _barrier(self, name: str) -> None:
        if self.trainer is not None and self.trainer.world_size > 1:
            self.trainer.strategy.barrier(name)

    # -- data preparation ---------------------------------------------------------------------

    def discover(self, generate: bool = False) -> list[CaseFiles]:
        """The cases of the data set (``generate``: write the synthetic data first if needed).

        Raises:
            DataError: the folder cannot be read, a case folder cannot be used, or a case has no
                label file (training and testing need labelled cases); every bad case is listed.
        """
        if self.root is None and generate:
            self._write_synthetic()
        cases = discover_cases(self.dataset_root, self.layout, self.modalities, self.files)
        if self.max_cases is not None:
            cases = cases[: self.max_cases]
        unlabelled = [c for c in cases if c.label is None]
        if unlabelled:
            shown = ", ".join(c.case_id for c in unlabelled[:5]) + (", ..." if len(unlabelled) > 5 else "")
            raise DataError(
                f"{len(unlabelled)} case(s) of {self.dataset_root} have no label file ({shown}; e.g. "
                f"{Path(next(iter(unlabelled[0].images.values()))).parent}): training and testing need labelled "
                "cases. Move unlabelled cases out of the training folder; segment them with "
                "python -m brats_lightning.predict."
            )
        return cases

    def _synthetic_settings(self) -> dict[str, Any]:
        """The synthetic data set's options: ``synthetic`` over the defaults."""
        return {"n_cases": 24, "shape": (80, 96, 64), "spacing": 2.5, "seed": 0} | self.synthetic

    def _write_synthetic(self) -> None:
        from brats_lightning.data.synthetic import write_dataset

        s = self._synthetic_settings()
        write_dataset(
            self.dataset_root,
            n_cases=int(s["n_cases"]),
            shape=cast("tuple[int, int, int]", tuple(int(v) for v in s["shape"])),  # (its length checked there)
            spacing=float(s["spacing"]),
            seed=int(s["seed"]),
            progress=True,
        )

    def prepare_data(self) -> None:
        """Prepare every case into the cache (once; later runs find it there).

        Lightning calls this on one process per node (or in all, with ``cache_shared``). Under DDP it
        only writes the synthetic data set; the cases are prepared by :meth:`setup`, every rank its share.

        Raises:
            DataError: some cases could not be prepared (every one named with its reason).
        """
        cases = self.discover(generate=True)
        if self.trainer is not None and self.trainer.world_size > 1:
            return
        self._prepare(cases, 0, 1, 1)

    def _prepare(self, cases: list[CaseFiles], rank: int, world: int, ranks_per_node: int) -> None:
        """Prepare this rank's share of the cases that are not in the cache yet."""
        out = self.prepared_dir
        todo = [c for c in cases if not is_fresh(out / c.case_id, c)][rank::world]
        if todo or out.is_dir():  # (also a folder prepared before config.json was written)
            write_cache_config(out, self.prepared_config())
        if not todo:
            return
        workers = self.prepare_workers
        if workers == "auto":
            workers = max(1, available_cores() // ranks_per_node)
        workers = min(int(workers), len(todo))
        log.info(
            "Preparing %d of %d cases of %s into %s (%d worker%s%s)",
            len(todo),
            len(cases),
            self.dataset_root,
            out,
            workers,
            "s" if workers > 1 else "",
            f", rank {rank} of {world}" if world > 1 else "",
        )
        progress, task = _progress(f"Preparing {self.dataset_name}", len(todo))
        with progress:
            failed = prepare_cases(
                todo, out, self.convention, self.prep, self.symmetry, workers, lambda: progress.advance(task)
            )
        for case_id, why in failed.items():
            log.error("%s: not prepared (%s)", case_id, why)
        if failed:
            raise DataError(
                f"{len(failed)} of {len(cases)} cases could not be prepared (the others are in {out}):\n"
                + "\n".join(f"  - {why}" for why in failed.values())
            )

    def _split_path(self, case_ids: list[str], groups: dict[str, str] | None = None) -> Path:
        """The split file: ``split_file``, else ``<cache_dir>/splits/<dataset>-<hash>/split.json``."""
        if self.split_file is not None:
            return self.split_file
        key = "|".join(sorted(case_ids)) + f"|{self.seed}|{self.test_fraction}|{self.num_folds}"
        if groups and (self.split != "stratified" or len(set(groups.values())) > 1):
            # (a single group split as before: the same cases, the same file)
            key += f"|{self.split}|" + ",".join(f"{c}={g}" for c, g in sorted(groups.items()))
        h = hashlib.sha1(key.encode()).hexdigest()[:8]
        return self.cache_dir / "splits" / f"{self.dataset_name}-{h}" / SPLIT_FILE

    def case_groups(self, case_ids: list[str]) -> dict[str, str]:
        """Case id -> site (``data.groups``)."""
        return case_groups(case_ids, self.groups_spec)

    def setup(self, stage: str | None = None) -> None:
        """Prepare this rank's share of the cases (under DDP), read the split and open the cases of each part."""
        if self.splits is not None:
            return
        rank, world, per_node = self._dist()
        if world > 1:  # prepare_data() wrote the synthetic data; Lightning synchronised the ranks since
            self._prepare(self.discover(), rank, world, per_node)
            self._barrier("prepared cases")
        cases = self.discover()
        ids = [c.case_id for c in cases]
        for c in cases:
            if not is_fresh(self.prepared_dir / c.case_id, c):
                raise DataError(f"case {c.case_id} is not prepared in {self.prepared_dir}; call prepare_data() first")
        groups = self.case_groups(ids)
        # a split folder of the cache gets a config.json; an explicit split_file's folder is the user's
        about = None
        if self.split_file is None:
            about = {"dataset": self.dataset_name, "root": str(self.dataset_root.resolve())}
            about |= split_config(ids, self.seed, self.test_fraction, self.num_folds, groups, self.split)
        path = self._split_path(ids, groups)
        self.splits = load_or_create_splits(
            path, ids, self.seed, self.test_fraction, self.num_folds, config=about, groups=groups, strategy=self.split
        )
        if self.fold >= len(self.splits["folds"]):
            raise ConfigError(
                f"data.fold={self.fold}, but the split file {path} has "
                f"{len(self.splits['folds'])} folds (0..{len(self.splits['folds']) - 1})"
            )
        train, val, test = fold_cases(self.splits, self.fold)
        self.train_cases = [load_prepared(self.prepared_dir / c) for c in train]
        self.val_cases = [load_prepared(self.prepared_dir / c) for c in val]
        self.test_cases = [load_prepared(self.prepared_dir / c) for c in test]
        log.info(
            "Split %s fold %d: %d train, %d val, %d test cases",
            self._split_path(ids),
            self.fold,
            len(train),
            len(val),
            len(test),
        )

    # -- loaders ------------------------------------------------------------------------------

    def set_patch_distribution(self, distribution: str) -> None:
        """Label distribution of training patch centres from the next epoch on: ``"balanced"`` or
        ``"natural"`` (the two-phase callback switches it)."""
        if distribution not in DISTRIBUTIONS:
            raise ConfigError(f"unknown patch distribution {distribution!r}; expected one of {DISTRIBUTIONS}")
        self.patch_distribution = distribution

    @property
    def patch_sampler(self) -> PatchSampler:
        """Class-indexed patch sampler over the training cases (built once)."""
        if self._patch_sampler is None:
            self._patch_sampler = PatchSampler(self.train_cases, self.num_classes, self.patch_size, self.dense_size)
        return self._patch_sampler

    def cache_first_stage(
        self,
        first_stage: Callable[[torch.Tensor], torch.Tensor],
        key: str,
        margin: int,
        size: int,
        before: int,
        device: torch.device | str = "cpu",
        batch_slices: int = 8,
    ) -> list[Path]:
        """Compute a cascade's frozen first-stage maps over every training case once, on disk, and attach them.

        ``first_stage`` maps slices ``(N, C, X, Y)`` to ``(N, K, X + 2*margin, Y + 2*margin)``
        probabilities. Maps are float16 ``.npy`` files under ``<cache_dir>/first_stage/<key>/``
        (``key`` identifies the first stage's weights), written atomically, computed by every rank
        for its share of the cases, then memory-mapped by the patch sampler (shared, never in RAM).

        Returns:
            The map files, in the order of :attr:`train_cases`.
        """
        folder = self.cache_dir / "first_stage" / f"{self.prepared_dir.name}-{key}"
        folder.mkdir(parents=True, exist_ok=True)
        paths = [folder / f"{c.case_id}.npy" for c in self.train_cases]
        rank, world, _ = self._dist()
        if self.trainer is not None and self.trainer.world_size > 1 and not self.prepare_data_per_node:
            rank, world = self.trainer.global_rank, self.trainer.world_size
        todo = [(c, p) for c, p in zip(self.train_cases, paths) if not p.is_file()][rank::world]
        if todo:
            progress, task = _progress("First-stage maps", sum(len(c.brain_slices) for c, _ in todo))
            with progress, torch.no_grad():
                for c, path in todo:
                    z, _, nx, ny = c.shape
                    probs = None
                    brain = c.brain_slices
                    for s in range(0, len(brain), batch_slices):
                        idx = brain[s : s + batch_slices]
                        x = torch.from_numpy(np.asarray(c.image[idx], dtype=np.float32)).to(device)
                        p = first_stage(x).float().cpu().numpy().astype(np.float16)
                        if probs is None:
                            probs = np.zeros((z, p.shape[1], nx + 2 * margin, ny + 2 * margin), np.float16)
                            probs[:, 0] = 1.0  # slices without brain: background
                        probs[idx] = p
                        progress.advance(task, len(idx))
                    assert probs is not None, f"{c.case_id}: a prepared case without brain slices"
                    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.npy")
                    np.save(tmp, probs)
                    tmp.replace(path)
        self._barrier("first-stage maps")
        self.patch_sampler.set_aux(paths, margin=margin, size=size, before=before)
        return paths

    def train_dataset(self) -> SliceDataset | PatchBatchDataset:
        """The training data (items ``(epoch, i[, distribution])`` from :meth:`train_dataloader`'s sampler)."""
        if self.mode == "patches":
            batches = max(1, self.patches_per_epoch // self.batch_size)
            return PatchBatchDataset(self.patch_sampler, self.batch_size, batches, self.seed)
        return SliceDataset(
            self.train_cases,
            self.crop_size,
            self.batch_size,
            self.augment,
            self.seed,
            self.tumour_fraction,
            self.context_slices,
        )

    def _trainer_attached(self) -> bool:
        try:
            return self.trainer is not None
        except RuntimeError:
            return False

    def _epoch_state(self) -> tuple:
        epoch = training_epoch(self.trainer)
        return (epoch, self.patch_distribution) if self.mode == "patches" else (epoch,)

    def _loader_options(self) -> dict[str, Any]:
        t = self.trainer
        accelerator = "cpu"
        per_node = 1
        if t is not None:
            accelerator = "cpu" if type(t.accelerator).__name__ == "CPUAccelerator" else "gpu"
            per_node = t.num_devices
        workers = resolve_workers(self.num_workers, per_node, accelerator)
        return {
            "num_workers": workers,
            "persistent_workers": workers > 0,
            "pin_memory": accelerator == "gpu",
        }

    def train_dataloader(self) -> DataLoader:
        """Lightning builds it once per fit: its items carry the epoch and the patch distribution in
        force (:class:`~brats_lightning.data.datasets.EpochItems`), so its workers persist."""
        ds = self.train_dataset()
        opts = self._loader_options()
        overfit = float(getattr(self.trainer, "overfit_batches", 0) or 0) if self._trainer_attached() else 0.0
        if overfit and isinstance(ds, SliceDataset):
            # Lightning's overfit_batches (debug=overfit): the same few batches every epoch; a SequentialSampler,
            # which Lightning keeps (it would replace any other by one over the data set's items)
            n = int(overfit) if overfit >= 1 else max(1, int(overfit * -(-len(ds) // self.batch_size)))
            return RingLoader(ds, batch_size=None, sampler=FixedBatches(len(ds), self.seed, self.batch_size, n), **opts)
        if isinstance(ds, PatchBatchDataset):
            items = EpochItems(len(ds), self.seed, self._epoch_state, shuffle=False)
            return RingLoader(ds, batch_size=None, sampler=items, **opts)
        slices = EpochItems(len(ds), self.seed, self._epoch_state, shuffle=True)
        batches = BatchSampler(slices, self.batch_size, drop_last=len(ds) > self.batch_size)
        return RingLoader(ds, batch_size=None, sampler=batches, **opts)

    def _volume_loader(self, cases: list[PreparedCase]) -> DataLoader:
        opts = self._loader_options()
        opts["num_workers"] = min(opts["num_workers"], 2)
        opts["persistent_workers"] = opts["num_workers"] > 0
        return DataLoader(
            VolumeDataset(cases, self.context_slices), batch_size=1, shuffle=False, collate_fn=first_item, **opts
        )

    def val_dataloader(self) -> DataLoader:
        return self._volume_loader(self.val_cases)

    def test_dataloader(self) -> DataLoader:
        """The held-out test cases; without any (``test_fraction=0``, cross-validation over all the
        cases, as Shen et al.), the fold's validation cases: each fold is then scored on the cases it
        did not train on."""
        if not self.test_cases:
            log.info("No held-out test cases (data.test_fraction=0): testing on fold %d's validation cases", self.fold)
            return self._volume_loader(self.val_cases)
        return self._volume_loader(self.test_cases)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """On the device: float16/uint8 from the cache to float32/int64, and the training slices' augmentation.

        The augmentation of a batch is seeded by ``(seed, epoch, global step, rank)``.
        """
        if isinstance(batch, dict):  # a whole volume
            batch["image"] = batch["image"].float()
            if "label" in batch:
                batch["label"] = batch["label"].long()
            return batch
        weights = None
        if self.mode == "patches" and self.dense_size > 1:  # dense windows: (..., labels, pixel weights)
            *batch, weights = batch
        *inputs, y = batch
        inputs = [x.float() for x in inputs]
        y = y.long()
        if weights is not None:
            return (*inputs, y, weights.float())
        t = self.trainer
        if self.mode == "slices" and self.augment and t is not None and t.training:
            seed = stream_seed(self.seed, training_epoch(t), t.global_step, t.global_rank)
            generator = torch.Generator().manual_seed(seed)
            inputs[0], y = self.augmenter(inputs[0], y, generator, self.intensity_channels)
            if self.modality_dropout:
                inputs[0] = self.drop_modalities(inputs[0], generator)
        return (*inputs, y)

    def modality_channels(self) -> dict[str, list[int]]:
        """Modality -> its input channels (image, symmetry map) in every context slice."""
        return modality_channels(self.describe())

    def drop_modalities(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Zero whole modalities of training slices, each with probability ``modality_dropout`` (one always kept)."""
        n, m = image.shape[0], len(self.modalities)
        drop = torch.rand(n, m, generator=generator) < self.modality_dropout
        keep = torch.randint(0, m, (n,), generator=generator)
        drop[torch.arange(n), keep] &= ~drop.all(1)  # a slice that would lose every modality keeps one
        if not bool(drop.any()):
            return image
        out = image.clone()
        channels = self.modality_channels()
        for j, modality in enumerate(self.modalities):
            rows = torch.nonzero(drop[:, j]).flatten().to(image.device)
            if rows.numel():
                out[rows[:, None], torch.tensor(channels[modality], device=image.device)[None]] = 0
        return out

    @property
    def intensity_channels(self) -> list[int]:
        """The input channels that are MR intensities (not symmetry maps), over every context slice."""
        per_slice = len(self.modalities) * (2 if self.symmetry.enabled else 1)
        images = range(len(self.modalities))  # (the cache stores the images first, then their maps)
        return [j * per_slice + i for j in range(2 * self.context_slices + 1) for i in images]

    def describe(self) -> dict:
        """What a model needs to know of its data to predict new cases (stored in checkpoints)."""
        return {
            "modalities": list(self.modalities),
            "convention": self.convention.name,
            "symmetry": self.symmetry.__dict__ | {"device": "auto"},
            "preprocess": self.prep.to_dict(),
            "layout": self.layout,
            "files": self.files,
            "context_slices": self.context_slices,
            "modality_dropout": self.modality_dropout,
        }

    def label_frequencies(self) -> list[float]:
        """Class frequencies inside the brain over the training cases (natural distribution)."""
        counts = np.zeros(self.num_classes)
        for c in self.train_cases:
            counts += np.asarray(c.meta["label_counts"])
        return (counts / max(counts.sum(), 1)).tolist()


def _check_options(
    num_folds: int,
    fold: int,
    test_fraction: float,
    crop_size: Sequence[int],
    batch_size: int,
    patch_size: int,
    patches_per_epoch: int,
) -> None:
    """Reject option values that cannot work, before any data is read (each message names the option)."""
    if not isinstance(num_folds, int) or num_folds < 2:
        raise ConfigError(f"data.num_folds must be an integer >= 2, got {num_folds!r}")
    if not isinstance(fold, int) or not 0 <= fold < num_folds:
        raise ConfigError(f"data.fold must be one of 0..{num_folds - 1} (data.num_folds={num_folds}), got {fold!r}")
    if not 0 <= test_fraction < 1:
        raise ConfigError(f"data.test_fraction must be in [0, 1), got {test_fraction!r}")
    sizes = list(crop_size) if isinstance(crop_size, (list, tuple)) else []
    if len(sizes) != 2 or not all(isinstance(v, int) and v > 0 for v in sizes):
        raise ConfigError(f"data.crop_size must be two positive integers [X, Y], got {crop_size!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"data.batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(patch_size, int) or patch_size < 1:
        raise ConfigError(f"data.patch_size must be a positive integer, got {patch_size!r}")
    if not isinstance(patches_per_epoch, int) or patches_per_epoch < batch_size:
        raise ConfigError(
            f"data.patches_per_epoch must be an integer >= data.batch_size ({batch_size}), got {patches_per_epoch!r}"
        )
