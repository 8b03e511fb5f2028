"""Schemas of what brats_lightning reads back from disk: data, validated, never code.

A checkpoint's stored data configuration, clean-up and test-time flips, an exported model's sidecar
(``model.json``) and a results folder's data options (``.hydra/config.yaml``) are files a colleague
may share or a download may bring. Each is read as plain data (``weights_only`` torch, JSON, YAML)
and checked here against one typed schema (pydantic models: types, ranges, no unknown keys) before
anything uses it; objects are then rebuilt only from brats_lightning's own classes. Nothing read
from disk is imported, called or given to ``hydra.utils.instantiate``.

Every function raises :class:`~brats_lightning.errors.CheckpointError` (or ``ConfigError`` for the
data options of a results folder) whose message names the file and the first problem in one line.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError, field_validator

from brats_lightning.errors import CheckpointError, ConfigError, UserError

__all__ = [
    "DataConfig",
    "ExportSidecar",
    "PostprocessOptions",
    "DataModuleOptions",
    "SplitFile",
    "PreparedMeta",
    "validate",
    "read_json",
    "check_data_config",
    "check_postprocess",
    "check_flips",
    "check_no_targets",
]

#: nesting depth above which a JSON document is refused (ours are 4 deep at most)
MAX_JSON_DEPTH = 32
#: the largest JSON file read back (a sidecar or a report is a few kB)
MAX_JSON_BYTES = 16 * 1024 * 1024

# ints and floats that a number in a file may be; a bool is not a number here
Int = StrictInt
Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.+-]+$")]


class _Strict(BaseModel):
    """No unknown keys; values must have the declared types (ints are not coerced from strings)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _modalities() -> tuple[str, ...]:
    from brats_lightning.data.readers import MODALITIES

    return MODALITIES


def _convention_name(value: str) -> str:
    from brats_lightning.data.labels import get_convention

    try:
        return get_convention(value).name
    except KeyError:
        from brats_lightning.data.labels import CONVENTIONS

        raise ValueError(f"unknown label convention {value!r} (expected one of {sorted(CONVENTIONS)})") from None


class SymmetryOptions(_Strict):
    """:class:`~brats_lightning.data.preprocess.SymmetryConfig` as stored (Shen et al. Sec. 2.2)."""

    enabled: StrictBool = False
    window: Annotated[Int, Field(ge=1, le=63)] = 11
    kernel_size: Annotated[Int, Field(ge=1, le=31)] = 5
    sigma: Annotated[Number, Field(gt=0, le=20)] = 1.1
    scale: Annotated[Number, Field(gt=0, le=100)] = 1.0
    min_angle: Annotated[Number, Field(ge=0, le=45)] = 1.0
    device: Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:\d{1,2})?)$")] = "auto"
    axis_modality: Name = "t1"

    @field_validator("window", "kernel_size")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 != 1:
            raise ValueError(f"must be odd, got {v}")
        return v

    @field_validator("axis_modality")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in _modalities():
            raise ValueError(f"unknown modality {v!r} (expected one of {list(_modalities())})")
        return v


