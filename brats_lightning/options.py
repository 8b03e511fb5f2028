"""One schema for every command's options, checked before any work.

Every command's composed config (``train``, ``crossval`` and ``prepare`` share ``conf/train.yaml``; ``predict``,
``evaluate``, ``export``; the folder-reading ``report`` and ``sweep`` take argparse options) is checked against one
pydantic schema here (:data:`SCHEMAS`): every key declared with its type and range, unknown keys refused, and the
first problem one line naming the option (``model.width: Input should be greater than 0 (got 0)``), exit status 2.
The parts are the schemas the code that reads them already has (:class:`~brats_lightning.data.options.DataOptions`,
:class:`~brats_lightning.modules.options.FCNOptions`, :class:`~brats_lightning.crossval.options.CVConfig`, ...), so
that a checkpoint's stored hyper-parameters, a results folder's config and the command line are checked the same
way. Callbacks, loggers and profilers are a closed list of classes (``_target_``), each with its own keys.
:func:`check_choices` checks the config-group choices of a command line (``model=bogus``) before Hydra composes.
"""

from __future__ import annotations

import argparse
import functools
import sys
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn, TypeVar

import hydra
from omegaconf import DictConfig, OmegaConf
from pydantic import Field, StrictBool, model_validator

from brats_lightning.callbacks.options import Callback, Logger, Monitor, TrainerOptions, target_field
from brats_lightning.config import config_dir
from brats_lightning.crossval.options import CVConfig
from brats_lightning.data.options import DataOptions, Files
from brats_lightning.errors import ConfigError, cli
from brats_lightning.inference.cleanup import PostprocessOptions
from brats_lightning.modules.options import FCNOptions, PatchOptions
from brats_lightning.schema import Int, Number, Strict, validate

__all__ = ["SCHEMAS", "ArgumentParser", "check_choices", "check_config", "command", "config_groups"]

T = TypeVar("T")

PathStr = Annotated[str, Field(min_length=1, max_length=4096)]
Text = Annotated[str, Field(max_length=256)]
Minutes = Annotated[Number, Field(gt=0, le=100_000)]


# ---------------------------------------------------------------------------------------------------- run basics
class Paths(Strict):
    """``paths.*`` (``conf/paths/default.yaml``)."""

    root_dir: PathStr
    data_dir: PathStr
    cache_dir: PathStr
    log_dir: PathStr
    output_dir: PathStr | None = None  # ${hydra:runtime.output_dir}: unset outside a Hydra run


class Extras(Strict):
    """``extras.*``: the template's conveniences (:func:`brats_lightning.config.apply_extras`)."""

    print_config: StrictBool = True
    enforce_tags: StrictBool = False
    ignore_warnings: StrictBool = False


class Scale(Strict):
    """``scale.*``: run sizes that follow the hardware (``conf/scale/``)."""

    patches_per_epoch: Annotated[Int, Field(ge=1, le=100_000_000)]
    phase2_epochs: Annotated[Int, Field(ge=1, le=10_000)]
    real_fast_minutes: Minutes
    real_fast_reserve_minutes: Annotated[Number, Field(ge=0, le=100_000)]
    real_fast_batch_size: Annotated[Int, Field(ge=1, le=65536)]
    ema_decay: Annotated[Number, Field(gt=0, lt=1)]


# ---------------------------------------------------------------------------------------------------- model, data
class FCNModel(FCNOptions):
    """``model.*`` of Shen et al.'s FCN (``model=fcn``, ``fcn_sym``, ``fcn4``, ``fcn4_sym``)."""

    target: Literal["brats_lightning.modules.fcn.FCNModule"] = target_field()


class PatchModel(PatchOptions):
    """``model.*`` of Havaei et al.'s patch CNNs and cascades (``model=twopath``, ``input_cascade``, ...)."""

    target: Literal["brats_lightning.modules.patch.PatchCNNModule"] = target_field()


Model = Annotated[FCNModel | PatchModel, Field(discriminator="target")]


class Data(DataOptions):
    """``data.*`` (:class:`~brats_lightning.data.options.DataOptions`) with its class."""

    target: Literal["brats_lightning.data.datamodule.BratsDataModule"] = target_field()


class Stage(Strict):
    """One stage of a multi-stage experiment (:mod:`brats_lightning.training.pipeline`)."""

    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.+-]+$")]
    overrides: Annotated[list[Annotated[str, Field(max_length=1024)]], Field(strict=False, max_length=256)] = []
    inputs: dict[Text, Text] | None = None


