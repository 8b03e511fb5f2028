"""``predict``'s options, checked before the model is loaded or any case read, and what they resolve to
(devices, flips, clean-up).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from brats_lightning.data.labels import CONVENTIONS, get_convention
from brats_lightning.errors import ConfigError
from brats_lightning.inference.cleanup import PostprocessOptions
from brats_lightning.inference.flips import tta_flips
from brats_lightning.modules.segmentation import SegmentationModule
from brats_lightning.options import check_config
from brats_lightning.precision import inference_dtype
from brats_lightning.schema import validate

__all__ = ["check_output_dir", "check_predict_options", "cleanup_option", "flips_option", "trainer_options"]


def check_predict_options(cfg: DictConfig | dict) -> None:
    """Reject options that cannot work before the model is loaded or any case read.

    Raises:
        ConfigError: the message names the option.
        MissingMandatoryValue: ``ckpt_path``, ``input_dir`` or ``output_dir`` was not given.
    """
    for key in ("ckpt_path", "input_dir", "output_dir"):
        _ = cfg[key]  # a missing ??? option raises here, before anything is loaded
    check_config(cfg, "predict")  # every option's type and range (brats_lightning.options)
    check_output_dir(Path(str(cfg["output_dir"])), [Path(str(cfg["input_dir"]))])
    conv = cfg.get("output_convention") or "auto"
    if conv != "auto":
        try:
            get_convention(conv)
        except KeyError:
            raise ConfigError(
                f"output_convention={conv!r}: expected auto or one of {sorted(CONVENTIONS)} (or an edition year)"
            ) from None
    try:
        tta_flips(list(cfg.get("tta_flips") or []))
    except ValueError as e:
        raise ConfigError(f"tta_flips: {e}") from None
    flips_option(cfg)
    _auto_or_bool(cfg, "postprocess")
    options = cfg.get("postprocess_options") or {}
    options = OmegaConf.to_container(options) if isinstance(options, DictConfig) else options
    validate(PostprocessOptions, options, "postprocess_options", ConfigError)
    bs = cfg.get("batch_size", 8)
    if not isinstance(bs, int) or isinstance(bs, bool) or bs < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {bs!r}")
    device = str(cfg.get("device", "auto"))
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda[:N], got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device}, but no CUDA device is available here (use device=auto or cpu)")
    workers = cfg.get("num_workers", "auto")
    if workers != "auto" and (not isinstance(workers, int) or workers < 0):
        raise ConfigError(f"num_workers must be auto or an integer >= 0, got {workers!r}")
    try:
        inference_dtype(str(cfg.get("precision", "auto")), "cuda" if device.startswith("cuda") else "cpu")
    except ValueError as e:
        raise ConfigError(str(e)) from None


def check_output_dir(out_dir: Path, inputs: Sequence[Path], what: str = "input_dir") -> None:
    """``output_dir`` must be a folder (or not exist yet) outside the input folder and every case folder.

    Raises:
        ConfigError: ``output_dir`` is a file, or equal to or inside ``input_dir`` or a case folder
            (predictions would be written into the data set, and read back as cases).
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"output_dir={out_dir}: is an existing file, not a folder; give a folder for the predictions")
    out = out_dir.resolve()
    for folder in inputs:
        inp = folder.resolve()
        if out == inp or out.is_relative_to(inp):
            where = "is" if out == inp else "is inside"
            raise ConfigError(
                f"output_dir={out_dir} {where} {what} {folder}: predictions would be written into the data set; "
                "choose a folder outside it"
            )


def trainer_options(cfg: DictConfig | dict) -> dict:
    device = str(cfg.get("device", "auto"))
    devices = cfg.get("devices", 1)
    if device == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    elif device.startswith("cuda"):
        accelerator = "gpu"
        if ":" in device:
            devices = [int(device.split(":")[1])]
    else:
        accelerator = "cpu"
    nodes = int(cfg.get("num_nodes", 1))
    strategy = "ddp" if (isinstance(devices, int) and devices > 1) or devices == -1 or nodes > 1 else "auto"
    return {"accelerator": accelerator, "devices": devices, "num_nodes": nodes, "strategy": strategy}


def _auto_or_bool(cfg: DictConfig | dict, key: str) -> str | bool:
    """Option ``key``: ``"auto"`` (the default), ``True`` or ``False``.

    Raises:
        ConfigError: any other value.
    """
    setting = cfg.get(key, "auto")
    if setting in ("auto", True, False, None, "true", "false"):
        return setting if setting == "auto" else setting in (True, "true")
    raise ConfigError(f"{key} must be auto, true or false, got {setting!r}")


def flips_option(cfg: DictConfig | dict) -> list[str] | None:
    """The test-time flips asked for: ``None`` for ``tta=auto`` (those the checkpoint was tuned with)."""
    setting = _auto_or_bool(cfg, "tta")
    if setting == "auto":
        return None
    return list(cfg.get("tta_flips") or ["lr"]) if setting else []


def cleanup_option(cfg: DictConfig | dict, model: SegmentationModule) -> dict | None:
    """The clean-up to apply: ``auto`` = what the model was trained and tested with (in its checkpoint)."""
    setting = _auto_or_bool(cfg, "postprocess")
    if setting == "auto":
        return dict(model.postprocess) if model.postprocess else None
    if not setting:
        return None
    options = cfg.get("postprocess_options") or {}
    options = OmegaConf.to_container(options) if isinstance(options, DictConfig) else dict(options)
    return validate(PostprocessOptions, options, "postprocess_options", ConfigError).model_dump()
