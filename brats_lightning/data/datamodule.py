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
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import BatchSampler, DataLoader

from brats_lightning.data.augment import SliceAugment, drop_modalities
from brats_lightning.data.cache import PreparedCase, cache_config, cache_key, is_fresh, load_prepared
from brats_lightning.data.channels import in_channels_for, modality_channels
from brats_lightning.data.datasets import EpochItems, FixedBatches, SliceDataset, VolumeDataset, first_item
from brats_lightning.data.groups import case_groups
from brats_lightning.data.labels import get_convention
from brats_lightning.data.layouts import detect_layout, discover_cases
from brats_lightning.data.loading import RingLoader, resolve_workers
from brats_lightning.data.options import DataOptions
from brats_lightning.data.preparation import available_cores, first_stage_maps, prepare_missing
from brats_lightning.data.preprocess import PreprocessConfig, SymmetryConfig
from brats_lightning.data.readers import CaseFiles
from brats_lightning.data.sampling import DISTRIBUTIONS, PatchBatchDataset, PatchSampler
from brats_lightning.data.splits import SPLIT_FILE, fold_cases, load_or_create_splits, split_config
from brats_lightning.errors import ConfigError, DataError
from brats_lightning.seeding import stream_seed, training_epoch

__all__ = ["BratsDataModule"]

log = logging.getLogger(__name__)


class BratsDataModule(pl.LightningDataModule):
    """Slices (or patches) for training, whole volumes for validation and test.

    Args:
        options: the data options (:class:`~brats_lightning.data.options.DataOptions`: every ``data.*`` option,
            documented there), or nothing and the options as keyword arguments (how Hydra builds it:
            ``BratsDataModule(root="/data/BraTS2021", symmetry=True)``). They are checked before anything is
            read: a wrong type, range or combination is a :class:`~brats_lightning.errors.ConfigError` naming
            the option.
    """

    def __init__(self, options: DataOptions | None = None, /, **kwargs: Any) -> None:
        super().__init__()
        if options is None:
            options = DataOptions.of(kwargs)
        elif kwargs:
            raise TypeError("give the data options either as a DataOptions or as keyword arguments, not both")
        self.options = o = options
        self.root = None if o.root is None else Path(o.root)
        self.layout, self.modalities = o.layout, tuple(o.modalities)
        self.files: dict[str, str] | None = {str(k): v for k, v in o.files.items()} if o.files else None
        self.groups_spec, self.split = o.groups, o.split
        self.convention = get_convention(o.convention)
        self.symmetry = o.symmetry_config()
        self.prep = o.preprocess_config()
        self.cache_dir = Path(o.cache_dir)
        # Lightning calls prepare_data on every node's local rank 0 unless the storage is shared
        self.prepare_data_per_node = not o.cache_shared
        self.split_file = None if o.split_file is None else Path(o.split_file)
        self.seed, self.test_fraction, self.num_folds, self.fold = o.seed, o.test_fraction, o.num_folds, o.fold
        self.max_cases, self.crop_size, self.batch_size = o.max_cases, tuple(o.crop_size), o.batch_size
        self.num_workers, self.prepare_workers = o.num_workers, o.prepare_workers
        self.augment, self.tumour_fraction = o.augment, o.tumour_fraction
        self.context_slices, self.modality_dropout = o.context_slices, o.modality_dropout
        try:
            self.augmenter = SliceAugment(**(o.augment_options or {}))
        except TypeError as e:
            raise ConfigError(f"data.augment_options: {e}") from None
        self.mode, self.patch_size, self.dense_size = o.mode, o.patch_size, o.dense_size
        self.patches_per_epoch = o.patches_per_epoch
        self.patch_distribution: str = o.patch_distribution
        self._patch_sampler: PatchSampler | None = None
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
        s = self.options.synthetic_options()
        shape = "x".join(str(int(v)) for v in s.shape)
        return self.cache_dir / f"synthetic-n{s.n_cases}-{shape}-sp{s.spacing}-seed{s.seed}"

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
        declared = {c.convention for c in cases if c.convention}
        if declared and declared != {self.convention.name}:
            raise DataError(
                f"{self.dataset_root}: its dataset.json declares the {', '.join(sorted(declared))} label convention, "
                f"but data.convention={self.convention.name}: leave data.convention to the data set (data=brats) or "
                "set it to the declared one"
            )
        excluded = set(self.options.exclude)
        if excluded:
            unknown = sorted(excluded - {c.case_id for c in cases})
            if unknown:
                shown = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
                raise DataError(f"data.exclude names {len(unknown)} case(s) that {self.dataset_root} lacks: {shown}")
            cases = [c for c in cases if c.case_id not in excluded]
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

    def _write_synthetic(self) -> None:
        from brats_lightning.data.synthetic import write_dataset

        s = self.options.synthetic_options()
        shape = cast("tuple[int, int, int]", tuple(s.shape))  # (three sides: SyntheticOptions)
        write_dataset(self.dataset_root, n_cases=s.n_cases, shape=shape, spacing=s.spacing, seed=s.seed, progress=True)

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
        asked = self.prepare_workers
        workers = max(1, available_cores() // ranks_per_node) if asked == "auto" else int(asked)
        prepare_missing(
            cases,
            self.prepared_dir,
            self.prepared_config(),
            self.convention,
            self.prep,
            self.symmetry,
            workers,
            rank,
            world,
            self.dataset_name,
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
            "Split %s %s: %d train, %d val, %d test cases",
            path,
            f"fold {self.fold}" if self.fold >= 0 else "all folds",
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
        rank, world, _ = self._dist()
        if self.trainer is not None and self.trainer.world_size > 1 and not self.prepare_data_per_node:
            rank, world = self.trainer.global_rank, self.trainer.world_size
        paths = first_stage_maps(self.train_cases, first_stage, folder, margin, device, batch_slices, rank, world)
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
        if not self.test_cases and not self.val_cases:
            raise ConfigError(
                f"data.fold={self.fold} trains on every fold's cases and data.test_fraction={self.test_fraction} holds "
                "none out: there is no case to test on (set test=false, or data.test_fraction above 0)"
            )
        if not self.test_cases:
            log.info("No held-out test cases (data.test_fraction=0): testing on fold %d's validation cases", self.fold)
            return self._volume_loader(self.val_cases)
        return self._volume_loader(self.test_cases)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """On the device: float16/uint8 from the cache to float32/int64, and the training slices' augmentation
        (``data.augment``) and modality dropout (``data.modality_dropout``, whether or not ``augment`` is on).

        Both are seeded by ``(seed, epoch, global step, rank)``.
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
        if self.mode == "slices" and (self.augment or self.modality_dropout) and t is not None and t.training:
            seed = stream_seed(self.seed, training_epoch(t), t.global_step, t.global_rank)
            generator = torch.Generator().manual_seed(seed)
            if self.augment:
                inputs[0], y = self.augmenter(inputs[0], y, generator, self.intensity_channels)
            if self.modality_dropout:  # what the checkpoint records, and predict relies on, is trained
                inputs[0] = self.drop_modalities(inputs[0], generator)
        return (*inputs, y)

    def modality_channels(self) -> dict[str, list[int]]:
        """Modality -> its input channels (image, symmetry map) in every context slice."""
        return modality_channels(self.describe())

    def drop_modalities(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Zero whole modalities of training slices, each with probability ``modality_dropout`` (one always kept)."""
        return drop_modalities(image, generator, self.modality_dropout, self.modality_channels())

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
            "symmetry": self.symmetry.model_dump(mode="json") | {"device": "auto"},
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