class PreprocessOptions(_Strict):
    """:class:`~brats_lightning.data.preprocess.PreprocessConfig` as stored (Havaei et al. Sec. 4)."""

    clip_percentiles: (
        Annotated[list[Annotated[Number, Field(ge=0, le=100)]], Field(min_length=2, max_length=2)] | None
    ) = [1.0, 99.0]
    n4: Annotated[list[Name], Field(max_length=4)] = []
    n4_shrink: Annotated[Int, Field(ge=1, le=16)] = 4
    n4_iterations: Annotated[list[Annotated[Int, Field(ge=1, le=1000)]], Field(min_length=1, max_length=8)] = [
        50,
        50,
        30,
    ]
    zscore: StrictBool = True
    margin: Annotated[Int, Field(ge=0, le=64)] = 2

    @field_validator("clip_percentiles")
    @classmethod
    def _ordered(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and not v[0] < v[1]:
            raise ValueError(f"the low percentile must be below the high one, got {list(v)}")
        return v

    @field_validator("n4")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        bad = [m for m in v if m not in _modalities()]
        if bad:
            raise ValueError(f"unknown modalities {bad} (expected some of {list(_modalities())})")
        return v


def _layout_name(value: str) -> str:
    from brats_lightning.data.layouts import LAYOUTS

    if value not in ("auto", "generic", "") and value not in LAYOUTS:
        raise ValueError(f"unknown layout {value!r} (expected auto, generic or one of {sorted(LAYOUTS)})")
    return value


class DataConfig(_Strict):
    """What a model was trained on, stored in its checkpoint (``data_config``) and export sidecar.

    The keys of :meth:`BratsDataModule.describe <brats_lightning.data.datamodule.BratsDataModule.describe>`.
    """

    modalities: Annotated[list[Name], Field(min_length=1, max_length=4)]
    convention: Name
    symmetry: SymmetryOptions = SymmetryOptions()
    preprocess: PreprocessOptions = PreprocessOptions()
    layout: Annotated[str, Field(max_length=64)] = "auto"
    files: dict[Literal["flair", "t1", "t1c", "t2", "label", "mask"], Annotated[str, Field(max_length=512)]] | None = (
        None
    )
    context_slices: Annotated[Int, Field(ge=0, le=5)] = 0
    modality_dropout: Annotated[Number, Field(ge=0, lt=1)] = 0.0

    @field_validator("modalities")
    @classmethod
    def _modalities_known(cls, v: list[str]) -> list[str]:
        bad = [m for m in v if m not in _modalities()]
        if bad or len(set(v)) != len(v):
            raise ValueError(f"expected distinct modalities from {list(_modalities())}, got {v}")
        return v

    @field_validator("convention")
    @classmethod
    def _convention(cls, v: str) -> str:
        return _convention_name(v)

    @field_validator("layout")
    @classmethod
    def _layout(cls, v: str) -> str:
        return _layout_name(v)


class PostprocessOptions(_Strict):
    """Options of :func:`~brats_lightning.inference.cleanup.apply_cleanup` (Havaei et al. Sec. 4; the BraTS ET rule)."""

    min_volume_mm3: Annotated[Number, Field(ge=0, le=1e7)] = 500.0
    min_slices: Annotated[Int, Field(ge=0, le=1000)] = 3
    largest_only: StrictBool = False
    et_min_volume_mm3: Annotated[Number, Field(ge=0, le=1e7)] = 0.0


class InputPaddingOptions(_Strict):
    """:class:`~brats_lightning.inference.volume.InputPadding` as stored in a sidecar."""

    divisor: Annotated[Int, Field(ge=1, le=1024)] = 1
    before: Annotated[Int, Field(ge=0, le=1024)] = 0
    after: Annotated[Int, Field(ge=0, le=1024)] = 0


def _flip_names(v: list[str]) -> list[str]:
    from brats_lightning.inference.flips import FLIPS

    bad = [f for f in v if f not in FLIPS]
    if bad:
        raise ValueError(f"unknown flips {bad} (expected some of {sorted(FLIPS)})")
    return v


class ExportSidecar(_Strict):
    """``model.json`` beside an exported ``model.onnx`` (:mod:`brats_lightning.export`)."""

    format: Literal[1]
    name: Annotated[str, Field(max_length=200)] = "model"
    module_class: Annotated[str, Field(max_length=200)] = ""
    in_channels: Annotated[Int, Field(ge=1, le=64)]
    num_classes: Annotated[Int, Field(ge=2, le=16)]
    convention: Name
    input_padding: InputPaddingOptions
    postprocess: PostprocessOptions | None = None
    tta_flips: Annotated[list[Name], Field(max_length=4)] = []
    data_config: DataConfig
    inference_batch_size: Annotated[Int, Field(ge=1, le=4096)] = 4
    decision: Literal["argmax", "regions"] = "argmax"
    input: Annotated[str, Field(max_length=500)] = ""
    output: Annotated[str, Field(max_length=500)] = ""

    @field_validator("convention")
    @classmethod
    def _convention(cls, v: str) -> str:
        return _convention_name(v)

    @field_validator("tta_flips")
    @classmethod
    def _flips(cls, v: list[str]) -> list[str]:
        return _flip_names(v)


class DataModuleOptions(BaseModel):
    """The options of :class:`~brats_lightning.data.datamodule.BratsDataModule` a results folder names.

    Only this class can be built from a job's ``.hydra/config.yaml`` (``report``'s ensembles); its
    ``_target_`` must name it, and no value may name another callable (see :func:`check_no_targets`).
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)

    target: Literal["brats_lightning.data.datamodule.BratsDataModule"] = Field(alias="_target_")
    root: Annotated[str, Field(max_length=4096)] | None = None
    layout: Annotated[str, Field(max_length=64)] = "auto"
    files: dict[Literal["flair", "t1", "t1c", "t2", "label", "mask"], Annotated[str, Field(max_length=512)]] | None = (
        None
    )
    modalities: Annotated[list[Name], Field(min_length=1, max_length=4)] = ["flair", "t1", "t1c", "t2"]
    convention: Name = "brats2017"
    symmetry: StrictBool = False
    symmetry_options: dict[str, Any] | None = None
    preprocess: dict[str, Any] | None = None
    synthetic: dict[str, Any] | StrictBool | None = None
    cache_dir: Annotated[str, Field(max_length=4096)] = "data/cache"
    cache_shared: StrictBool = False
    split_file: Annotated[str, Field(max_length=4096)] | None = None
    seed: Annotated[Int, Field(ge=0)] = 0
    test_fraction: Annotated[Number, Field(ge=0, lt=1)] = 0.2
    num_folds: Annotated[Int, Field(ge=2, le=100)] = 5
    fold: Annotated[Int, Field(ge=0, le=99)] = 0
    groups: Annotated[str, Field(max_length=4096)] | None = "auto"
    split: Literal["stratified", "site"] = "stratified"
    max_cases: Annotated[Int, Field(ge=1)] | None = None
    crop_size: Annotated[list[Annotated[Int, Field(ge=1, le=4096)]], Field(min_length=2, max_length=2)] = [144, 192]
    batch_size: Annotated[Int, Field(ge=1, le=65536)] = 8
    num_workers: Annotated[Int, Field(ge=0, le=256)] | Literal["auto"] = "auto"
    prepare_workers: Annotated[Int, Field(ge=1, le=256)] | Literal["auto"] = "auto"
    augment: StrictBool = True
    augment_options: dict[str, Any] | None = None
    context_slices: Annotated[Int, Field(ge=0, le=5)] = 0
    modality_dropout: Annotated[Number, Field(ge=0, lt=1)] = 0.0
    tumour_fraction: Annotated[Number, Field(ge=0, le=1)] = 0.0
    mode: Literal["slices", "patches"] = "slices"
    patch_size: Annotated[Int, Field(ge=1, le=1024)] = 33
    dense_size: Annotated[Int, Field(ge=1, le=257)] = 1
    patches_per_epoch: Annotated[Int, Field(ge=1)] = 20000
    patch_distribution: Literal["balanced", "natural"] = "balanced"
    in_channels: Annotated[Int, Field(ge=1, le=64)] | None = None
    num_classes: Annotated[Int, Field(ge=2, le=16)] | None = None

    @field_validator("symmetry_options")
    @classmethod
    def _symmetry(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None:
            SymmetryOptions.model_validate({"enabled": False, **v})
        return v

    @field_validator("preprocess")
    @classmethod
    def _preprocess(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None:
            PreprocessOptions.model_validate(v)
        return v

    def kwargs(self) -> dict[str, Any]:
        """The data module's keyword arguments (without ``_target_``)."""
        return self.model_dump(exclude={"target"})


CaseId = Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[^/\\]+$")]


class SplitFile(BaseModel):
    """A split file (:mod:`brats_lightning.data.splits`): held-out test cases and cross-validation folds."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    test: list[CaseId]
    folds: Annotated[list[list[CaseId]], Field(min_length=2, max_length=100)]


class PreparedMeta(BaseModel):
    """The fields of a prepared case's ``meta.json`` (:mod:`brats_lightning.data.cache`) that training reads."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    case_id: CaseId
    cached_shape: Annotated[list[Annotated[Int, Field(ge=1, le=4096)]], Field(min_length=4, max_length=4)]
    ras_shape: Annotated[list[Annotated[Int, Field(ge=1, le=4096)]], Field(min_length=3, max_length=3)]
    box: Annotated[
        list[Annotated[list[Annotated[Int, Field(ge=0, le=4096)]], Field(min_length=2, max_length=2)]],
        Field(min_length=3, max_length=3),
    ]
    spacing: Annotated[list[Annotated[Number, Field(gt=0, le=100)]], Field(min_length=3, max_length=3)]
    brain_slices: list[Annotated[Int, Field(ge=0, le=4096)]]
    label_counts: list[Annotated[Int, Field(ge=0)]] | None = None
    channels: list[Annotated[str, Field(max_length=64)]] = []


M = TypeVar("M", bound=BaseModel)


def _first_problem(e: ValidationError) -> str:
    err = e.errors(include_url=False)[0]
    where = ".".join(str(p) for p in err["loc"]) or "the document"
    msg = str(err["msg"]).removeprefix("Value error, ")
    got = err.get("input")
    shown = "" if isinstance(got, (dict, list)) or err["type"] == "missing" else f" (got {got!r:.80})"
    more = f"; {len(e.errors()) - 1} more problem(s)" if len(e.errors()) > 1 else ""
    return f"{where}: {msg}{shown}{more}"


def validate(model: type[M], data: Any, source: str | Path, error: Callable[[str], UserError] = CheckpointError) -> M:
    """``data`` checked against ``model``.

    Raises:
        UserError: (``error``) naming ``source`` and the first problem (key, what is wrong, the value).
    """
    try:
        _check_depth(data, source, error)
        return model.model_validate(data)
    except ValidationError as e:
        raise error(f"{source}: {_first_problem(e)}") from None


def _check_depth(data: Any, source: str | Path, error: Callable[[str], UserError]) -> None:
    """Refuse documents nested deeper than :data:`MAX_JSON_DEPTH` (iteratively: no recursion)."""
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise error(f"{source}: nested more than {MAX_JSON_DEPTH} levels deep; not a file brats_lightning wrote")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend((v, depth + 1) for v in value)


def read_json(path: str | Path, what: str, error: Callable[[str], UserError] = CheckpointError) -> Any:
    """A JSON file as plain data (size and nesting bounded before parsing).

    Raises:
        UserError: (``error``) missing, unreadable, too large, too deeply nested or not JSON; names ``path``.
    """
    path = Path(path)
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise error(f"{path}: the {what} is larger than {MAX_JSON_BYTES // 2**20} MB; not a file we wrote")
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{path}: cannot read the {what} ({type(e).__name__}: {e})") from None
    depth = 0
    for ch in text:  # bracket depth, before the parser recurses
        if ch in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise error(f"{path}: the {what} is nested more than {MAX_JSON_DEPTH} levels deep; not a file we wrote")
        elif ch in "]}":
            depth -= 1
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise error(f"{path}: the {what} is not valid JSON ({str(e).splitlines()[0]})") from None


def check_data_config(data: Any, source: str | Path) -> dict[str, Any]:
    """A checkpoint's (or sidecar's) ``data_config`` as a validated plain dict (lists, no tuples).

    Raises:
        CheckpointError: naming ``source`` and the problem.
    """
    cfg = validate(DataConfig, data, f"{source} (data_config)")
    return cfg.model_dump(mode="json")


def check_postprocess(data: Any, source: str | Path) -> dict[str, Any] | None:
    """A stored clean-up (``None``: none) as a validated plain dict.

    Raises:
        CheckpointError: naming ``source`` and the problem.
    """
    if data is None:
        return None
    return validate(PostprocessOptions, data, f"{source} (postprocess)").model_dump()


class _Flips(_Strict):
    tta_flips: Annotated[list[Name], Field(max_length=4)]

    @field_validator("tta_flips")
    @classmethod
    def _flips(cls, v: list[str]) -> list[str]:
        return _flip_names(v)


def check_flips(data: Any, source: str | Path) -> list[str]:
    """Stored test-time flips (``None``: none) as a validated list.

    Raises:
        CheckpointError: naming ``source`` and the problem (``"lr"`` is not a list of flips).
    """
    if data is None:
        return []
    return list(validate(_Flips, {"tta_flips": data}, source).tta_flips)


def check_no_targets(data: Any, source: str | Path, where: str = "") -> None:
    """Refuse any ``_target_`` (or ``_partial_``, ``_args_``) nested in ``data``: a file may not name a callable.

    Raises:
        ConfigError: naming ``source``, the key and the callable it names.
    """
    stack: list[tuple[Any, str]] = [(data, where)]
    while stack:
        value, at = stack.pop()
        if isinstance(value, dict):
            for k, v in value.items():
                key = f"{at}.{k}" if at else str(k)
                if str(k) in ("_target_", "_partial_", "_args_", "_recursive_", "_convert_"):
                    raise ConfigError(
                        f"{source}: {key} names {v!r:.80}: a results folder may not name code to call; it is not run"
                    )
                stack.append((v, key))
        elif isinstance(value, list):
            stack.extend((v, f"{at}[{i}]") for i, v in enumerate(value))
