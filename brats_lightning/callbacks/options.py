"""The Lightning side of the command schema (:mod:`brats_lightning.options`): the ``Trainer``'s options the configs use
and users set (``trainer.*``), and the callbacks and loggers as a closed list of classes (``_target_``), each with
its own keys, types and ranges. A callback class of the user's own config is checked by its constructor
(:func:`brats_lightning.options.check_config`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StrictBool, model_validator

from brats_lightning.schema import Int, Number, Strict

__all__ = ["Callback", "Logger", "Monitor", "TrainerOptions", "target_field"]

PathStr = Annotated[str, Field(min_length=1, max_length=4096)]
Text = Annotated[str, Field(max_length=256)]


def target_field() -> Any:
    """The ``_target_`` field: a class from the closed list its ``Literal`` names (never an arbitrary callable)."""
    return Field(alias="_target_")


# ---------------------------------------------------------------------------------------------------- the trainer
Batches = Annotated[Int, Field(ge=0, le=10_000_000)] | Annotated[Number, Field(ge=0, le=1)]


class Profiler(Strict):
    """``trainer.profiler`` as a class (``conf/debug/profiler.yaml``)."""

    target: Literal[
        "pytorch_lightning.profilers.SimpleProfiler",
        "pytorch_lightning.profilers.AdvancedProfiler",
        "pytorch_lightning.profilers.PyTorchProfiler",
    ] = target_field()
    dirpath: PathStr | None = None
    filename: Text | None = None


class MaxTime(Strict):
    """``trainer.max_time`` as a duration (``experiment=real_fast``: ``{seconds: ...}``)."""

    days: Annotated[Number, Field(ge=0, le=365)] = 0
    hours: Annotated[Number, Field(ge=0, le=10_000)] = 0
    minutes: Annotated[Number, Field(ge=0, le=1_000_000)] = 0
    seconds: Annotated[Number, Field(ge=0, le=100_000_000)] = 0


class TrainerOptions(Strict):
    """``trainer.*``: the Lightning ``Trainer`` options the configs use and users set (``conf/trainer/``)."""

    target: Literal["pytorch_lightning.Trainer"] = target_field()
    accelerator: Literal["cpu", "gpu", "cuda", "mps", "auto"] = "auto"
    strategy: Literal["auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true", "ddp_notebook", "fsdp"] = "auto"
    devices: (
        Annotated[Int, Field(ge=-1, le=1024)]
        | Annotated[list[Annotated[Int, Field(ge=0, le=1024)]], Field(strict=False, max_length=1024)]
        | Literal["auto"]
    ) = "auto"
    num_nodes: Annotated[Int, Field(ge=1, le=10_000)] = 1
    precision: (
        Literal["32", "32-true", "16-mixed", "bf16-mixed", "bf16-true", "16-true", "64", "64-true"]
        | Literal[16, 32, 64]
    ) = "32-true"
    fast_dev_run: StrictBool | Annotated[Int, Field(ge=0, le=10_000)] = False
    max_epochs: Annotated[Int, Field(ge=-1, le=1_000_000)] | None = None
    min_epochs: Annotated[Int, Field(ge=0, le=1_000_000)] | None = None
    max_steps: Annotated[Int, Field(ge=-1, le=1_000_000_000)] = -1
    min_steps: Annotated[Int, Field(ge=0, le=1_000_000_000)] | None = None
    max_time: MaxTime | Annotated[str, Field(pattern=r"^\d{1,3}:\d{2}:\d{2}:\d{2}$")] | None = None
    limit_train_batches: Batches | None = None
    limit_val_batches: Batches | None = None
    limit_test_batches: Batches | None = None
    limit_predict_batches: Batches | None = None
    overfit_batches: Batches = 0
    val_check_interval: Batches | None = None
    check_val_every_n_epoch: Annotated[Int, Field(ge=1, le=1_000_000)] | None = 1
    num_sanity_val_steps: Annotated[Int, Field(ge=-1, le=1_000_000)] = 2
    log_every_n_steps: Annotated[Int, Field(ge=1, le=1_000_000)] = 50
    enable_checkpointing: StrictBool = True
    enable_progress_bar: StrictBool = True
    enable_model_summary: StrictBool = True
    accumulate_grad_batches: Annotated[Int, Field(ge=1, le=100_000)] = 1
    gradient_clip_val: Annotated[Number, Field(ge=0, le=1e6)] | None = None
    gradient_clip_algorithm: Literal["norm", "value"] | None = None
    deterministic: StrictBool | Literal["warn"] | None = None
    benchmark: StrictBool | None = None
    inference_mode: StrictBool = True
    use_distributed_sampler: StrictBool = True
    profiler: Profiler | Literal["simple", "advanced", "pytorch"] | None = None
    detect_anomaly: StrictBool = False
    barebones: StrictBool = False
    sync_batchnorm: StrictBool = False
    reload_dataloaders_every_n_epochs: Annotated[Int, Field(ge=0, le=1_000_000)] = 0
    default_root_dir: PathStr | None = None


# ---------------------------------------------------------------------------------------------------- callbacks
Monitor = Annotated[str, Field(min_length=1, max_length=128)]


class CheckpointCallback(Strict):
    """Lightning's ``ModelCheckpoint`` and ours (:mod:`brats_lightning.callbacks.checkpoint`)."""

    target: Literal[
        "pytorch_lightning.callbacks.ModelCheckpoint",
        "brats_lightning.callbacks.checkpoint.RunCheckpoint",
        "brats_lightning.callbacks.checkpoint.BestCheckpoint",
        "brats_lightning.callbacks.checkpoint.PhaseCheckpoint",
    ] = target_field()
    phase: Literal[1, 2] | None = None
    dirpath: PathStr | None = None
    filename: Text | None = None
    monitor: Monitor | None = None
    mode: Literal["min", "max"] = "min"
    verbose: StrictBool = False
    save_last: StrictBool | Literal["link"] | None = None
    save_top_k: Annotated[Int, Field(ge=-1, le=1000)] = 1
    save_weights_only: StrictBool = False
    save_on_train_epoch_end: StrictBool | None = None
    save_on_exception: StrictBool = False
    enable_version_counter: StrictBool = True
    auto_insert_metric_name: StrictBool = True
    every_n_epochs: Annotated[Int, Field(ge=0, le=1_000_000)] | None = None
    every_n_train_steps: Annotated[Int, Field(ge=0, le=1_000_000_000)] | None = None

    @model_validator(mode="after")
    def _phase(self) -> CheckpointCallback:
        if (self.phase is not None) != self.target.endswith("PhaseCheckpoint"):
            raise ValueError("phase is PhaseCheckpoint's option (1 or 2), and only its")
        return self


