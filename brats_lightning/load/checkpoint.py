"""Checkpoints: read safely, rebuild only brats_lightning's own models, check that they fit a run.

A checkpoint is data. It is read with ``torch.load(weights_only=True)`` (tensors and plain values
only, so reading cannot run code), and the module class it names is looked up in
:attr:`SegmentationModule.registry <brats_lightning.modules.segmentation.SegmentationModule.registry>`,
the classes this package (or a user's code, by subclassing) has defined. A name is never imported:
``{"module_class": "subprocess.run"}`` is refused, not called, and so is a Lightning ``_instantiator``
in its hyper-parameters. What it stores besides the weights (the data configuration, the clean-up,
the test-time flips) is validated against :mod:`brats_lightning.schema` before anything uses it.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brats_lightning.errors import CheckpointError
from brats_lightning.files import read_checkpoint
from brats_lightning.schema import validate

if TYPE_CHECKING:
    from brats_lightning.modules.segmentation import SegmentationModule

__all__ = ["check_hyper_parameters", "module_class", "stored_settings", "describe", "load_module", "check_fits"]

log = logging.getLogger(__name__)

#: hyper-parameters that point at other files (stage checkpoints, VGG weights): never compared
_PATH_PARAMS = ("first_stage_ckpt", "local_ckpt", "global_ckpt", "vgg_weights")


def module_class(ckpt: dict[str, Any], path: str | Path) -> type[SegmentationModule]:
    """The registered module class a checkpoint names (an allow-list lookup, never an import).

    Raises:
        CheckpointError: the checkpoint names no class, or one that is not a brats_lightning model.
    """
    import brats_lightning.modules  # noqa: F401 - defines (and so registers) the package's modules
    from brats_lightning.modules.segmentation import SegmentationModule

    hp = ckpt.get("hyper_parameters")
    if hp is not None and not isinstance(hp, dict):
        raise CheckpointError(f"{path}: its hyper_parameters are a {type(hp).__name__}, not a mapping")
    for key in ("_instantiator", "_class_path"):
        if hp and key in hp:
            raise CheckpointError(
                f"{path}: its hyper-parameters name a Lightning {key} ({str(hp[key])[:80]!r}): brats_lightning "
                "checkpoints never do, and nothing a checkpoint names is imported; it is not loaded"
            )
    name = ckpt.get("module_class")
    if not isinstance(name, str):
        raise CheckpointError(
            f"{path}: not a brats_lightning checkpoint (it names no module class; was it written by another program?)"
        )
    cls = SegmentationModule.registry.get(name)
    if cls is None:
        known = ", ".join(sorted(SegmentationModule.registry))
        raise CheckpointError(
            f"{path}: names the module class {name!r}, which is not a brats_lightning model; it is not loaded "
            f"(known models: {known})"
        )
    return cls


def stored_settings(ckpt: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """What a checkpoint stores besides its weights, validated (:mod:`brats_lightning.schema`).

    Returns:
        ``data_config`` (``{}`` when the checkpoint has none), ``postprocess`` (``None``: none),
        ``tta_flips`` and ``et_threshold`` (``None``: none), as plain values.

    Raises:
        CheckpointError: a value of the wrong type or range, or an unknown key; names ``path``.
    """
    from brats_lightning.data.options import check_data_config
    from brats_lightning.inference.cleanup import check_postprocess
    from brats_lightning.inference.decision import check_et_threshold
    from brats_lightning.inference.flips import check_flips

    raw = ckpt.get("data_config")
    try:
        et_threshold = check_et_threshold(ckpt.get("et_threshold"), str(path))
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    return {
        "data_config": check_data_config(raw, path) if raw is not None else {},
        "postprocess": check_postprocess(ckpt.get("postprocess"), path),
        "tta_flips": check_flips(ckpt.get("tta_flips"), f"{path} (tta_flips)"),
        "et_threshold": et_threshold,
    }


def check_hyper_parameters(
    ckpt: dict[str, Any], cls: type[SegmentationModule], data_config: dict[str, Any], path: str | Path
) -> None:
    """A checkpoint's stored hyper-parameters checked with its class's schema (the one ``model.*`` options are
    checked with: :mod:`brats_lightning.modules.options`) and against its data configuration, before anything is
    built from them (``width: 1000`` is refused, not allocated).

    Raises:
        CheckpointError: naming ``path``, the hyper-parameter and the problem.
    """
    from brats_lightning.data.channels import in_channels_for

    hp = ckpt.get("hyper_parameters") or {}
    if cls.options_schema is not None:
        validate(cls.options_schema, hp, f"{path} (hyper_parameters)", CheckpointError)
    if data_config and "in_channels" in hp:
        sym = data_config.get("symmetry") or {}
        want = in_channels_for(
            list(data_config["modalities"]), bool(sym.get("enabled")), int(data_config.get("context_slices") or 0)
        )
        if hp["in_channels"] != want:
            raise CheckpointError(
                f"{path}: its net takes {hp['in_channels']} input channels, but its data_config "
                f"(modalities {data_config['modalities']}{', symmetry maps' if sym.get('enabled') else ''}) gives "
                f"{want}: the file is inconsistent; it is not loaded"
            )


def describe(ckpt: dict[str, Any]) -> str:
    """A short description of the model in a checkpoint, e.g. ``FCNModule (in_channels=8, n_blocks=3)``."""
    name = str(ckpt.get("module_class", "?")).rpartition(".")[2]
    hp = ckpt.get("hyper_parameters") or {}
    keys = ("arch", "in_channels", "num_classes", "n_blocks", "width", "convention")
    shown = ", ".join(f"{k}={hp[k]}" for k in keys if k in hp)
    return f"{name} ({shown})" if shown else name


def _mismatch(theirs: dict[str, Any], mine: dict[str, Any]) -> list[str]:
    """Parameter names whose presence or shape differs between two state dicts (a few, for messages)."""
    out = [f"{k} is missing" for k in mine if k not in theirs]
    out += [f"{k} is unexpected" for k in theirs if k not in mine]
    out += [
        f"{k} has shape {tuple(theirs[k].shape)}, expected {tuple(v.shape)}"
        for k, v in mine.items()
        if k in theirs and hasattr(theirs[k], "shape") and tuple(theirs[k].shape) != tuple(v.shape)
    ]
    return out


def load_module(path: str | Path, map_location: str = "cpu") -> tuple[SegmentationModule, dict[str, Any]]:
    """Rebuild a trained model from its checkpoint, in eval mode, with the data configuration it was trained on.

    Uses Lightning's ``load_from_checkpoint`` (``weights_only=True``) on the registered class.

    Raises:
        CheckpointError: unreadable or foreign checkpoint, or weights that do not fit its hyper-parameters.
    """
    path = Path(path)
    ckpt = read_checkpoint(path)
    cls = module_class(ckpt, path)
    stored = stored_settings(ckpt, path)
    check_hyper_parameters(ckpt, cls, stored["data_config"], path)
    raw = io.BytesIO(path.read_bytes())
    try:
        model = cls.load_from_checkpoint(raw, map_location=map_location, weights_only=True)
    except (RuntimeError, TypeError, ValueError, KeyError) as e:
        probe_problems: list[str] = []
        try:
            probe = cls(**_init_kwargs(cls, ckpt.get("hyper_parameters") or {}))
            probe_problems = _mismatch(ckpt["state_dict"], probe.state_dict())
        except (TypeError, ValueError) as inner:
            raise CheckpointError(f"{path}: its hyper-parameters do not build a {cls.__name__}: {inner}") from inner
        detail = "; ".join(probe_problems[:4]) or str(e).splitlines()[0]
        raise CheckpointError(f"{path}: its weights do not fit a {describe(ckpt)}: {detail}") from e
    return model.eval(), stored["data_config"]


def _init_kwargs(cls: type[SegmentationModule], hp: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``hp`` that ``cls.__init__`` takes."""
    import inspect

    params = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in hp.items() if k in params}


