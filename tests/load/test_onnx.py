"""brats_lightning.load.onnx: an exported model's settings (in its metadata, or an older export's sidecar) are
validated data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from brats_lightning.errors import CheckpointError
from brats_lightning.load.checkpoint import load_module
from brats_lightning.load.onnx import METADATA_KEY, read_metadata
from brats_lightning.load.predictor import load_predictor


def _sidecar(trained_ckpt: Path) -> dict:
    """The sidecar ``export`` writes for the trained model (without running the export)."""
    model, data_config = load_module(trained_ckpt)
    return {
        "format": 1,
        "name": model.display_name,
        "module_class": "brats_lightning.modules.fcn.FCNModule",
        "in_channels": 8,
        "num_classes": 4,
        "convention": "brats2017",
        "input_padding": {"divisor": 4, "before": 0, "after": 0},
        "postprocess": None,
        "tta_flips": [],
        "data_config": data_config,
        "inference_batch_size": 4,
    }


def _deep(n: int) -> str:
    return "[" * n + "]" * n


def _tiny_onnx(path: Path, settings: str | None) -> Path:
    """A real, loadable ONNX model (an identity), with ``settings`` as its brats_lightning metadata when given."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "c", "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "c", "h", "w"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    if settings is not None:
        helper.set_model_props(model, {METADATA_KEY: settings})
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("carrier", ["metadata", "sidecar"])
@pytest.mark.parametrize(
    "change, message",
    [
        ({"convention": "../../etc/passwd"}, r"convention: String should match pattern .* \(got '../../etc/passwd'\)"),
        ({"convention": "brats1999"}, r"convention: unknown label convention 'brats1999'"),
        ({"tta_flips": "lr"}, r"tta_flips: Input should be a valid list"),
        ({"tta_flips": ["lr", "rm"]}, r"tta_flips: unknown flips \['rm'\]"),
        ({"inference_batch_size": "4; x"}, r"inference_batch_size: Input should be a valid integer"),
        ({"input_padding": {"divisor": 4, "x": 1}}, r"input_padding.x: unknown option; expected one of"),
        ({"input_padding": {"divisor": 1e9}}, r"input_padding.divisor: Input should be a valid integer"),
        ({"input_padding": {"divisor": 10**9}}, r"input_padding.divisor: Input should be less than or equal to 1024"),
        ({"input_padding": {"before": -3}}, r"input_padding.before: Input should be greater than or equal to 0"),
        ({"data_config": {"symmetry": {"x": 1}}}, r"data_config.symmetry.x: unknown option; expected one of"),
        ({"data_config": {"modalities": ["flair", "../t1"]}}, r"data_config.modalities.1: String should match"),
        ({"postprocess": {"min_volume_mm3": "big"}}, r"postprocess.min_volume_mm3: Input should be a valid number"),
        ("deep", r"nested more than 32 levels deep"),
        ("not json", r"is not valid JSON"),
    ],
)
def test_tampered_export_settings_are_named_and_refused(
    tmp_path: Path, trained_ckpt: Path, change: dict | str, message: str, carrier: str
) -> None:
    """The same schema for the settings inside the model and for an older export's sidecar beside it."""
    onnx = tmp_path / "model.onnx"
    side = tmp_path / "model.json"
    meta = _sidecar(trained_ckpt)

    def store(text: str) -> None:
        if carrier == "metadata":
            _tiny_onnx(onnx, text)
        else:
            _tiny_onnx(onnx, None)
            side.write_text(text)

    store(json.dumps(meta))
    assert read_metadata(onnx)["data_config"] == json.loads(json.dumps(meta["data_config"]))  # as written: fine
    if change == "deep":
        store(f'{{"format": 1, "x": {_deep(100_000)}}}')
    elif change == "not json":
        store("{format: 1")
    else:
        assert isinstance(change, dict)
        for key, value in change.items():
            meta[key] = {**meta[key], **value} if isinstance(value, dict) and key != "postprocess" else value
            if key == "data_config":
                meta[key]["symmetry"] = {**meta[key]["symmetry"], **value.get("symmetry", {})}
        store(json.dumps(meta))
    named = f"{onnx} \\(metadata {METADATA_KEY}\\)" if carrier == "metadata" else str(side)
    with pytest.raises(CheckpointError, match=rf"^{named}: .*{message}"):
        load_predictor(onnx)


def test_an_onnx_model_without_settings_is_one_line(tmp_path: Path) -> None:
    onnx = _tiny_onnx(tmp_path / "other.onnx", None)  # someone else's model: no settings, no sidecar
    with pytest.raises(CheckpointError, match=rf"^{onnx}: no brats_lightning settings in the model's metadata"):
        load_predictor(onnx)


def test_onnxruntime_runs_on_the_gpu_only_when_both_it_and_torch_see_one(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from brats_lightning.load.onnx import execution_providers

    cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert execution_providers(cuda) == cuda
    assert execution_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]  # onnxruntime without CUDA
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert execution_providers(cuda) == ["CPUExecutionProvider"]  # onnxruntime-gpu on a machine without a GPU
