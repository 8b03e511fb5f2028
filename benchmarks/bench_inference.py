"""Inference and training speed by precision and memory layout, end-to-end predict, and MONAI's SegResNet beside ours.

Usage::

    python benchmarks/bench_inference.py [--threads 2] [--device cpu|cuda] [--sample 24]

On a real 240x240x155 case of ``../shared/data/brats2018`` (a synthetic case of the same size when it
is absent), in one run:

* the practical ceiling: GFLOP/s of one large 64->64 3x3 convolution in fp32 and in bf16;
* whole-volume inference (the brain's box, every slice that holds brain, as ``predict`` runs it) of
  the FCN, FCN + symmetry maps, TwoPathCNN and the three cascades, in fp32 NCHW (the old default),
  fp32 channels-last and bf16 channels-last (the default where the hardware has bf16), with the
  GFLOP/s achieved. The default is timed on the whole volume; the slower settings of the patch CNNs
  on ``--sample`` slices spread over the volume, scaled to the volume (marked ``*``);
* ``python -m brats_lightning.predict`` of FCN + symmetry maps end to end on two cases (random
  weights: speed only), split into read, preprocess, symmetry maps, inference and write;
* MONAI's SegResNet as in MONAI's BraTS bundle (4 in, 3 out, ``init_filters=16``,
  ``blocks_down=(1, 2, 2, 4)``, ``blocks_up=(1, 1, 1)``) with ``sliding_window_inference`` (ROI
  240x240x160, overlap 0.5, one window at a time) on the same volume, fp32 and bf16;
* training throughput: FCN + symmetry slices/s and TwoPathCNN patches/s, fp32 and bf16.

The last line is a JSON object with ``predict_s_per_case``, ``twopath_volume_s``,
``cascade_volume_s_max``, ``bf16_speedup_fcn_sym_inference``, ``bf16_speedup_fcn_training``,
``segresnet_over_fcn_sym`` and the other figures.
"""

from __future__ import annotations

import argparse
import functools
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _common import best_time, brats_root, json_line, table

from brats_lightning.data.io import discover_cases
from brats_lightning.data.labels import get_convention
from brats_lightning.data.preprocess import PreprocessConfig, SymmetryConfig, crop, preprocess_case
from brats_lightning.inference import predict_volume
from brats_lightning.modules.fcn import FCNModule
from brats_lightning.modules.patch import PatchCNNModule

SETTINGS = (("fp32 NCHW", False, False), ("fp32 CL", True, False), ("bf16 CL", True, True))
#: the FCN as it ran before this work: fp32, NCHW, upsampling then convolving, batch norm unfused
BEFORE = "fp32 NCHW, literal"


def conv_ceiling(device: str, bf16: bool) -> float:
    """GFLOP/s of one 64->64 3x3 convolution on 8x64x144x192, channels-last."""
    conv = torch.nn.Conv2d(64, 64, 3, padding=1, bias=False).to(device).to(memory_format=torch.channels_last)
    x = torch.randn(8, 64, 144, 192, device=device).contiguous(memory_format=torch.channels_last)

    def run() -> None:
        with torch.inference_mode(), torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            conv(x)

    return 2 * 8 * 64 * 64 * 9 * 144 * 192 / best_time(run, device) / 1e9


def volume_time(
    module, image: torch.Tensor, mask: torch.Tensor, bf16: bool, device: str, batch: int, sample: int | None = None
) -> float:
    """Seconds to infer every brain slice of the volume (or ``sample`` of them, scaled to all)."""
    brain = torch.nonzero(mask.flatten(1).any(1)).flatten()
    if sample is not None and sample < brain.numel():
        pick = brain[torch.linspace(0, brain.numel() - 1, sample).long()]
        scale = brain.numel() / sample
    else:
        pick, scale = brain, 1.0
    img, msk = image[pick].to(device), mask[pick].to(device)

    def run() -> None:
        with torch.inference_mode(), torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            predict_volume(module.predict_slices, img, batch, msk)

    return best_time(run, device, repeats=1, warmup=1) * scale


