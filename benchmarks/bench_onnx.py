"""An exported ONNX model run by onnxruntime against the same net in torch, per volume, on this CPU.

Usage::

    python benchmarks/bench_onnx.py [--threads 2] [--sample 24]

On a real 240x240x155 case of ``../shared/data/brats2018`` (a synthetic case of the same size when it
is absent), the brain's box, every slice with brain (as ``predict`` runs it), random weights (speed
only): the FCN + symmetry maps and TwoPathCNN exported with ``brats_lightning.export``, timed as
torch fp32, torch bf16 autocast (the default where the CPU has bf16) and onnxruntime fp32 (CPU
execution provider, ``--threads`` intra-op threads), with the largest difference of the
probabilities of onnxruntime and torch fp32. TwoPathCNN is timed on ``--sample`` slices spread over
the volume and scaled to it. The last line is a JSON object with the figures.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from _common import best_time, brats_root, json_line, table

from brats_lightning.data.labels import get_convention
from brats_lightning.data.layouts import discover_cases
from brats_lightning.data.preprocess import PreprocessConfig, SymmetryConfig, crop, preprocess_case
from brats_lightning.export import export_onnx
from brats_lightning.inference.volume import predict_volume
from brats_lightning.load.onnx import OnnxModule
from brats_lightning.modules.fcn import FCNModule
from brats_lightning.modules.patch import PatchCNNModule
from brats_lightning.modules.segmentation import SegmentationModule


def volume_seconds(
    module: SegmentationModule, image: torch.Tensor, mask: torch.Tensor, bf16: bool, sample: int | None
) -> float:
    brain = torch.nonzero(mask.flatten(1).any(1)).flatten()
    pick, scale = brain, 1.0
    if sample is not None and sample < brain.numel():
        pick = brain[torch.linspace(0, brain.numel() - 1, sample).long()]
        scale = brain.numel() / sample
    img, msk = image[pick], mask[pick]

    def run() -> None:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            predict_volume(module.predict_slices, img, module.inference_batch_size, msk)

    return best_time(run, repeats=1, warmup=1) * scale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sample", type=int, default=24, help="TwoPathCNN: slices timed, scaled to the volume")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root, what = brats_root(1)
    case = discover_cases(root)[0]
    pre = preprocess_case(case, get_convention("brats2017"), PreprocessConfig(), SymmetryConfig(enabled=True))
    image8 = torch.from_numpy(np.ascontiguousarray(crop(pre.image, pre.box).transpose(3, 0, 1, 2)))
    mask = torch.from_numpy(np.ascontiguousarray(crop(pre.mask, pre.box).transpose(2, 0, 1)))
    n_brain = int(mask.flatten(1).any(1).sum())
    print(
        f"Data: {what}; {case.case_id}: brain box {tuple(image8.shape[2:])}, {n_brain} slices with brain; "
        f"{args.threads} threads\n"
    )
    torch.manual_seed(0)
    nets = {
        "FCN + symmetry": (FCNModule(8, 4, inference_batch_size=4), image8, None),
        "TwoPathCNN": (
            PatchCNNModule("twopath", 4, 4, inference_batch_size=4),
            image8[:, :4].contiguous(),
            args.sample,
        ),
    }
    rows, figures = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (module, image, sample) in nets.items():
            module = module.prepare_for_inference()
            path = export_onnx(module, {}, Path(tmp) / "m.onnx")
            onnx = OnnxModule(path, threads=args.threads)
            onnx.inference_batch_size = module.inference_batch_size
            x = image[n_brain // 2 : n_brain // 2 + 2]
            with torch.inference_mode():
                diff = float((onnx.predict_slices(x) - module.predict_slices(x)).abs().max())
            t = {
                "torch fp32": volume_seconds(module, image, mask, False, sample),
                "torch bf16": volume_seconds(module, image, mask, True, sample),
                "onnxruntime fp32": volume_seconds(onnx, image, mask, False, sample),
            }
            key = name.split()[0].lower()
            rows.append(
                [
                    name + (" *" if sample else ""),
                    *(f"{v:.1f}" for v in t.values()),
                    f"{t['torch fp32'] / t['onnxruntime fp32']:.2f}",
                    f"{diff:.1e}",
                ]
            )
            figures |= {
                f"{key}_torch_fp32_s": round(t["torch fp32"], 2),
                f"{key}_torch_bf16_s": round(t["torch bf16"], 2),
                f"{key}_onnxruntime_s": round(t["onnxruntime fp32"], 2),
                f"{key}_max_abs_diff": f"{diff:.1e}",
            }
    print(table(rows, ["net", "torch fp32 s", "torch bf16 s", "onnxruntime s", "torch fp32 / ort", "max |diff|"]))
    print("\n* timed on a sample of slices, scaled to the volume")
    print(json_line(figures))


if __name__ == "__main__":
    main()
