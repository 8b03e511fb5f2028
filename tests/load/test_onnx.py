"""brats_lightning.load.onnx: an exported model's sidecar is validated data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from brats_lightning.errors import CheckpointError
from brats_lightning.load.checkpoint import load_module
from brats_lightning.load.onnx import read_sidecar
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


@pytest.mark.parametrize(
    "change, message",
    [
        ({"convention": "../../etc/passwd"}, r"convention: String should match pattern .* \(got '../../etc/passwd'\)"),
        ({"convention": "brats1999"}, r"convention: unknown label convention 'brats1999'"),
        ({"tta_flips": "lr"}, r"tta_flips: Input should be a valid list"),
        ({"tta_flips": ["lr", "rm"]}, r"tta_flips: unknown flips \['rm'\]"),
        ({"inference_batch_size": "4; x"}, r"inference_batch_size: Input should be a valid integer"),
        ({"input_padding": {"divisor": 4, "x": 1}}, r"input_padding.x: Extra inputs are not permitted"),
        ({"input_padding": {"divisor": 1e9}}, r"input_padding.divisor: Input should be a valid integer"),
        ({"input_padding": {"divisor": 10**9}}, r"input_padding.divisor: Input should be less than or equal to 1024"),
        ({"input_padding": {"before": -3}}, r"input_padding.before: Input should be greater than or equal to 0"),
        ({"data_config": {"symmetry": {"x": 1}}}, r"data_config.symmetry.x: Extra inputs are not permitted"),
        ({"data_config": {"modalities": ["flair", "../t1"]}}, r"data_config.modalities.1: String should match"),
        ({"postprocess": {"min_volume_mm3": "big"}}, r"postprocess.min_volume_mm3: Input should be a valid number"),
        ("deep", r"nested more than 32 levels deep"),
        ("not json", r"is not valid JSON"),
    ],
)
def test_a_tampered_export_sidecar_is_named_and_refused(
    tmp_path: Path, trained_ckpt: Path, change: dict | str, message: str
) -> None:
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"not read: the sidecar is checked first")
    side = tmp_path / "model.json"
    meta = _sidecar(trained_ckpt)
    side.write_text(json.dumps(meta))
    assert read_sidecar(onnx)["data_config"] == json.loads(json.dumps(meta["data_config"]))  # as written: fine
    if change == "deep":
        side.write_text(f'{{"format": 1, "x": {_deep(100_000)}}}')
    elif change == "not json":
        side.write_text("{format: 1")
    else:
        assert isinstance(change, dict)
        for key, value in change.items():
            meta[key] = {**meta[key], **value} if isinstance(value, dict) and key != "postprocess" else value
            if key == "data_config":
                meta[key]["symmetry"] = {**meta[key]["symmetry"], **value.get("symmetry", {})}
        side.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=rf"^{side}: .*{message}"):
        load_predictor(onnx)