def slice_flops(module, image: torch.Tensor) -> float:
    """Forward FLOPs of ``predict_slices`` on one slice of ``image``."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        module.predict_slices(image[:1].float())
    return float(counter.get_total_flops())


def build(name: str, channels: int, layout: bool, first: torch.nn.Module | None, literal: bool = False):
    if name.startswith("fcn"):
        m = FCNModule(channels, 4, channels_last=layout)
        if literal:
            m.net.low_res_upsampling = False
            return m.eval()
    else:
        m = PatchCNNModule(name, 4, 4, channels_last=layout)
        if first is not None and m.is_cascade:
            m.net.first.load_state_dict(first.state_dict())
    return m.prepare_for_inference()


def predict_end_to_end(root: Path, cases: list[str], threads: int) -> dict:
    """``predict`` of FCN + symmetry maps on ``cases`` (a random-weights checkpoint), with its report."""
    import pytorch_lightning as pl
    from omegaconf import OmegaConf

    from brats_lightning.predict import predict_dir

    work = Path(tempfile.mkdtemp(prefix="bench_predict_"))
    try:
        torch.manual_seed(0)
        m = FCNModule(8, 4)
        data_config = {
            "modalities": ["flair", "t1", "t1c", "t2"],
            "convention": "brats2017",
            "symmetry": SymmetryConfig(enabled=True).__dict__,
            "preprocess": PreprocessConfig().to_dict(),
            "layout": "auto",
            "files": None,
        }
        ckpt = work / "fcn_sym.ckpt"
        torch.save(
            {
                "module_class": "brats_lightning.modules.fcn.FCNModule",
                "hyper_parameters": dict(m.hparams),
                "state_dict": m.state_dict(),
                "data_config": data_config,
                "pytorch-lightning_version": pl.__version__,
            },
            ckpt,
        )
        inp = work / "in"
        inp.mkdir()
        for c in cases:
            (inp / c).symlink_to((root / c).resolve())
        cfg = OmegaConf.create(
            {
                "ckpt_path": str(ckpt),
                "input_dir": str(inp),
                "output_dir": str(work / "out"),
                "device": "cpu",
                "batch_size": 4,
                "probabilities": False,
                "postprocess": False,
                "overwrite": True,
                "precision": "auto",
            }
        )
        t0 = time.perf_counter()
        report = predict_dir(cfg)
        report["wall_s"] = time.perf_counter() - t0
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def segresnet_time(volume: torch.Tensor, device: str, bf16: bool) -> float:
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import SegResNet

    net = (
        SegResNet(
            spatial_dims=3,
            in_channels=4,
            out_channels=3,
            init_filters=16,
            blocks_down=(1, 2, 2, 4),
            blocks_up=(1, 1, 1),
        )
        .to(device)
        .eval()
    )
    x = volume[None].to(device)

    def run() -> None:
        with torch.inference_mode(), torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            sliding_window_inference(x, (240, 240, 160), 1, net, overlap=0.5)

    return best_time(run, device, repeats=1, warmup=1)


def _train_step(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, opt, bf16: bool) -> None:
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        o = net(x)
    o = o[:, :, 0, 0] if o.shape[-1] == 1 else o
    loss = F.cross_entropy(o.float(), y.to(x.device))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def training_rates(device: str) -> dict[str, float]:
    from brats_lightning.nets.fcn import ShenFCN
    from brats_lightning.nets.twopath import TwoPathCNN

    out = {}
    for name, make, x, y, n in (
        ("fcn_sym", lambda: ShenFCN(8, 4), torch.randn(8, 8, 144, 192), torch.randint(0, 4, (8, 144, 192)), 8),
        ("twopath", lambda: TwoPathCNN(4, 4), torch.randn(128, 4, 33, 33), torch.randint(0, 4, (128,)), 128),
    ):
        for label, layout, bf16 in SETTINGS:
            net = make().to(device)
            xi = x.to(device)
            if layout:
                net = net.to(memory_format=torch.channels_last)
                xi = xi.contiguous(memory_format=torch.channels_last)
            opt = torch.optim.SGD(net.parameters(), lr=1e-3)

            step = functools.partial(_train_step, net, xi, y, opt, bf16)
            out[f"{name} {label}"] = n / best_time(step, device, repeats=2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sample", type=int, default=24, help="slices timed for the slow settings of patch CNNs")
    parser.add_argument("--skip-segresnet", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dev = args.device
    root, what = brats_root(2)
    names = sorted(p.name for p in root.iterdir() if p.is_dir())
    case = discover_cases(root)[0]
    pre = preprocess_case(case, get_convention("brats2017"), PreprocessConfig(), SymmetryConfig(enabled=True))
    image8 = torch.from_numpy(np.ascontiguousarray(crop(pre.image, pre.box).transpose(3, 0, 1, 2)))
    mask = torch.from_numpy(np.ascontiguousarray(crop(pre.mask, pre.box).transpose(2, 0, 1)))
    image4 = image8[:, :4].contiguous()
    n_brain = int(mask.flatten(1).any(1).sum())
    print(
        f"Data: {what}; {case.case_id}: brain box {tuple(image8.shape[2:])}, {n_brain} slices with brain; "
        f"{args.threads} threads on {dev}\n"
    )

    ceiling = {p: conv_ceiling(dev, p == "bf16") for p in ("fp32", "bf16")}
    print(
        f"Large 3x3 convolution (64->64, 8x144x192): {ceiling['fp32']:.0f} GFLOP/s fp32, "
        f"{ceiling['bf16']:.0f} GFLOP/s bf16\n"
    )

    torch.manual_seed(0)
    first = PatchCNNModule("twopath", 4, 4).net
    nets = [("fcn", 4), ("fcn_sym", 8), ("twopath", 4), ("input_cascade", 4), ("local_cascade", 4), ("mf_cascade", 4)]
    rows, vol = [], {}
    for name, ch in nets:
        img = image8 if ch == 8 else image4
        flops = slice_flops(build(name, ch, True, first), img) * n_brain
        cells = [name.replace("fcn_sym", "FCN+sym").replace("fcn", "FCN")]
        if name.startswith("fcn"):
            t = volume_time(build(name, ch, False, first, literal=True).to(dev), img, mask, False, dev, 4)
            vol[(name, BEFORE)] = t
            cells.append(f"{t:.1f} ({flops / t / 1e9:.0f})")
        else:
            cells.append("-")
        for label, layout, bf16 in SETTINGS:
            m = build(name, ch, layout, first).to(dev)
            sample = None if (name.startswith("fcn") or label == "bf16 CL") else args.sample
            t = volume_time(m, img, mask, bf16, dev, 4, sample)
            vol[(name, label)] = t
            cells.append(f"{t:.1f}{'*' if sample else ''} ({flops / t / 1e9:.0f})")
        rows.append(cells)
    print(table(rows, ["whole volume, s (GFLOP/s)", BEFORE, *[s[0] for s in SETTINGS]]))
    print("* extrapolated from", args.sample, "slices spread over the volume\n")

    report = predict_end_to_end(root, names[:2], args.threads)
    per_case = report["wall_s"] / max(1, len(report["done"]))
    stages = ("read", "preprocess", "symmetry", "inference", "write", "total")
    rows = [[c, *[f"{t[s]:.2f}" for s in stages]] for c, t in report["times_s"].items()]
    print(table(rows, ["predict FCN+sym (bf16), s", *stages]))
    print(
        f"end to end: {report['wall_s']:.1f} s for {len(report['done'])} cases = {per_case:.1f} s per case "
        "(the next case is read while one is inferred)\n"
    )

    seg = {}
    if not args.skip_segresnet:
        full = torch.from_numpy(np.ascontiguousarray(pre.image[:4]))  # (4, X, Y, Z) of the whole 240x240x155 grid
        for p in ("fp32", "bf16"):
            seg[p] = segresnet_time(full, dev, p == "bf16")
        ours = vol[("fcn_sym", "bf16 CL")]
        print(
            f"MONAI SegResNet (BraTS bundle), sliding window on the whole volume: {seg['fp32']:.1f} s fp32 (the "
            f"bundle's setting on a CPU), {seg['bf16']:.1f} s bf16; our FCN+sym {ours:.1f} s (bf16 CL): SegResNet "
            f"takes {seg['fp32'] / ours:.2f}x ours as the bundle runs, {seg['bf16'] / ours:.2f}x in bf16\n"
        )

    train = training_rates(dev)
    print(table([[k, f"{v:,.1f}"] for k, v in train.items()], ["training throughput", "samples/s"]))
    fcn_sym_speedup = vol[("fcn_sym", "fp32 CL")] / vol[("fcn_sym", "bf16 CL")]
    figures = {
        "predict_s_per_case": per_case,
        "predict_stage_totals_s": report["totals_s"],
        "twopath_volume_s": vol[("twopath", "bf16 CL")],
        "cascade_volume_s_max": max(vol[(n, "bf16 CL")] for n in ("input_cascade", "local_cascade", "mf_cascade")),
        "bf16_speedup_fcn_sym_inference": fcn_sym_speedup,
        "speedup_fcn_sym_inference_vs_fp32_nchw": vol[("fcn_sym", "fp32 NCHW")] / vol[("fcn_sym", "bf16 CL")],
        "speedup_fcn_sym_inference_vs_before": vol[("fcn_sym", BEFORE)] / vol[("fcn_sym", "bf16 CL")],
        "bf16_speedup_fcn_training": train["fcn_sym bf16 CL"] / train["fcn_sym fp32 CL"],
        "speedup_fcn_training_vs_fp32_nchw": train["fcn_sym bf16 CL"] / train["fcn_sym fp32 NCHW"],
        "bf16_speedup_twopath_training": train["twopath bf16 CL"] / train["twopath fp32 CL"],
        # MONAI's bundle runs fp32 on a CPU (its amp is CUDA autocast): the peer as a user runs it here
        "segresnet_over_fcn_sym": (seg["fp32"] / vol[("fcn_sym", "bf16 CL")]) if seg else None,
        "segresnet_bf16_over_fcn_sym": (seg["bf16"] / vol[("fcn_sym", "bf16 CL")]) if seg else None,
        "segresnet_s": seg,
        "conv_gflops": ceiling,
        "volume_s": {f"{n} {s}": v for (n, s), v in vol.items()},
        "training_per_s": train,
        "data": what,
        "threads": args.threads,
    }
    print(json_line(figures))


if __name__ == "__main__":
    main()
