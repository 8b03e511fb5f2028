"""Exported models: an ONNX file run by onnxruntime, with the settings it was exported with.

``python -m brats_lightning.export`` writes ``model.onnx`` and, beside it, ``model.json`` (:func:`sidecar_path`):
the data configuration of its training, the label convention, the padding of a slice, the clean-up and the
flips its checkpoint asks for. :func:`load_onnx` reads both back, the sidecar validated as data.
"""

from __future__ import annotations

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
from brats_lightning.schema import Int, Name, Strict, read_json, validate

__all__ = ["FORMAT", "ExportSidecar", "OnnxModule", "load_onnx", "read_sidecar", "sidecar_path"]

#: the sidecar's format version
FORMAT = 1


class InputPaddingOptions(Strict):
    """:class:`~brats_lightning.inference.volume.InputPadding` as stored in a sidecar."""

    divisor: Annotated[Int, Field(ge=1, le=1024)] = 1
    before: Annotated[Int, Field(ge=0, le=1024)] = 0
    after: Annotated[Int, Field(ge=0, le=1024)] = 0


class ExportSidecar(Strict):
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
    """An exported model run by onnxruntime (CPU), usable wherever a trained module predicts.

    Args:
        path: the ``.onnx`` file (its sidecar JSON beside it).
        threads: onnxruntime's intra-op threads (0: its default).
    """

    def __init__(self, path: str | Path, threads: int = 0) -> None:
        path = Path(path)
        meta = read_sidecar(path)
        super().__init__(
            convention=meta["convention"],
            inference_batch_size=meta["inference_batch_size"],
            channels_last=False,
            postprocess=meta["postprocess"],
            name=f"{meta['name']} (ONNX)",
        )
        self.tta_flips = list(meta["tta_flips"])
        self.decision = meta["decision"]
        self.et_threshold = meta["et_threshold"]
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ConfigError(
                f"{path}: running an ONNX model needs onnxruntime: pip install -c constraints.txt -e '.[onnx]'"
            ) from e
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise CheckpointError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from e
        self.input_name = self.session.get_inputs()[0].name
        self.meta = meta
        self._padding = InputPadding(**meta["input_padding"])

    @property
    def input_padding(self) -> InputPadding:
        return self._padding

    def net_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(x.detach().float().cpu().numpy())})[0]
        return torch.from_numpy(out).to(x.device)


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """The sidecar of an exported model, validated (:class:`ExportSidecar`).

    Raises:
        CheckpointError: the ``.onnx`` file or its ``.json`` is missing, or the sidecar is not what
            ``export`` writes (a value of the wrong type or range, an unknown key); names ``model.json``.
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
