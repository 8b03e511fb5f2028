"""What ``predict`` runs: one checkpoint, an ensemble of them, or an exported ONNX model, with test-time flips.

:func:`load_predictor` takes anything a user may give as ``ckpt_path`` (a checkpoint, a list of them, a run,
multirun or cross-validation folder, a ``.onnx`` file) and returns one model and the data configuration its
inputs must be prepared with; :func:`check_compatible` refuses an ensemble whose members were trained on
different data.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from brats_lightning.errors import CheckpointError
from brats_lightning.inference.flips import tta_flips
from brats_lightning.load.checkpoint import load_module
from brats_lightning.load.onnx import load_onnx
from brats_lightning.load.runs import find_checkpoints
from brats_lightning.modules.ensemble import EnsembleModule
from brats_lightning.modules.segmentation import SegmentationModule

__all__ = ["check_compatible", "load_model", "load_predictor"]

log = logging.getLogger("brats_lightning.predict")

#: what members must share: the data they take and the labels they give
_MUST_AGREE = ("modalities", "convention", "preprocess", "symmetry", "context_slices")


def check_compatible(data_configs: Sequence[dict], paths: Sequence[str | Path]) -> dict:
    """The shared data configuration of an ensemble's checkpoints.

    Raises:
        CheckpointError: two checkpoints differ in modalities, label convention, preprocessing or
            symmetry maps; the message names both files and the values.
    """
    ref, ref_path = data_configs[0], paths[0]
    for cfg, path in zip(data_configs[1:], paths[1:]):
        for key in _MUST_AGREE:
            if _plain(cfg.get(key)) != _plain(ref.get(key)):
                raise CheckpointError(
                    f"{path}: cannot be ensembled with {ref_path}: its {key} is {cfg.get(key)!r}, "
                    f"the other's {ref.get(key)!r} (an ensemble shares one preprocessing)"
                )
    return ref


def _plain(value: object) -> object:
    """Lists and tuples compare alike (a checkpoint read back may hold either)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if k != "device"}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def load_model(ckpt_path: str | Path, device: str | torch.device = "cpu") -> tuple[SegmentationModule, dict]:
    """Rebuild a trained model (eval mode, on ``device``) and its data configuration from a checkpoint.

    Only brats_lightning's own model classes can be rebuilt (see :mod:`brats_lightning.load.checkpoint`).

    Raises:
        CheckpointError: missing, unreadable or foreign checkpoint, or weights that do not fit.
    """
    model, data_config = load_module(ckpt_path)
    return model.to(device).eval(), data_config


def load_predictor(
    ckpt_path: str | Path | Sequence[str | Path],
    flips: Sequence[str] | None = (),
    device: str | torch.device = "cpu",
) -> tuple[SegmentationModule, dict]:
    """What ``predict`` runs: one checkpoint, an ensemble, or an exported ONNX model, with test-time flips.

    Args:
        ckpt_path: a checkpoint, a list of them, a run or multirun folder (its best checkpoints:
            :func:`~brats_lightning.load.checkpoint.find_checkpoints`), or a ``.onnx`` file written by
            ``python -m brats_lightning.export``.
        flips: test-time flips (``lr``, ``ap``; :data:`~brats_lightning.inference.flips.FLIPS`); ``None``:
            those the checkpoints were tuned with (``tta_flips`` of
            :class:`~brats_lightning.callbacks.postprocess.TunePostprocess`; none unless all agree).

    Raises:
        CheckpointError: unreadable checkpoints, or checkpoints of models trained on other data
            (modalities, convention, preprocessing, symmetry maps) than each other.
    """
    if isinstance(ckpt_path, (str, Path)) and str(ckpt_path).endswith(".onnx"):
        model, data_config = load_onnx(ckpt_path)
        flip_dims = tta_flips(model.tta_flips if flips is None else flips)
        return (EnsembleModule([model], flip_dims) if flip_dims else model), data_config
    paths = find_checkpoints(ckpt_path)
    loaded = [load_model(p, device) for p in paths]
    data_config = check_compatible([d for _, d in loaded], paths)
    # missing sequences are accepted only if every member learnt to do without them
    data_config = {**data_config, "modality_dropout": min(float(d.get("modality_dropout", 0.0)) for _, d in loaded)}
    models = [m for m, _ in loaded]
    if flips is None:
        tuned = {tuple(m.tta_flips) for m in models}
        flips = list(tuned.pop()) if len(tuned) == 1 else []
        if flips:
            log.info("Test-time flips %s, as chosen on the validation cases (tta=auto)", flips)
    flip_dims = tta_flips(flips)
    if len(models) == 1 and not flip_dims:
        return models[0], data_config
    if len(models) > 1:
        log.info("Ensemble of %d checkpoints: %s", len(models), ", ".join(map(str, paths)))
    return EnsembleModule(models, flip_dims).eval(), data_config
