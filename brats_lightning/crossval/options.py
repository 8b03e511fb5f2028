"""The options of a cross-validation (``cv.*``) and the state a killed run resumes from (``cv_state.json``)."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from omegaconf import DictConfig, OmegaConf
from pydantic import Field, StrictBool, model_validator

from brats_lightning.data.readers import MODALITIES
from brats_lightning.errors import ConfigError, UserError
from brats_lightning.files import write_text_atomic
from brats_lightning.inference.flips import tta_flips
from brats_lightning.schema import Int, Number, Strict, read_json, validate

__all__ = ["DEFAULT_INFERENCE_S", "CVConfig", "CVOptions", "CVState", "fingerprint", "fold_seconds", "training_config"]

log = logging.getLogger("brats_lightning.crossval")

#: seconds per case and pass assumed for out-of-fold inference before the first fold has measured it
#: (Shen et al.'s FCN on a BraTS brain box in bf16 on 2 CPU cores: about 5 s)
DEFAULT_INFERENCE_S = 6.0


def fold_seconds(left_s: float, folds_left: int, inference_s: float, minimum_s: float = 30.0) -> float:
    """Training seconds of the next fold: an even share of what is left, less its inference.

    Examples:
        >>> fold_seconds(3000.0, 5, 60.0)
        540.0
    """
    return max(minimum_s, left_s / max(1, folds_left) - inference_s)


#: what ``predict ckpt_path=<run>`` runs: one model trained on every case, or the fold models' ensemble
FINAL_PREDICTORS: tuple[str, ...] = ("all", "ensemble")


@dataclass(frozen=True)
class CVOptions:
    """``cv.*`` of the config (``conf/experiment/real_fast.yaml``).

    Attributes:
        tta_flips: test-time flips of the out-of-fold predictions and of the final predictor.
        min_volumes_mm3: component-volume thresholds of the clean-up compared.
        largest_only: also compare keeping only the largest tumour component.
        keep_within_mm: also compare keeping the largest component and every component within each of these
            distances (mm) of it (a multifocal tumour's satellites).
        et_volumes_mm3: thresholds of the enhancing-to-necrosis rule compared (and, with ``region_components``, of
            the core's and the enhancing tumour's components).
        et_thresholds: enhancing-tumour probability thresholds compared as the first stage of the choice (a voxel of
            the decided tumour whose enhancing probability reaches one is enhancing; needs ``probabilities``);
            empty: the decision rule alone.
        region_components: also choose, after the whole tumour's, which components of the tumour core and of the
            enhancing tumour are kept (by volume, and the largest with those within ``keep_within_mm`` of it).
        tune_max_cases: score the clean-ups on at most this many out-of-fold cases (spread over the folds).
        probabilities: also keep the out-of-fold class probabilities (float16) in ``oof/``.
        workers: processes scoring cases (``0``: this machine's cores).
        min_fold_minutes: the least a fold trains when its share of the budget is smaller.
        fold_minutes: train every fold exactly this long instead of its share of the budget (the
            ablation: every setting trains the same minutes, whatever its inference costs).
        raw_weights: also segment with the weights before averaging (``callbacks.ema``), to measure
            the averaging (``cv_raw`` in ``metrics.json``; one more pass per case).
        uncertainty: also keep, per case, the voxel-wise uncertainty of the test-time flips (normalised
            entropy of their mean) and their agreement (:mod:`brats_lightning.inference.uncertainty`).
        final: the predictor ``predict ckpt_path=<run>`` runs: ``all``, one more model of the same recipe trained
            on every case (in the same budget; the speed of one model), or ``ensemble``, the fold models averaged
            (one pass of each model per flip).
        missing_modalities: also segment every case with each of these modalities missing (its image
            and symmetry-map channels zeroed, as ``data.modality_dropout`` trains), one pass each
            (``cv_missing_<modality>`` in ``metrics.json``).
    """

    tta_flips: tuple[str, ...] = ("lr",)
    min_volumes_mm3: tuple[float, ...] = (100.0, 250.0, 500.0, 1000.0, 2000.0)
    largest_only: bool = True
    keep_within_mm: tuple[float, ...] = (10.0, 20.0, 40.0)
    et_volumes_mm3: tuple[float, ...] = (50.0, 100.0, 200.0, 500.0, 1000.0)
    region_components: bool = True
    et_thresholds: tuple[float, ...] = ()
    tune_max_cases: int = 300
    probabilities: bool = False
    workers: int = 0
    min_fold_minutes: float = 0.5
    fold_minutes: float | None = None
    raw_weights: bool = False
    uncertainty: bool = False
    missing_modalities: tuple[str, ...] = ()
    final: str = "all"

    @classmethod
    def from_config(cls, node: Any) -> CVOptions:
        """``cv.*`` checked against :class:`CVConfig`.

        Raises:
            ConfigError: one line naming the option (``cv.final: ...``).
        """
        raw = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})
        checked = validate(CVConfig, raw, "cv", ConfigError, options=True)
        try:
            tta_flips(list(checked.tta_flips))
        except ValueError as e:
            raise ConfigError(f"cv.tta_flips: {e}") from None
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in checked.model_dump().items()}
        return cls(**values)


Volumes = Annotated[list[Annotated[Number, Field(gt=0, le=1e7)]], Field(strict=False, max_length=64)]


class CVConfig(Strict):
    """The schema of ``cv.*`` (the fields of :class:`CVOptions`, with their types and ranges)."""

    tta_flips: Annotated[list[Literal["lr", "ap"]], Field(strict=False, max_length=2)] = ["lr"]
    min_volumes_mm3: Volumes = [100.0, 250.0, 500.0, 1000.0, 2000.0]
    largest_only: StrictBool = True
    keep_within_mm: Annotated[list[Annotated[Number, Field(gt=0, le=1000)]], Field(strict=False, max_length=64)] = [
        10.0,
        20.0,
        40.0,
    ]
    et_volumes_mm3: Volumes = [50.0, 100.0, 200.0, 500.0, 1000.0]
    region_components: StrictBool = True
    et_thresholds: Annotated[list[Annotated[Number, Field(gt=0, lt=1)]], Field(strict=False, max_length=64)] = []
    tune_max_cases: Annotated[Int, Field(ge=1, le=1_000_000)] = 300
    probabilities: StrictBool = False
    workers: Annotated[Int, Field(ge=0, le=1024)] = 0
    min_fold_minutes: Annotated[Number, Field(gt=0, le=100_000)] = 0.5
    fold_minutes: Annotated[Number, Field(gt=0, le=100_000)] | None = None
    raw_weights: StrictBool = False
    uncertainty: StrictBool = False
    missing_modalities: Annotated[list[Literal[MODALITIES]], Field(strict=False, max_length=4)] = []  # type: ignore[valid-type]
    final: Literal[FINAL_PREDICTORS] = "all"  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _thresholds_need_probabilities(self) -> CVConfig:
        if self.et_thresholds and not self.probabilities:
            raise ValueError(
                "cv.et_thresholds are chosen on the out-of-fold probabilities: set cv.probabilities=true (or "
                "cv.et_thresholds=[])"
            )
        return self


Seconds = Annotated[Number, Field(ge=0, le=1e8)]


class FoldRecord(Strict):
    """One training of ``cv_state.json`` (a fold's, or ``all``: the final model's)."""

    done: StrictBool = False
    train_s: Seconds | None = None
    steps: Seconds | None = None
    fit_s: Seconds | None = None
    infer_s_per_case: Seconds | None = None


class CVStateFile(Strict):
    """The schema of ``cv_state.json`` (:class:`CVState`), checked when a run resumes."""

    spent_s: Seconds = 0.0
    inference_s: Annotated[Number, Field(ge=0, le=1e5)] = 0.0
    split_hash: Annotated[str, Field(max_length=128)] = ""
    config_hash: Annotated[str, Field(max_length=128)] = ""
    config: dict[Annotated[str, Field(max_length=256)], Any] = {}
    folds: dict[Annotated[str, Field(pattern=r"^([0-9]{1,3}|all)$")], FoldRecord] = {}


@dataclass
class CVState:
    """``cv_state.json``: what a killed run had done (resumed in place)."""

    path: Path
    spent_s: float = 0.0
    folds: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: seconds of out-of-fold inference per case, measured before the first fold
    inference_s: float = 0.0
    #: the fingerprints of the split and of the config that decides training (:func:`fingerprint`)
    split_hash: str = ""
    config_hash: str = ""
    #: the config the hash is of (flattened), to name what differs when a rerun differs
    config: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, out: Path) -> CVState:

        path = out / "cv_state.json"
        if not path.is_file():
            return cls(path)
        try:
            doc = read_json(path, "cross-validation state")
        except UserError as e:
            log.warning("%s; starting the cross-validation afresh", e)
            return cls(path)
        checked = validate(CVStateFile, doc, path, ConfigError)
        return cls(
            path,
            checked.spent_s,
            {k: v.model_dump(exclude_none=True) for k, v in checked.folds.items()},
            checked.inference_s,
            checked.split_hash,
            checked.config_hash,
            dict(checked.config),
        )

    def check_budget(self, budget_s: float) -> None:
        """Refuse a recorded training time longer than the whole budget (a record this run cannot have written).

        Raises:
            ConfigError: naming the file and the record.
        """
        for key, record in self.folds.items():
            if float(record.get("train_s") or 0.0) > budget_s:
                raise ConfigError(
                    f"{self.path}: folds.{key}.train_s={record['train_s']} is more than the run's whole budget "
                    f"({budget_s:.0f} s): not a record this run wrote; delete the file to start afresh"
                )

    def check_resumable(self, split_hash: str, config_hash: str, config: dict[str, Any]) -> None:
        """Refuse to resume in place a run whose folds were trained on another split or with another config.

        Raises:
            ConfigError: one line naming the file and what differs.
        """
        if not self.folds:
            return
        if self.split_hash != split_hash:
            what = "another split of the cases" if self.split_hash else "a version that recorded no split"
        elif self.config_hash != config_hash:
            # an option added to the package since the run started, at a value that changes nothing, is no difference
            absent = object()
            differ = sorted(
                k
                for k in {*self.config, *config}
                if self.config.get(k, absent) != config.get(k, absent)
                and not (self.config and (k not in self.config or k not in config) and _neutral(config.get(k, absent)))
            )
            if self.config and not differ:
                return
            what = f"other training options ({', '.join(differ[:5]) or 'unrecorded'})"
        else:
            return
        raise ConfigError(
            f"{self.path}: this folder's cross-validation was trained with {what}; resuming it in place would keep "
            "folds trained otherwise: give the run another folder (hydra.run.dir=...) or delete this one"
        )

    def save(self) -> None:
        doc = {
            "spent_s": self.spent_s,
            "inference_s": self.inference_s,
            "split_hash": self.split_hash,
            "config_hash": self.config_hash,
            "config": self.config,
            "folds": self.folds,
        }
        write_text_atomic(self.path, json.dumps(doc, indent=1) + "\n")


#: the parts of a composed config that decide what a fold trains and how it segments its cases (what a finished
#: fold keeps), and inside them what does not: where files go, how many processes read, prepare or score, and
#: the clean-up's candidates (chosen over all the folds' segmentations at the end, so they may change on a resume)
_TRAINING = ("model", "data", "trainer", "callbacks", "seed", "budget_minutes", "reserve_minutes", "cv")
_NOT_TRAINING = (
    "data.cache_dir",
    "data.num_workers",
    "data.prepare_workers",
    "data.cache_shared",
    "cv.workers",
    "cv.min_volumes_mm3",
    "cv.et_volumes_mm3",
    "cv.largest_only",
    "cv.keep_within_mm",
    "cv.region_components",
    "cv.et_thresholds",
    "cv.tune_max_cases",
)


def training_config(cfg: Any) -> dict[str, Any]:
    """The flattened options of a composed config that decide what a fold trains and segments (model, data,
    trainer, callbacks, seed, budget, ``cv``), without those that only say where files go, how many workers run, or
    which clean-ups are compared at the end. Paths inside the run folder are written relative to it (``<run>/...``),
    so that a run folder moved or copied elsewhere still resumes in place."""
    plain = {
        k: OmegaConf.to_container(v, resolve=True) if isinstance(v, DictConfig) else v
        for k, v in ((k, cfg.get(k)) for k in _TRAINING)
    }
    paths = cfg.get("paths") if hasattr(cfg, "get") else None
    run_dir = str(paths.get("output_dir") or "") if paths is not None else ""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            key = prefix[:-1]
            if not key.startswith(_NOT_TRAINING):
                if run_dir and isinstance(node, str) and node.startswith(run_dir):
                    node = "<run>" + node[len(run_dir) :]
                flat[key] = node

    walk(plain, "")
    return flat


def _neutral(value: Any) -> bool:
    """Whether an option's value is one that changes nothing (off, empty or unset)."""
    return value is None or value is False or value == [] or value == {}


def fingerprint(doc: Any) -> str:
    """A short stable hash of plain data (sorted keys)."""
    return hashlib.sha1(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]
