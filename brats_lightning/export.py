"""Export a trained net to ONNX: ``python -m brats_lightning.export ckpt_path=... out=model.onnx``.

The ONNX model maps zero-padded slices ``(N, C, H, W)`` (float32) to class probabilities of every
output pixel (softmax included), with the batch size and the slice size dynamic; cascades carry their
frozen first stage. The model's own metadata (``metadata_props["brats_lightning"]``, JSON;
:func:`~brats_lightning.load.onnx.read_metadata`) holds what it expects and gives: the data configuration of
its training (modalities, clipping, N4, z-score, symmetry maps), the label convention, the padding of a slice
(:class:`~brats_lightning.inference.volume.InputPadding`), the post-processing, flips and decision its
checkpoint asks for, and its name; so the file alone is the model. ``predict ckpt_path=model.onnx`` runs it with
onnxruntime (``pip install -c constraints.txt -e ".[onnx]"``), no training stack needed for the net.

Batch norms are folded into the convolutions before export (as ``predict`` does), and the FCN's
upsampling runs as plain nearest upsampling + convolution (the same function as its low-resolution
kernels, exported with standard operators).
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import torch
from omegaconf import DictConfig

from brats_lightning.config import register_resolvers
from brats_lightning.errors import CheckpointError, ConfigError
from brats_lightning.files import atomic_path
from brats_lightning.load.checkpoint import load_module
from brats_lightning.load.onnx import FORMAT, OnnxModule, write_metadata
from brats_lightning.modules.segmentation import SegmentationModule
from brats_lightning.nets.fcn import ShenFCN
from brats_lightning.options import check_config, command

__all__ = ["export_onnx", "check_export", "main"]

log = logging.getLogger("brats_lightning.export")


class _NetProbabilities(torch.nn.Module):
    """The exported function: padded slices -> probabilities (the module's :meth:`net_probabilities`)."""

    def __init__(self, model: SegmentationModule) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.net_probabilities(x)


def export_onnx(model: SegmentationModule, data_config: dict, out: str | Path, opset: int = 18) -> Path:
    """Write ``model`` as ONNX at ``out`` (atomically), its settings in the model's own metadata.

    Returns:
        The ONNX file.
    """
    out = Path(out)
    if out.suffix != ".onnx":
        raise ConfigError(f"out={out}: the file name must end in .onnx")
    model = model.prepare_for_inference().float()
    model.use_compile = False  # the exported graph is traced from the plain net
    if isinstance(model.net, ShenFCN):
        model.net.low_res_upsampling = False  # standard operators (same function)
    in_channels = _in_channels(model)
    padding = model.input_padding
    side = 4 * max(padding.divisor, 8)
    example = torch.zeros(1, in_channels, side + padding.before + padding.after, side + padding.before + padding.after)
    meta = {
        "format": FORMAT,
        "name": model.display_name,
        "module_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "in_channels": in_channels,
        "num_classes": model.convention.num_classes,
        "convention": model.convention.name,
        "input_padding": padding.to_dict(),
        "postprocess": model.postprocess,
        "tta_flips": list(model.tta_flips),
        "data_config": {"convention": model.convention.name, **data_config},
        "inference_batch_size": model.inference_batch_size,
        "decision": model.decision,
        "et_threshold": model.et_threshold,
        "input": "zero-padded slices (N, C, H, W) float32, RAS: axis -2 = x (left-right)",
        "output": "class probabilities of every output pixel (N, K, H', W')",
    }
    from brats_lightning.load.onnx import ExportSidecar
    from brats_lightning.schema import validate

    validate(ExportSidecar, json.loads(json.dumps(meta)), out)  # what predict will accept
    dynamic = torch.export.Dim.DYNAMIC
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ("torch.onnx", "onnx_ir", "onnxscript"):
            logging.getLogger(name).setLevel(logging.WARNING)
        program = torch.onnx.export(
            _NetProbabilities(model).eval(),
            (example,),
            dynamo=True,
            dynamic_shapes=({0: dynamic, 2: dynamic, 3: dynamic},),
            opset_version=opset,
            verbose=False,
        )
        assert program is not None
        program.save(str(tmp))  # the weights inline: one file
        write_metadata(tmp, meta)  # the settings inside the model: nothing to lose beside it
    return out


def _in_channels(model: SegmentationModule) -> int:
    first = next((m for m in model.net.modules() if isinstance(m, torch.nn.Conv2d)), None)
    if first is None:
        raise CheckpointError("the model's net has no convolution to export")
    return int(first.in_channels)


def check_export(model: SegmentationModule, onnx_path: Path, seed: int = 0) -> float:
    """The largest difference between torch's and onnxruntime's probabilities on a random slice batch."""
    exported = OnnxModule(onnx_path)
    x = torch.randn(2, _in_channels(model), 96, 112, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref = model.float().predict_slices(x)
    return float((exported.predict_slices(x) - ref).abs().max())


register_resolvers()


@command("export")
def main(cfg: DictConfig) -> None:
    """Hydra entry point (see ``conf/export.yaml``)."""
    check_config(cfg, "export")  # every option's type and range, before any work
    model, data_config = load_module(cfg.ckpt_path)
    out = export_onnx(model, data_config, cfg.out, int(cfg.opset))
    log.info("Wrote %s (%s; its settings in the model's metadata)", out, model.display_name)
    if cfg.get("check", True):
        diff = check_export(model, out)
        log.info("onnxruntime vs torch on a random 2x%dx96x112 batch: max |difference| %.2e", _in_channels(model), diff)
        if diff > 1e-4:
            raise SystemExit(f"the exported model differs from torch by {diff:.2e} (> 1e-4)")


if __name__ == "__main__":
    main()