def check_fits(path: str | Path, model: SegmentationModule, purpose: str = "resume from") -> None:
    """Check, before any data is prepared, that the checkpoint at ``path`` holds weights for ``model``.

    Raises:
        CheckpointError: unreadable or foreign checkpoint, another model class, or other shapes
            (the message lists the hyper-parameters that differ).
    """
    ckpt = read_checkpoint(path)
    cls = module_class(ckpt, path)
    check_hyper_parameters(ckpt, cls, stored_settings(ckpt, path)["data_config"], path)
    if cls is not type(model):
        raise CheckpointError(
            f"{path}: cannot {purpose} it: it holds a {describe(ckpt)}, this run's model is a {type(model).__name__}"
        )
    problems = _mismatch(ckpt["state_dict"], model.state_dict())
    if problems:
        theirs = ckpt.get("hyper_parameters") or {}
        mine = dict(model.hparams)
        differ = [
            f"{k}={theirs[k]!r} in the checkpoint, {mine[k]!r} here"
            for k in sorted(set(theirs) & set(mine))
            if k not in _PATH_PARAMS and theirs[k] != mine[k]
        ]
        raise CheckpointError(
            f"{path}: cannot {purpose} it: its weights do not fit this run's model "
            f"({'; '.join(differ) if differ else '; '.join(problems[:3])})"
        )