class Pipeline(Strict):
    """``pipeline.*``: stages trained one after another (``experiment=havaei_cascade``)."""

    args: Annotated[list[Text], Field(strict=False, max_length=64)] = []
    overrides: Annotated[list[Annotated[str, Field(max_length=1024)]], Field(strict=False, max_length=256)] = []
    stages: Annotated[list[Stage], Field(strict=False, min_length=1, max_length=64)]


# ---------------------------------------------------------------------------------------------------- commands
class TrainConfig(Strict):
    """``python -m brats_lightning`` (``train``, ``crossval`` with ``experiment=real_fast``) and ``prepare``."""

    task_name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.+-]+$")]
    tags: Annotated[list[Text], Field(strict=False, max_length=64)] = []
    seed: Annotated[Int, Field(ge=0, le=2**32 - 1)] = 42
    train: StrictBool = True
    test: StrictBool = True
    ckpt_path: PathStr | None = None
    pipeline: Pipeline | None = None
    optimized_metric: Monitor = "val/best_dice_mean"
    extras: Extras = Extras()
    paths: Paths
    data: Data
    model: Model | None = None  # None: a model class of the user's own, checked by its own schema
    trainer: TrainerOptions
    callbacks: dict[Text, Callback | None] | None = None
    logger: dict[Text, Logger | None] | None = None
    scale: Scale
    # experiment=real_fast and other cross-validations
    cross_validation: StrictBool = False
    budget_minutes: Minutes | None = None
    reserve_minutes: Annotated[Number, Field(ge=0, le=100_000)] | None = None
    cv: CVConfig | None = None
    # experiment=havaei_cascade: which cascade its pipeline trains; the patches of a CPU epoch
    cascade: Literal["input_cascade", "local_cascade", "mf_cascade"] | None = None
    cpu_patches_per_epoch: Annotated[Int, Field(ge=1, le=100_000_000)] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.budget_minutes is not None and self.reserve_minutes is not None:
            if self.reserve_minutes >= self.budget_minutes:
                raise ValueError(
                    f"reserve_minutes={self.reserve_minutes} must be less than budget_minutes={self.budget_minutes}"
                )
        return self


class PredictConfig(Strict):
    """``python -m brats_lightning.predict`` (``conf/predict.yaml``)."""

    task_name: Text = "predict"
    paths: Paths | None = None
    ckpt_path: PathStr | Annotated[list[PathStr], Field(strict=False, min_length=1, max_length=256)]
    input_dir: PathStr
    output_dir: PathStr | None = None  # ${hydra:runtime.output_dir}: unset outside a Hydra run
    layout: Annotated[str, Field(min_length=1, max_length=64)] = "auto"
    files: Files | None = None
    output_convention: Annotated[str, Field(min_length=1, max_length=64)] = "auto"
    probabilities: StrictBool = False
    postprocess: StrictBool | Literal["auto"] = "auto"
    postprocess_options: PostprocessOptions = PostprocessOptions()
    tta: StrictBool | Literal["auto"] = "auto"
    tta_flips: Annotated[list[Literal["lr", "ap"]], Field(strict=False, max_length=2)] = ["lr"]
    uncertainty: StrictBool = False
    overwrite: StrictBool = False
    device: Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:[0-9]{1,3})?)$")] = "auto"
    devices: Annotated[Int, Field(ge=-1, le=1024)] = 1
    num_nodes: Annotated[Int, Field(ge=1, le=10_000)] = 1
    num_workers: Annotated[Int, Field(ge=0, le=256)] | Literal["auto"] = "auto"
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    batch_size: Annotated[Int, Field(ge=1, le=4096)] = 4


Convention = Annotated[str, Field(min_length=1, max_length=64)]


class EvaluateConfig(Strict):
    """``python -m brats_lightning.evaluate`` (``conf/evaluate.yaml``)."""

    task_name: Text = "evaluate"
    paths: Paths | None = None
    pred_dir: PathStr
    gt_dir: PathStr
    out_dir: PathStr
    pred_convention: Convention | Annotated[list[Convention], Field(strict=False, min_length=1, max_length=8)] = "auto"
    gt_convention: Convention | Annotated[list[Convention], Field(strict=False, min_length=1, max_length=8)] = "auto"
    hd95: StrictBool = True
    lesion_wise: StrictBool = True
    name: Text | None = None