class EarlyStoppingCallback(Strict):
    """Lightning's ``EarlyStopping`` (``callbacks=early_stopping``)."""

    target: Literal["pytorch_lightning.callbacks.EarlyStopping"] = target_field()
    monitor: Monitor
    mode: Literal["min", "max"] = "min"
    patience: Annotated[Int, Field(ge=0, le=100_000)] = 3
    min_delta: Annotated[Number, Field(ge=-1e6, le=1e6)] = 0.0
    verbose: StrictBool = False
    strict: StrictBool = True
    check_finite: StrictBool = True
    stopping_threshold: Annotated[Number, Field(ge=-1e12, le=1e12)] | None = None
    divergence_threshold: Annotated[Number, Field(ge=-1e12, le=1e12)] | None = None
    check_on_train_epoch_end: StrictBool | None = None
    log_rank_zero_only: StrictBool = False


class EMACallback(Strict):
    """Lightning's ``EMAWeightAveraging`` (``callbacks.ema``)."""

    target: Literal["pytorch_lightning.callbacks.EMAWeightAveraging"] = target_field()
    decay: Annotated[Number, Field(gt=0, lt=1)] = 0.999
    update_every_n_steps: Annotated[Int, Field(ge=1, le=1_000_000)] = 1
    update_starting_at_step: Annotated[Int, Field(ge=0, le=1_000_000_000)] | None = None
    update_starting_at_epoch: Annotated[Int, Field(ge=0, le=1_000_000)] | None = None
    use_buffers: StrictBool = True


class BudgetScheduleCallback(Strict):
    """:class:`~brats_lightning.callbacks.budget.BudgetSchedule` (``experiment=real_fast``)."""

    target: Literal["brats_lightning.callbacks.budget.BudgetSchedule"] = target_field()
    warmup: Annotated[Number, Field(ge=0, lt=1)] = 0.02
    floor: Annotated[Number, Field(ge=0, le=1)] = 0.01


class TwoPhaseCallback(Strict):
    """:class:`~brats_lightning.callbacks.two_phase.TwoPhaseTraining` (Havaei et al. Sec. 3.3.2)."""

    target: Literal["brats_lightning.callbacks.two_phase.TwoPhaseTraining"] = target_field()
    phase1_epochs: Annotated[Int, Field(ge=1, le=1_000_000)] | None = None
    phase2_epochs: Annotated[Int, Field(ge=1, le=1_000_000)] = 1
    patience: Annotated[Int, Field(ge=0, le=100_000)] | None = None
    monitor: Monitor = "val/dice_mean"
    mode: Literal["min", "max"] = "max"


