"""Shared LightningModule logic: whole-volume validation and test with BraTS-region metrics."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import pytorch_lightning as pl
import torch

from brats_lightning.data.contract import SegmentationData
from brats_lightning.data.labels import REGIONS, get_convention
from brats_lightning.data.preprocess import uncrop
from brats_lightning.errors import CheckpointError, ConfigError
from brats_lightning.evaluation.metrics import dice_torch, region_metrics
from brats_lightning.inference.cleanup import apply_cleanup
from brats_lightning.inference.decision import check_et_threshold, decide
from brats_lightning.inference.flips import flip_average, tta_flips
from brats_lightning.inference.volume import InputPadding, predict_padded, predict_volume
from brats_lightning.schema import Strict, validate
from brats_lightning.seeding import stream_seed, training_epoch

__all__ = ["SegmentationModule"]


class SegmentationModule(pl.LightningModule):
    """Base class: subclasses build ``self.net`` and implement :meth:`predict_slices` and training.

    Validation and test run on whole cases (every slice, fully convolutional) and report, per BraTS
    region (whole tumour, tumour core, enhancing tumour), ``val/dice_wt``, ``val/dice_tc``,
    ``val/dice_et`` and their mean ``val/dice_mean``; the test adds sensitivity, specificity, PPV
    and HD95 on the full original grid (:mod:`brats_lightning.evaluation.metrics`). Under DDP every case is
    counted once, whatever the sampler padded.

    Args:
        convention: label convention of the data (defines the regions).
        inference_batch_size: slices per forward pass at inference.
        test_hd95: compute HD95 at test time (the slowest metric).
        channels_last: run the net in the channels-last memory layout (measured faster for every
            net here, fp32 and bf16, training and inference: ``benchmarks/bench_inference.py``).
        lesion_metrics: add the lesion-wise columns (:mod:`brats_lightning.evaluation.lesions`) to the test metrics.
        postprocess: options of :func:`~brats_lightning.inference.cleanup.apply_cleanup`, applied
            to the test predictions before scoring and, stored in the checkpoint, by ``predict``
            (Havaei et al. Sec. 4); ``None``: none. A run's
            :class:`~brats_lightning.callbacks.postprocess.TunePostprocess` may replace it (and set
            :attr:`tta_flips`) with what it chose on the validation cases; both travel in the checkpoint.
        name: the method's name in tables and reports (``FCN + symmetry (3 blocks)``; the class name
            when not given).

    Precision is the trainer's (``bf16-mixed`` where the hardware has bf16: :mod:`brats_lightning.precision`);
    softmax, losses and metrics are computed in fp32.
    """

    #: the net (a plain ``nn.Module``), built by the subclass
    net: torch.nn.Module

    #: Every subclass, by qualified name: the only classes a checkpoint may name (:mod:`brats_lightning.load`).
    registry: ClassVar[dict[str, type[SegmentationModule]]] = {}

    #: the schema of the subclass's ``__init__`` arguments (:mod:`brats_lightning.modules.options`): its options
    #: (``model.*``) and a checkpoint's stored hyper-parameters are checked with it; ``None``: not saved, not checked
    options_schema: ClassVar[type[Strict] | None] = None

    def __init_subclass__(cls, register: bool = True, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if register:  # inference-only wrappers (ensembles, exported nets) are never saved: not registered
            SegmentationModule.registry[f"{cls.__module__}.{cls.__qualname__}"] = cls

    def __init__(
        self,
        convention: str = "brats2017",
        inference_batch_size: int = 16,
        test_hd95: bool = True,
        channels_last: bool = True,
        lesion_metrics: bool = False,
        postprocess: dict | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__()
        self.display_name = name or type(self).__name__
        self.channels_last = channels_last
        self.lesion_metrics = lesion_metrics
        self.postprocess = dict(postprocess) if postprocess else None
        try:
            self.convention = get_convention(convention)
        except KeyError as e:
            raise ConfigError(f"model.convention: {e.args[0]}") from None
        self.inference_batch_size = inference_batch_size
        self.test_hd95 = test_hd95
        self._val_rows: list[torch.Tensor] = []
        self._test_rows: list[torch.Tensor] = []
        self.test_results: list[dict] = []
        self.test_slices: list[dict] = []
        #: validation Dice per epoch (kept in checkpoints; written as val_curve.csv by train())
        self.val_history: list[dict] = []
        #: test-time flips (``lr``, ``ap``) to test and predict with (``predict tta=auto``); kept in checkpoints
        self.tta_flips: list[str] = []
        #: how class maps are decided from class probabilities (:func:`~brats_lightning.inference.decision.decide`)
        self.decision = "argmax"
        #: the enhancing tumour's probability threshold of the decision (``None``: the rule alone); kept in checkpoints
        self.et_threshold: float | None = None
        #: run the net through ``torch.compile`` (inductor) in training and inference (``model.compile``)
        self.use_compile = False

    def check_options(self) -> None:
        """The module's hyper-parameters (``self.hparams``) against :attr:`options_schema`, before the net is built.

        Raises:
            ConfigError: one line naming the option (``model.width: ...``).
        """
        if self.options_schema is not None:
            validate(self.options_schema, dict(self.hparams), "model", ConfigError, options=True)

    @property
    def hp(self) -> Any:
        """The hyper-parameters (``self.hparams``), for attribute access (``self.hp.lr``)."""
        return self.hparams

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the net's memory layout (channels last when enabled)."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def _set_layout(self) -> None:
        """Put the net's weights in its memory layout (subclasses call it once the net is built)."""
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs omit it

    # -- to implement ------------------------------------------------------------------------

    @property
    def input_padding(self) -> InputPadding:
        """How the net takes a whole slice (:class:`~brats_lightning.inference.volume.InputPadding`)."""
        raise NotImplementedError

    def run_net(self, x: torch.Tensor) -> torch.Tensor:
        """The net on ``x`` in its memory layout; through ``torch.compile`` (inductor, dynamic shapes) with
        :attr:`use_compile`. The compiled function is kept outside the module's state (checkpoints are the same)."""
        if not self.use_compile:
            return self.net(self.layout(x))
        compiled = self.__dict__.get("_compiled")
        if compiled is None or compiled[0] is not self.net:
            compiled = self.__dict__["_compiled"] = (self.net, torch.compile(self.net, dynamic=True))
        return compiled[1](self.layout(x))

    def net_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax of the net on slices already padded as :attr:`input_padding` says (fp32; what ``export`` exports)."""
        return torch.softmax(self.run_net(x).float(), dim=1)

    def predict_slices(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(N, K, H, W)`` of every pixel of slices ``(N, C, H, W)``."""
        return predict_padded(self.net_probabilities, x, self.input_padding)

    def prepare_for_inference(self) -> SegmentationModule:
        """Make the module an inference-only one (e.g. fold batch norms; it cannot train afterwards)."""
        return self.eval()

    def preflight(self, datamodule: object | None = None) -> None:
        """Check what this model needs of its files and data options, before any data is prepared.

        ``train()`` calls it right after building the model and the data module; it raises
        :class:`~brats_lightning.errors.ConfigError` (or ``CheckpointError``) naming the option.
        """

    # -- shared ------------------------------------------------------------------------------

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.val_history = list(checkpoint.get("val_history", []))
        # what a tuning callback chose after training overrides the configured clean-up
        if "postprocess" in checkpoint:
            post = checkpoint["postprocess"]
            self.postprocess = dict(post) if post else None
        self.tta_flips = list(checkpoint.get("tta_flips") or [])
        try:
            self.et_threshold = check_et_threshold(checkpoint.get("et_threshold"), "the checkpoint")
        except ValueError as e:
            raise CheckpointError(str(e)) from None

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # The global random stream (dropout) is reseeded from (seed, epoch, batch, rank) at every step:
        # a resumed run draws what an uninterrupted one would, and every DDP rank draws its own.
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        trainer = self._trainer
        rank = trainer.global_rank if trainer is not None else 0
        torch.manual_seed(stream_seed(seed, training_epoch(trainer), batch_idx, rank))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The data configuration travels with the weights, so that prediction preprocesses new
        # scans exactly as training did (channels, clipping, N4, z-score, symmetry maps).
        checkpoint["module_class"] = f"{type(self).__module__}.{type(self).__qualname__}"
        checkpoint["val_history"] = list(self.val_history)
        checkpoint["postprocess"] = dict(self.postprocess) if self.postprocess else None
        checkpoint["tta_flips"] = list(self.tta_flips)
        checkpoint["et_threshold"] = self.et_threshold
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if isinstance(dm, SegmentationData):
            checkpoint["data_config"] = dm.describe()

    def predict_case(self, batch: dict, flips: Sequence[str] = ()) -> torch.Tensor:
        """``(Z, K, X, Y)`` probabilities of one volume item (see ``data.datasets.VolumeDataset``).

        Args:
            batch: the item (with ``context_slices``, its slices get their neighbours as channels).
            flips: test-time flips (``lr``, ``ap``) whose probabilities are averaged in.
        """
        fn = flip_average(self.predict_slices, tta_flips(flips))
        context = int(batch.get("context_slices", 0))
        return predict_volume(fn, batch["image"], self.inference_batch_size, batch.get("mask"), context)

    def decide(self, probs: torch.Tensor) -> torch.Tensor:
        """The class map of ``(N, K, ...)`` class probabilities, by :attr:`decision` and :attr:`et_threshold`."""
        return decide(probs, self.convention, self.decision, self.et_threshold)

    def clean_up(self, pred: torch.Tensor, spacing: Sequence[float]) -> torch.Tensor:
        """The ``(Z, X, Y)`` class map after :attr:`postprocess` (itself when there is none)."""
        if not self.postprocess:
            return pred
        classes = pred.permute(1, 2, 0).cpu().numpy().astype(np.uint8)
        classes = apply_cleanup(classes, spacing, self.convention, self.postprocess)
        return torch.from_numpy(classes).permute(2, 0, 1).to(pred.device)

    def _region_dice(self, pred: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        p, g = self.convention.region_masks(pred), self.convention.region_masks(label)
        return torch.stack([dice_torch(p[r][None], g[r][None])[0] for r in REGIONS])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        pred = self.decide(self.predict_case(batch))
        d = self._region_dice(pred, batch["label"])
        self._val_rows.append(torch.cat([torch.tensor([float(batch["index"])], device=d.device), d]))

    def _gather_unique(self, rows: list[torch.Tensor]) -> torch.Tensor:
        """Rows ``[index, values...]`` of all ranks, each case index once."""
        if not rows:
            return torch.zeros((0, 1 + len(REGIONS)), device=self.device)
        local = torch.stack(rows)
        if self.trainer is not None and self.trainer.world_size > 1:
            gathered = self.all_gather(local)
            assert isinstance(gathered, torch.Tensor)
            local = gathered.reshape(-1, local.shape[-1])
        _, first = np.unique(local[:, 0].cpu().numpy(), return_index=True)
        return local[torch.as_tensor(first, device=local.device)]

    def on_validation_epoch_end(self) -> None:
        rows = self._gather_unique(self._val_rows)
        self._val_rows.clear()
        if rows.shape[0] == 0:
            return
        means = rows[:, 1:].mean(0)
        for r, v in zip(REGIONS, means):
            self.log(f"val/dice_{r}", v, sync_dist=True)
        self.log("val/dice_mean", means.mean(), prog_bar=True, sync_dist=True)
        if not self.trainer.sanity_checking:
            entry = {"epoch": self.current_epoch, **{f"val/dice_{r}": float(v) for r, v in zip(REGIONS, means)}}
            entry["val/dice_mean"] = float(means.mean())
            self.val_history = [h for h in self.val_history if h["epoch"] != self.current_epoch] + [entry]

    def test_step(self, batch: dict, batch_idx: int) -> None:
        # the test metrics are those of what predict writes: test-time flips and clean-up included
        pred = self.clean_up(self.decide(self.predict_case(batch, self.tta_flips)), batch["spacing"])
        d = self._region_dice(pred, batch["label"])
        self._test_rows.append(torch.cat([torch.tensor([float(batch["index"])], device=d.device), d]))
        # Full metrics on the original (RAS) grid: specificity counts every voxel of the scan.
        box = batch["box"]
        shape = tuple(batch["ras_shape"])
        p = uncrop(pred.permute(1, 2, 0).cpu().numpy().astype(np.uint8), box, shape)
        g = uncrop(batch["label"].permute(1, 2, 0).cpu().numpy().astype(np.uint8), box, shape)
        pm, gm = self.convention.region_masks(p), self.convention.region_masks(g)
        for r in REGIONS:
            m = region_metrics(pm[r], gm[r], batch["spacing"], self.test_hd95, lesion_wise=self.lesion_metrics)
            self.test_results.append({"case": batch["case_id"], "region": r, **m})
        # The axial slice with the most tumour, for overlays in reports and W&B.
        z = int((batch["label"] > 0).flatten(1).sum(1).argmax())
        self.test_slices.append(
            {
                "case": batch["case_id"],
                "image": batch["image"][z].cpu().numpy().astype(np.float16),
                "label": batch["label"][z].cpu().numpy().astype(np.uint8),
                "pred": pred[z].cpu().numpy().astype(np.uint8),
                "channels": list(batch.get("channels", [])),
                "convention": self.convention.name,
            }
        )

    def on_test_epoch_start(self) -> None:
        self.test_results = []
        self.test_slices = []

    def on_test_epoch_end(self) -> None:
        rows = self._gather_unique(self._test_rows)
        self._test_rows.clear()
        if self.trainer is not None and self.trainer.world_size > 1:
            gathered: list = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, self.test_results)
            seen, merged = set(), []
            for part in gathered:
                for row in part:
                    if (row["case"], row["region"]) not in seen:
                        seen.add((row["case"], row["region"]))
                        merged.append(row)
            self.test_results = merged
            parts: list = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(parts, self.test_slices)
            unique = {s["case"]: s for part in parts for s in part}
            self.test_slices = [unique[k] for k in sorted(unique)]
        order = {r: i for i, r in enumerate(REGIONS)}
        self.test_results.sort(key=lambda row: (row["case"], order[row["region"]]))
        self.test_slices.sort(key=lambda s: s["case"])
        if rows.shape[0] == 0:
            return
        means = rows[:, 1:].mean(0)
        for r, v in zip(REGIONS, means):
            self.log(f"test/dice_{r}", v, sync_dist=True)
        self.log("test/dice_mean", means.mean(), sync_dist=True)
