"""The ensemble of a setting's folds, scored on the held-out cases the folds were scored on; the data module of
a job rebuilt from its ``.hydra/config.yaml`` as validated data.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from brats_lightning.config import register_resolvers
from brats_lightning.errors import ConfigError, UserError
from brats_lightning.evaluation.results import run_metrics, summarise
from brats_lightning.report.runs import Run
from brats_lightning.schema import check_no_targets, read_yaml

if TYPE_CHECKING:
    from brats_lightning.data.datamodule import BratsDataModule

__all__ = ["ensemble_of_folds", "job_datamodule"]

log = logging.getLogger("brats_lightning.report")


def ensemble_of_folds(group: list[Run], cache_dir: Path) -> tuple[dict[str, float] | None, str]:
    """The test metrics of the folds' ensemble (their best checkpoints' probabilities averaged), on the
    test cases the folds were scored on, with the same data module and metrics as their own test.

    Returns:
        The flat test metrics (``test/dice_wt`` ...), or ``None`` with the reason when it cannot be
        computed (fewer than two folds, no held-out test cases, a multi-stage job, missing files).

    Args:
        group: the folds of one setting.
        cache_dir: where the test cases are prepared (inside the report's folder: :func:`job_datamodule`).
    """
    # torch and Lightning only when an ensemble is scored: the report command starts without them
    import pytorch_lightning as pl
    import torch

    from brats_lightning.load import find_checkpoints, load_predictor
    from brats_lightning.precision import inference_dtype

    if len(group) < 2:
        return None, "one fold"
    if any((g.folder / "pipeline.json").is_file() for g in group):
        return None, "multi-stage jobs (predict with their checkpoints instead)"
    try:
        paths = [find_checkpoints(g.folder)[0] for g in group]
        dm = job_datamodule(group[0].folder, cache_dir)
        dm.prepare_data()
        dm.setup("test")
        if not dm.test_cases:
            return None, "no held-out test cases (data.test_fraction=0: each fold is scored on its own validation fold)"
        ensemble, _ = load_predictor(paths, flips=[])  # the members must share their data (else: an error)
    except (UserError, OSError) as e:
        log.warning("No ensemble of the folds of %s: %s", group[0].setting, e)
        return None, str(e)
    bf16 = inference_dtype("auto", "cpu") == torch.bfloat16  # as the folds' own test (precision auto)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        precision="bf16-mixed" if bf16 else "32-true",
    )
    trainer.test(ensemble, datamodule=dm, verbose=False)
    return run_metrics(summarise(ensemble.test_results)), f"{len(paths)} folds on {len(dm.test_cases)} test cases"


def job_datamodule(job: str | Path, cache_dir: str | Path | None = None) -> BratsDataModule:
    """The data module a job trained on, rebuilt from its ``.hydra/config.yaml`` as data.

    The ``data`` node is read as plain values (OmegaConf resolves its interpolations with the
    registered resolvers, none of which runs code), its ``_target_`` must name brats_lightning's
    :class:`~brats_lightning.data.datamodule.BratsDataModule`, no value may name another callable,
    and every option is type- and range-checked (:class:`~brats_lightning.data.options.DataOptions`);
    the class is then called directly, never through ``hydra.utils.instantiate``. The folders the file names for
    writing (``cache_dir``; a ``split_file`` outside the job's folder) are not used: the data are prepared into
    ``cache_dir``, a folder the caller chose (the report's own), so that a shared results folder writes nothing
    outside the folder its user asked for.

    Raises:
        ConfigError: the file is unreadable, names another callable, or has an option of the wrong
            type or range; the message names the file and the option.
    """
    from brats_lightning.data.datamodule import BratsDataModule
    from brats_lightning.data.options import DataOptions

    register_resolvers()
    cfg_file = Path(job) / ".hydra" / "config.yaml"
    plain = read_yaml(cfg_file, "run config")  # bounded: size, nesting, no aliases (a billion laughs is refused)
    if not isinstance(plain, dict):
        raise ConfigError(f"{cfg_file}: not a usable run config (not a mapping)")
    try:
        cfg = OmegaConf.create(plain)
        data = OmegaConf.to_container(cfg.data, resolve=True) if "data" in cfg else None
    except (OSError, yaml.YAMLError, OmegaConfBaseException, ValueError, RecursionError) as e:
        why = f"{type(e).__name__}: {str(e).splitlines()[0]}"
        raise ConfigError(f"{cfg_file}: not a usable run config ({why})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{cfg_file}: no data options (data: ...) in this run config")
    target = data.get("_target_")
    expected = f"{BratsDataModule.__module__}.{BratsDataModule.__qualname__}"
    if target != expected:
        raise ConfigError(
            f"{cfg_file}: data._target_ names {target!r:.80}: only {expected} is rebuilt from a results folder; "
            "nothing else it names is called"
        )
    check_no_targets({k: v for k, v in data.items() if k != "_target_"}, cfg_file, "data")
    options = DataOptions.of({str(k): v for k, v in data.items() if k != "_target_"}, f"{cfg_file} (data)")
    split = None if options.split_file is None else Path(job) / options.split_file
    if split is not None and not split.resolve().is_relative_to(Path(job).resolve()):
        log.warning("%s: data.split_file=%s is outside the job's folder; the split is made again", cfg_file, split)
        split = None
    own = {"cache_dir": str(cache_dir if cache_dir is not None else Path(job) / "report_cache")}
    return BratsDataModule(options.model_copy(update={**own, "split_file": None if split is None else str(split)}))