class TunePostprocessCallback(Strict):
    """:class:`~brats_lightning.callbacks.postprocess.TunePostprocess` (``callbacks=tuned``)."""

    target: Literal["brats_lightning.callbacks.postprocess.TunePostprocess"] = target_field()
    min_volumes_mm3: Annotated[list[Annotated[Number, Field(gt=0, le=1e7)]], Field(strict=False, max_length=64)] = [
        100.0
    ]
    largest_only: StrictBool = True
    tolerance: Annotated[Number, Field(ge=0, le=1)] = 0.002
    tta_flips: Annotated[list[Literal["lr", "ap"]], Field(strict=False, max_length=2)] = ["lr"]
    tta_min_gain: Annotated[Number, Field(ge=0, le=1)] = 0.005
    max_cases: Annotated[Int, Field(ge=1, le=1_000_000)] | None = 50


class WandbMediaCallback(Strict):
    """:class:`~brats_lightning.callbacks.wandb_media.WandbTestMedia`."""

    target: Literal["brats_lightning.callbacks.wandb_media.WandbTestMedia"] = target_field()
    max_images: Annotated[Int, Field(ge=0, le=1000)] = 8


Callback = Annotated[
    CheckpointCallback
    | EarlyStoppingCallback
    | EMACallback
    | BudgetScheduleCallback
    | TwoPhaseCallback
    | TunePostprocessCallback
    | WandbMediaCallback,
    Field(discriminator="target"),
]


# ---------------------------------------------------------------------------------------------------- loggers
class CSVLoggerOptions(Strict):
    """Lightning's ``CSVLogger`` (``logger=csv``)."""

    target: Literal["pytorch_lightning.loggers.CSVLogger"] = target_field()
    save_dir: PathStr
    name: Text | None = "lightning_logs"
    version: Text | Annotated[Int, Field(ge=0)] | None = None
    prefix: Text = ""
    flush_logs_every_n_steps: Annotated[Int, Field(ge=1, le=1_000_000)] = 100


class TensorBoardLoggerOptions(Strict):
    """Lightning's ``TensorBoardLogger`` (``logger=tensorboard``)."""

    target: Literal["pytorch_lightning.loggers.TensorBoardLogger"] = target_field()
    save_dir: PathStr
    name: Text | None = "lightning_logs"
    version: Text | Annotated[Int, Field(ge=0)] | None = None
    default_hp_metric: StrictBool = True
    log_graph: StrictBool = False
    prefix: Text = ""
    sub_dir: PathStr | None = None


class WandbLoggerOptions(Strict):
    """Lightning's ``WandbLogger`` (``logger=wandb``; offline unless an API key is configured)."""

    target: Literal["pytorch_lightning.loggers.WandbLogger"] = target_field()
    project: Text | None = None
    entity: Text | None = None
    name: Text | None = None
    group: Text | None = None
    job_type: Text | None = None
    save_dir: PathStr = "."
    offline: StrictBool = False
    log_model: StrictBool | Literal["all"] = False
    tags: Annotated[list[Text], Field(strict=False, max_length=64)] | None = None
    notes: Annotated[str, Field(max_length=4096)] | None = None
    id: Text | None = None
    version: Text | None = None
    prefix: Text = ""
    mode: Literal["online", "offline", "disabled"] | None = None


class MLFlowLoggerOptions(Strict):
    """Lightning's ``MLFlowLogger`` (``logger=mlflow``: a local SQLite store)."""

    target: Literal["pytorch_lightning.loggers.MLFlowLogger"] = target_field()
    experiment_name: Text = "lightning_logs"
    run_name: Text | None = None
    tracking_uri: Annotated[str, Field(max_length=4096)] | None = None
    tags: dict[Text, Annotated[str, Field(max_length=4096)]] | None = None
    save_dir: PathStr | None = None
    log_model: StrictBool | Literal["all"] = False
    prefix: Text = ""
    artifact_location: PathStr | None = None
    run_id: Text | None = None
    synchronous: StrictBool | None = None


Logger = Annotated[
    CSVLoggerOptions | TensorBoardLoggerOptions | WandbLoggerOptions | MLFlowLoggerOptions,
    Field(discriminator="target"),
]