class ExportConfig(Strict):
    """``python -m brats_lightning.export`` (``conf/export.yaml``)."""

    task_name: Text = "export"
    paths: Paths | None = None
    ckpt_path: PathStr
    out: PathStr
    opset: Annotated[Int, Field(ge=13, le=30)] = 18
    check: StrictBool = True


class ReportOptions(Strict):
    """``python -m brats_lightning.report MULTIRUN [--out DIR] [--no-ensemble]``."""

    multirun: PathStr
    out: PathStr | None = None
    no_ensemble: StrictBool = False


class SweepReportOptions(Strict):
    """``python -m brats_lightning.sweep FOLDER [--top K] [--study NAME] [--reestimate]``."""

    folder: PathStr
    top: Annotated[Int, Field(ge=1, le=10_000)] = 5
    study: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    reestimate: StrictBool = False


#: every command's schema, by the name ``brats-lightning`` gives it
SCHEMAS: dict[str, type[Strict]] = {
    "train": TrainConfig,
    "crossval": TrainConfig,
    "prepare": TrainConfig,
    "predict": PredictConfig,
    "evaluate": EvaluateConfig,
    "export": ExportConfig,
    "report": ReportOptions,
    "sweep": SweepReportOptions,
}


def plain(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """A composed config as plain values, interpolations resolved, ``hydra`` left out (Hydra's own, checked by it).

    Raises:
        ConfigError: an interpolation that cannot be resolved, naming it.
    """
    if not isinstance(cfg, DictConfig):  # a dict of options (from code): paths as strings
        return {k: str(v) if isinstance(v, Path) else v for k, v in cfg.items() if k != "hydra"}
    keys = [str(k) for k in cfg if k != "hydra"]
    try:
        out = OmegaConf.to_container(OmegaConf.masked_copy(cfg, keys), resolve=True, throw_on_missing=False)
    except Exception as e:  # noqa: BLE001 - OmegaConf's resolution errors have many classes; shown in one line
        from brats_lightning.errors import find_user_error

        user = find_user_error(e)
        if user is not None:
            raise user from None
        raise ConfigError(f"{getattr(e, 'full_key', '') or 'config'}: {str(e).splitlines()[0]}") from None
    assert isinstance(out, dict)
    return {str(k): v for k, v in out.items()}


def check_config(cfg: DictConfig | dict[str, Any], command: str) -> Strict:
    """``cfg`` checked against ``command``'s schema (:data:`SCHEMAS`), before any work.

    Raises:
        ConfigError: one line naming the option and the problem.
    """
    values = plain(cfg)
    missing = sorted(k for k, v in values.items() if v == "???")
    if missing:
        raise ConfigError(f"missing option: {missing[0]} must be given on the command line ({missing[0]}=...)")
    model = values.get("model")
    if SCHEMAS[command] is TrainConfig and isinstance(model, dict) and model.get("_target_") not in MODEL_TARGETS:
        _check_own_model(model)  # a model class of the user's own (CONTRIBUTING: add a model), by its schema
        values = {**values, "model": None}
    if SCHEMAS[command] is TrainConfig:
        values = {**values, "callbacks": _without_own_callbacks(values.get("callbacks"))}
    return validate(SCHEMAS[command], values, "", ConfigError, options=True)


def _without_own_callbacks(callbacks: Any) -> Any:
    """``callbacks`` without the user's own callback classes (a ``_target_`` outside :data:`Callback`'s list that names
    a Lightning ``Callback`` subclass: its constructor checks its options); the package's and Lightning's are left
    for the schema.

    Raises:
        ConfigError: a ``_target_`` that names no class, or one that is not a Lightning callback.
    """
    if not isinstance(callbacks, dict):
        return callbacks
    from hydra.utils import get_class
    from pytorch_lightning import Callback as LightningCallback

    known = {a for branch in typing.get_args(typing.get_args(Callback)[0]) for a in _targets(branch)}
    out = {}
    for name, spec in callbacks.items():
        target = spec.get("_target_") if isinstance(spec, dict) else None
        if isinstance(target, str) and target not in known:
            try:
                cls = get_class(target)
            except Exception as e:  # noqa: BLE001 - Hydra's lookup errors have several classes
                if "non-class" not in str(e):
                    why = str(e).splitlines()[0]
                    raise ConfigError(f"callbacks.{name}._target_: cannot find {target!r} ({why})") from None
                cls = None
            if not (isinstance(cls, type) and issubclass(cls, LightningCallback)):
                raise ConfigError(f"callbacks.{name}._target_: {target!r} is not a Lightning callback")
            continue
        out[name] = spec
    return out


def _targets(model: type[Strict]) -> tuple[str, ...]:
    """The ``_target_`` classes a schema's ``Literal`` allows."""
    return typing.get_args(model.model_fields["target"].annotation)


#: the package's model classes, checked by the ``Model`` union
MODEL_TARGETS = frozenset(a for branch in (FCNModel, PatchModel) for a in _targets(branch))


def _check_own_model(model: dict[str, Any]) -> None:
    """``model.*`` of a model class of the user's own config (not one read back from a file): the class must be a
    :class:`~brats_lightning.modules.segmentation.SegmentationModule` with an ``options_schema``, which checks the rest.

    Raises:
        ConfigError: naming ``model._target_`` or the option.
    """
    from hydra.utils import get_class

    from brats_lightning.modules.segmentation import SegmentationModule

    target = str(model.get("_target_"))
    try:
        cls = get_class(target)
    except Exception as e:  # noqa: BLE001 - Hydra's lookup errors have several classes; one line names the target
        raise ConfigError(f"model._target_: cannot find {target!r} ({str(e).splitlines()[0]})") from None
    if not (isinstance(cls, type) and issubclass(cls, SegmentationModule)) or cls.options_schema is None:
        raise ConfigError(
            f"model._target_: {target!r} is not a brats_lightning model (a SegmentationModule subclass with an "
            "options_schema: CONTRIBUTING, 'Add a model')"
        )
    validate(cls.options_schema, {k: v for k, v in model.items() if k != "_target_"}, "model", ConfigError, True)


def config_groups(config_dir: str | Path) -> dict[str, list[str]]:
    """The config groups of ``config_dir`` (``model``, ``experiment``, ...) and their choices."""
    root = Path(config_dir)
    return {
        d.name: sorted(p.stem for p in d.glob("*.yaml"))
        for d in sorted(root.iterdir())
        if d.is_dir() and any(d.glob("*.yaml"))
    }


def check_choices(overrides: Sequence[str], config_dir: str | Path) -> None:
    """The config-group choices of a command line (``model=fcn_sym``, ``+ablation=unet``, ``-m model=fcn,fcn4``)
    checked against the files of ``config_dir``, before Hydra composes.

    Raises:
        ConfigError: ``model=bogus: no such model; choices: average, fcn, ...``.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    groups = config_groups(config_dir)
    candidates = [o for o in overrides if "=" in o and not o.startswith("-")]  # not --cfg job, -m, ...
    try:
        parsed = OverridesParser.create().parse_overrides(candidates)
    except HydraException as e:
        raise ConfigError(f"cannot read the command line: {str(e).splitlines()[0]}") from None
    for o in parsed:
        group = o.key_or_group
        if group not in groups or o.package is not None or o.is_delete():
            continue
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
        for value in values:
            if value not in groups[group] and value != "null":
                raise ConfigError(f"{o.input_line}: no such {group} ({value!r}); choices: {', '.join(groups[group])}")


def command(config_name: str) -> Callable[[Callable[[DictConfig], T]], Callable[..., T]]:
    """A command's Hydra entry point: ``hydra.main`` on ``conf/<config_name>.yaml`` with the command line's group
    choices checked first (:func:`check_choices`) and user errors shown as one line, exit 2
    (:func:`~brats_lightning.errors.cli`). Called with a config (tests), it runs the command on it.
    """

    def decorate(task: Callable[[DictConfig], T]) -> Callable[..., T]:
        hydra_main = hydra.main(config_path=config_dir(), config_name=config_name, version_base="1.3")(cli(task))

        @functools.wraps(task)
        def main(cfg: DictConfig | None = None) -> T:
            if cfg is None:
                cli(check_choices)(sys.argv[1:], config_dir())
            return hydra_main(cfg)

        return main

    return decorate


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` whose errors are one line (a :class:`~brats_lightning.errors.ConfigError`: exit 2 through
    :func:`~brats_lightning.errors.cli`) rather than the usage text and a second line."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{self.prog}: {message} (--help lists the options)")
