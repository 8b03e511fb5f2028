"""Which Weights & Biases run a job writes to: resumes continue their run, multiruns and cross-validations group.

* **Resume**: :class:`WandbRunId` keeps the W&B run's id (and group) in every checkpoint, so that a run
  resumed with ``ckpt_path=<run>/checkpoints/last.ckpt`` continues the same W&B run
  (:func:`wandb_init_args`), even into a new run folder. Offline, each part of the run is its own
  ``wandb/offline-run-*`` folder with the same id; ``wandb sync`` uploads the parts of one run in order.
* **Groups** (``logger.wandb.group: null``, :func:`automatic_group`): a single run's group is its
  ``task_name``; the jobs of a multirun share the sweep's group (``<task_name>/<sweep folder>``), each
  job named by its overrides. A cross-validation is one group of its own (:func:`fold_runs`,
  :func:`log_cross_validation`).

Nothing read from a checkpoint is imported or called: the id and the group are plain strings, checked
(:func:`valid_run_id`, :func:`valid_group`) before use.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import Callback

__all__ = [
    "WandbRunId",
    "valid_run_id",
    "valid_group",
    "is_wandb_logger",
    "wandb_run_in_checkpoint",
    "automatic_group",
    "wandb_init_args",
    "plain_config",
    "cross_validation_group",
    "fold_runs",
    "log_cross_validation",
    "CV_RUN_ID_FILE",
]

log = logging.getLogger("brats_lightning")

_RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: W&B's longest group name
_GROUP_CHARS = 128
#: the cross-validation run's id, in ``<run>/wandb/`` (a rerun in place updates the same summary run)
CV_RUN_ID_FILE = "cross_validation_run_id.txt"
#: seconds between writes of a run's data to its ``.wandb`` file (W&B's default: 15), so that a killed offline
#: run keeps its history up to about its last checkpoint (``WANDB__TRANSACTION_LOG_FLUSH_INTERVAL`` overrides)
FLUSH_INTERVAL_S = 1.0
_FLUSH_SETTING = "x_transaction_log_flush_interval"


def valid_run_id(value: object) -> str | None:
    """``value`` when it is a W&B run id of safe characters (letters, digits, ``_``, ``-``; at most 64), else None."""
    return value if isinstance(value, str) and _RUN_ID.fullmatch(value) else None


def valid_group(value: object) -> str | None:
    """``value`` when it is a printable group name of at most 128 characters, else None."""
    if isinstance(value, str) and 0 < len(value) <= _GROUP_CHARS and value.isprintable():
        return value
    return None


def _cap(group: str) -> str:
    """A group name W&B accepts: its last 128 characters (the sweep's and job's names are at the end)."""
    return group[-_GROUP_CHARS:]


def is_wandb_logger(node: Any) -> bool:
    """Whether a logger config node builds Lightning's ``WandbLogger``."""
    return isinstance(node, DictConfig) and str(node.get("_target_", "")).rsplit(".", 1)[-1] == "WandbLogger"


def _wandb_logger(trainer: pl.Trainer) -> Any | None:
    from pytorch_lightning.loggers import WandbLogger

    return next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)


class WandbRunId(Callback):
    """Keeps the W&B run's id and group in the checkpoint (``callbacks["WandbRunId"]``).

    Without a W&B logger it keeps what the resumed checkpoint held (nothing for a new run), so that a
    later resume with W&B still finds the run.
    """

    def __init__(self) -> None:
        self.run_id: str | None = None
        self.group: str | None = None
        self._logger: Any | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._logger = _wandb_logger(trainer)

    def state_dict(self) -> dict[str, Any]:
        if self._logger is not None and self._logger.version:
            self.run_id = valid_run_id(self._logger.version)
            run = getattr(self._logger, "_experiment", None)  # the live run, on rank 0 once created
            self.group = valid_group(getattr(run, "group", None)) or self.group
        return {"run_id": self.run_id, "group": self.group} if self.run_id else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.run_id = valid_run_id(state_dict.get("run_id"))
        self.group = valid_group(state_dict.get("group"))


def wandb_run_in_checkpoint(path: str | Path) -> tuple[str | None, str | None]:
    """The W&B run id and group that :class:`WandbRunId` stored in a checkpoint (``None`` where absent or invalid)."""
    from brats_lightning.files import read_checkpoint

    callbacks = read_checkpoint(path).get("callbacks")
    state = callbacks.get(WandbRunId.__qualname__) if isinstance(callbacks, dict) else None
    if not isinstance(state, dict):
        return None, None
    run_id, group = valid_run_id(state.get("run_id")), valid_group(state.get("group"))
    if state.get("run_id") is not None and run_id is None:
        shown = repr(state.get("run_id"))[:40]
        log.warning("%s: its W&B run id %s is not a plain id; training continues in a new W&B run", path, shown)
    return run_id, group


