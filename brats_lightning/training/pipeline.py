"""Multi-stage experiments in one command: each stage is a full training run whose checkpoint feeds the next.

An experiment config declares ``pipeline``::

    pipeline:
      args: [cascade]                  # experiment-level keys, not passed on to the stages
      overrides: [data.patches_per_epoch=12800]   # applied to every stage
      stages:
        - name: twopath
          overrides: [model=twopath]
        - name: cascade
          overrides: ["model=${cascade}"]
          inputs: {model.first_stage_ckpt: twopath}   # config key <- best checkpoint of a stage

Every stage is composed afresh from ``conf/train.yaml`` with the pipeline's overrides, its own, and
the command line's (minus the pipeline's own ``args``; they come last and win) and ``pipeline=null``, then
trained and tested into ``<run dir>/<stage name>/``. The run's ``metrics.json`` is the last stage's;
``pipeline.json`` lists every stage, its folder, best checkpoint and test metrics.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from brats_lightning.files import write_text_atomic

__all__ = ["run_pipeline", "stage_overrides"]

log = logging.getLogger("brats_lightning")


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def stage_overrides(cli: Sequence[str], args: Sequence[str]) -> list[str]:
    """Command-line overrides that every stage inherits (not ``hydra.*``, ``pipeline.*``, nor the pipeline's args).

    ``experiment=...`` is kept, so that the experiment's settings apply to the stages too; the
    stages then run with ``pipeline=null``.
    """
    drop = set(args)
    return [o for o in cli if _key(o) not in drop and not _key(o).startswith(("hydra.", "pipeline"))]


def _compose(overrides: list[str], output_dir: Path) -> DictConfig:
    from hydra import compose
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():  # inside a running Hydra job
        cfg = compose(config_name="train", overrides=overrides)
        OmegaConf.set_struct(cfg, False)
        cfg.paths.output_dir = str(output_dir)
        OmegaConf.set_struct(cfg, True)
        return cfg
    from brats_lightning.config import compose as compose_cfg

    return compose_cfg(overrides, output_dir=str(output_dir))


def run_pipeline(
    cfg: DictConfig, train: Callable[[DictConfig], dict], cli_overrides: Sequence[str] | None = None
) -> dict:
    """Run the stages of ``cfg.pipeline`` in order; returns the last stage's test metrics.

    Args:
        cfg: the composed experiment config.
        train: runs one stage's config and returns its results with ``best_ckpt``
            (:func:`brats_lightning.training.train.train`, which calls this module: it is passed in, not imported).
        cli_overrides: the command line's overrides (default: read from the running Hydra job).
    """
    if cli_overrides is None:
        from hydra.core.hydra_config import HydraConfig

        cli_overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    pipe = cfg.pipeline
    base = stage_overrides(cli_overrides, list(pipe.get("args", [])))
    common = list(pipe.get("overrides", []))
    out_dir = Path(cfg.paths.output_dir)
    done: dict[str, dict] = {}
    results: dict = {}
    for stage in pipe.stages:
        name = str(stage.name)
        # the command line comes last, so that the user's values win over the experiment's
        overrides = [*common, *map(str, stage.get("overrides", [])), *base, "pipeline=null"]
        for key, source in (stage.get("inputs") or {}).items():
            if source not in done or not done[source].get("best_ckpt"):
                raise ValueError(f"stage {name!r} needs the checkpoint of stage {source!r}, which did not produce one")
            overrides.append(f"{key}={done[source]['best_ckpt']}")
        log.info("Pipeline stage %s: %s", name, " ".join(overrides))
        stage_cfg = _compose(overrides, out_dir / name)
        results = train(stage_cfg)
        done[name] = {"dir": str(out_dir / name), "overrides": overrides, **results}
        write_text_atomic(out_dir / "pipeline.json", json.dumps(done, indent=2, default=str) + "\n")
    metrics = {k: v for k, v in results.items() if k.startswith("test/")}
    write_text_atomic(out_dir / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return results
