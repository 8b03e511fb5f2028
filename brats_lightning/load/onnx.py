"""Exported models: an ONNX file run by onnxruntime, with the settings it was exported with.

``python -m brats_lightning.export`` writes ``model.onnx`` with its settings in the model's own metadata
(``metadata_props`` key :data:`METADATA_KEY`, JSON): the data configuration of its training, the label convention,
the padding of a slice, the clean-up and the flips its checkpoint asks for. Exports made before kept them in a
sidecar, ``model.json`` beside the model (:func:`sidecar_path`), still read when the model has no metadata. Either is
read as bounded JSON and validated by the same schema (:class:`ExportSidecar`). onnxruntime runs the model on the
GPU when onnxruntime-gpu and a CUDA device are there, else on the CPU (one log line says which).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator

from brats_lightning.data.options import DataConfig, convention_name
from brats_lightning.errors import CheckpointError, ConfigError
from brats_lightning.inference.cleanup import PostprocessOptions
from brats_lightning.inference.flips import flip_names
from brats_lightning.inference.volume import InputPadding
from brats_lightning.modules.segmentation import SegmentationModule
from brats_lightning.schema import Int, Name, Strict, parse_json, read_json, validate

__all__ = [
    "FORMAT",
    "execution_providers",
    "METADATA_KEY",
    "ExportSidecar",
    "OnnxModule",
    "load_onnx",
    "read_metadata",
    "read_sidecar",
    "sidecar_path",
    "write_metadata",
]

log = logging.getLogger("brats_lightning.load.onnx")

#: the settings' format version
FORMAT = 1
#: the ``metadata_props`` key of an exported model's settings
METADATA_KEY = "brats_lightning"


class InputPaddingOptions(Strict):
    """:class:`~brats_lightning.inference.volume.InputPadding` as stored in a sidecar."""

    divisor: Annotated[Int, Field(ge=1, le=1024)] = 1
    before: Annotated[Int, Field(ge=0, le=1024)] = 0
    after: Annotated[Int, Field(ge=0, le=1024)] = 0


class ExportSidecar(Strict):
    """The settings of an exported model (:mod:`brats_lightning.export`): in its metadata, or in an older export's
    sidecar ``model.json``."""

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
    et_threshold: Annotated[float, Field(gt=0, lt=1)] | None = None
    input: Annotated[str, Field(max_length=500)] = ""
    output: Annotated[str, Field(max_length=500)] = ""

    @field_validator("convention")
    @classmethod
    def _convention(cls, v: str) -> str:
        return convention_name(v)

    @field_validator("tta_flips")
    @classmethod
    def _flips(cls, v: list[str]) -> list[str]:
        return flip_names(v)


def sidecar_path(onnx_path: str | Path) -> Path:
    """``model.onnx`` -> ``model.json``."""
    return Path(onnx_path).with_suffix(".json")


class OnnxModule(SegmentationModule, register=False):
    """An exported model run by onnxruntime, usable wherever a trained module predicts.

    Args:
        path: the ``.onnx`` file (its settings in its metadata, or an older export's sidecar beside it).
        threads: onnxruntime's intra-op threads (0: its default).
    """

    def __init__(self, path: str | Path, threads: int = 0) -> None:
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: no such ONNX file")
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ConfigError(
                f"{path}: running an ONNX model needs onnxruntime: pip install -c constraints.txt -e '.[onnx]'"
            ) from e
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        providers = execution_providers(ort.get_available_providers())
        try:
            self_session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise CheckpointError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from e
        log.info("%s runs on %s", path.name, "the GPU (CUDA)" if providers[0].startswith("CUDA") else "the CPU")
        meta = read_metadata(path, self_session.get_modelmeta().custom_metadata_map)
        super().__init__(
            convention=meta["convention"],
            inference_batch_size=meta["inference_batch_size"],
            channels_last=False,
            postprocess=meta["postprocess"],
            name=f"{meta['name']} (ONNX)",
        )
        self.session = self_session
        self.tta_flips = list(meta["tta_flips"])
        self.decision = meta["decision"]
        self.et_threshold = meta["et_threshold"]
        self.input_name = self.session.get_inputs()[0].name
        self.meta = meta
        self._padding = InputPadding(**meta["input_padding"])

    @property
    def input_padding(self) -> InputPadding:
        return self._padding

    def net_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(x.detach().float().cpu().numpy())})[0]
        return torch.from_numpy(out).to(x.device)


def execution_providers(available: list[str]) -> list[str]:
    """onnxruntime's providers, best first: CUDA when onnxruntime-gpu offers it and torch sees a GPU, then the CPU."""
    if "CUDAExecutionProvider" in available and torch.cuda.is_available():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def write_metadata(onnx_path: str | Path, meta: dict[str, Any]) -> None:
    """Store ``meta`` (the settings :class:`ExportSidecar` describes) in the model's ``metadata_props``, in place."""
    import onnx

    model = onnx.load(str(onnx_path))
    onnx.helper.set_model_props(model, {METADATA_KEY: json.dumps(meta, sort_keys=True)})
    onnx.save(model, str(onnx_path))


def read_metadata(path: str | Path, props: dict[str, str] | None = None) -> dict[str, Any]:
    """An exported model's settings, validated (:class:`ExportSidecar`): from its metadata, else (an export made
    before they moved inside the model) from its sidecar.

    Args:
        path: the ``.onnx`` file.
        props: its ``metadata_props`` when already read (onnxruntime's ``custom_metadata_map``); read here otherwise.

    Raises:
        CheckpointError: no settings at all, or settings that are not what ``export`` writes (not JSON, too large or
            deep, a value of the wrong type or range, an unknown key); names the file.
    """
    path = Path(path)
    if props is None:
        import onnx

        try:
            props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        except Exception as e:  # noqa: BLE001 - onnx raises its own exception types
            raise CheckpointError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from e
    text = props.get(METADATA_KEY)
    if text is None:
        if sidecar_path(path).is_file():
            return read_sidecar(path)
        raise CheckpointError(
            f"{path}: no brats_lightning settings in the model's metadata (key {METADATA_KEY!r}) and no sidecar "
            f"{sidecar_path(path).name}: export it with python -m brats_lightning.export"
        )
    source = f"{path} (metadata {METADATA_KEY})"
    meta = parse_json(text, source, "settings")
    if not isinstance(meta, dict) or "format" not in meta:
        raise CheckpointError(f"{source}: not brats_lightning export settings (no format key)")
    return validate(ExportSidecar, meta, source).model_dump(mode="json")


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """The sidecar of an older export, validated (:class:`ExportSidecar`).

    Raises:
        CheckpointError: the ``.onnx`` file or its ``.json`` is missing, or the sidecar is not what
            ``export`` wrote (a value of the wrong type or range, an unknown key); names ``model.json``.
    """
    path = Path(path)
    side = sidecar_path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such ONNX file")
    if not side.is_file():
        raise CheckpointError(f"{side}: the sidecar of {path.name} is missing (export writes both)")
    meta = read_json(side, f"sidecar of {path.name}")
    if not isinstance(meta, dict) or "format" not in meta:
        raise CheckpointError(f"{side}: not a brats_lightning export sidecar (no format key)")
    return validate(ExportSidecar, meta, side).model_dump(mode="json")


def load_onnx(path: str | Path, threads: int = 0) -> tuple[OnnxModule, dict]:
    """An exported model and the data configuration it expects."""
    module = OnnxModule(path, threads)
    return module, dict(module.meta["data_config"])