def _sweep_dir() -> str | None:
    """The multirun's sweep folder inside a multirun job, else None."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra = HydraConfig.get()
        return str(hydra.sweep.dir) if hydra.mode == RunMode.MULTIRUN else None
    except (ValueError, AttributeError, KeyError):
        return None


def automatic_group(cfg: DictConfig) -> str:
    """The W&B group of a run whose ``logger.wandb.group`` is null: ``<task_name>/<sweep folder>`` for the
    jobs of a multirun (one group per sweep), else ``task_name``."""
    task = str(cfg.get("task_name") or "train")
    sweep = _sweep_dir()
    return _cap(f"{task}/{Path(sweep).name}") if sweep else task


def _flush_settings() -> dict[str, Any]:
    """``wandb.init`` settings that write the run's file every :data:`FLUSH_INTERVAL_S` (when this W&B has the
    setting and the environment does not set it)."""
    import wandb

    if f"WANDB__{_FLUSH_SETTING[2:].upper()}" in os.environ or _FLUSH_SETTING not in getattr(
        wandb.Settings, "model_fields", {}
    ):
        return {}
    return {"settings": {_FLUSH_SETTING: FLUSH_INTERVAL_S}}


def wandb_init_args(cfg: DictConfig, node: DictConfig) -> dict[str, Any]:
    """Keyword arguments for a ``WandbLogger`` config node beyond the node's own: the automatic group, the run
    to continue (``id=..., resume="allow"``) when training resumes from a checkpoint that names one, and a
    write of the run's file every :data:`FLUSH_INTERVAL_S` (W&B keeps 15 s of data in memory, which a killed
    offline run would lose).

    An id, group or settings set in the node win. With ``log_model`` on an offline run, the run is W&B's offline
    mode rather than Lightning's ``offline`` flag (which refuses model artifacts): they are recorded locally.
    """
    ckpt = cfg.get("ckpt_path") if cfg.get("train", True) else None
    run_id, group = wandb_run_in_checkpoint(ckpt) if ckpt else (None, None)
    args: dict[str, Any] = {} if node.get("settings") is not None else _flush_settings()
    if node.get("group") is None:
        args["group"] = group or automatic_group(cfg)
    if run_id and node.get("id") is None and node.get("version") is None:
        log.info("W&B: continuing run %s (from %s)", run_id, ckpt)
        args.update(id=run_id, resume="allow")
    elif ckpt:
        log.info("W&B: %s names no W&B run; training continues in a new one", ckpt)
    if node.get("log_model") and node.get("offline"):
        # Lightning refuses log_model with its offline flag; W&B's own offline mode records the model artifacts in
        # the offline run, and wandb sync uploads them with it
        args.update(offline=False, mode="offline")
    return args


def plain_config(cfg: DictConfig) -> dict[str, Any]:
    """The run's config as plain values (resolved, without Hydra's node), as the loggers record it."""
    return {
        str(k): OmegaConf.to_container(v, resolve=True) if isinstance(v, DictConfig) else v
        for k, v in cfg.items()
        if k != "hydra"
    }


def _wandb_keys(cfg: DictConfig) -> list[str]:
    node = cfg.get("logger")
    return [str(k) for k, v in node.items() if is_wandb_logger(v)] if isinstance(node, DictConfig) else []


def cross_validation_group(cfg: DictConfig, key: str = "wandb") -> str:
    """The W&B group of a cross-validation's runs: ``logger.<key>.group`` when set, else the automatic
    group followed by the run folder's name (one group per cross-validation)."""
    group = OmegaConf.select(cfg, f"logger.{key}.group")
    if group is not None:
        return str(group)
    return _cap(f"{automatic_group(cfg)}/{Path(str(cfg.paths.output_dir)).name}")


def fold_runs(cfg: DictConfig, train: Callable[[DictConfig], dict]) -> Callable[[DictConfig], dict]:
    """``train`` for the folds of the cross-validation ``cfg``: each fold's W&B run joins the cross-validation's
    group (:func:`cross_validation_group`), named ``<run name>/fold_<k>``, job type ``fold``."""
    keys = _wandb_keys(cfg)
    if not keys:
        return train
    names = {k: str(OmegaConf.select(cfg, f"logger.{k}.name") or cfg.get("task_name")) for k in keys}
    groups = {k: cross_validation_group(cfg, k) for k in keys}

    def train_fold(fold_cfg: DictConfig) -> dict:
        with open_dict(fold_cfg):
            for k in keys:
                node = fold_cfg.logger[k]
                node.group, node.job_type = groups[k], "fold"
                node.name = f"{names[k]}/fold_{fold_cfg.data.fold}"
        return train(fold_cfg)

    return train_fold


def log_cross_validation(cfg: DictConfig, figures: dict[str, float]) -> str | None:
    """Write a cross-validation's figures (its ``metrics.json``: ``cv/...``, ``test/...``, times) as the summary
    of one W&B run for the whole cross-validation.

    The fold runs (:func:`fold_runs`) hold each fold's training curves; this run, in the same group with job
    type ``cross-validation`` and named as the run, holds the run's config and, as its summary, the figures
    that describe the cross-validation as a whole: in the dashboard's runs table the cross-validation is the
    one row with ``cv/dice_mean``, comparable with other cross-validations, and its group opens onto the
    folds. A rerun in place updates the same run (its id is kept in ``<run>/wandb/``).

    Returns:
        The W&B run's id (None without a W&B logger).
    """
    keys = _wandb_keys(cfg)
    if not keys:
        return None
    import wandb
    from hydra.utils import instantiate

    from brats_lightning.files import write_text_atomic

    key = keys[0]
    id_file = Path(str(cfg.paths.output_dir)) / "wandb" / CV_RUN_ID_FILE
    kept = valid_run_id(id_file.read_text().strip()) if id_file.is_file() else None
    extra: dict[str, Any] = {"group": cross_validation_group(cfg, key), "job_type": "cross-validation"}
    if kept:
        extra.update(id=kept, resume="allow")
    logger = instantiate(cfg.logger[key], _convert_="all", **extra)
    try:
        logger.log_hyperparams(plain_config(cfg))
        run = logger.experiment
        run.summary.update(figures)
        run_id = valid_run_id(run.id)
        if run_id:
            id_file.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(id_file, run_id + "\n")
    finally:
        wandb.finish()
    return run_id
