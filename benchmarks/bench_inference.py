"""Inference and training speed by precision and memory layout, end-to-end predict, and MONAI's SegResNet beside ours.

Usage::

    python benchmarks/bench_inference.py [--threads 2] [--device cpu|cuda] [--sample 24] [--cases 2]
        [--compile-timeout 900]

On a real 240x240x155 case of ``../shared/data/brats2018`` (a synthetic case of the same size when it
is absent), in one run:

* the large convolution's rate (one 64->64 3x3 convolution, fp32 and bf16: the figure that compares machines);
* the ceiling, per precision: the best rate over the large convolution and every convolution shape the six nets
  run (recorded as dispatched, replayed alone), beside the CPU's theoretical peak (FLOP per cycle x clock x
  cores, from what the CPU reports); a net's rate is refused (the benchmark stops) if it beats its ceiling;
* whole-volume inference (the brain's box, every slice that holds brain, as ``predict`` runs it) of
  the FCN, FCN + symmetry maps, TwoPathCNN and the three cascades, in fp32 NCHW (the old default),
  fp32 channels-last and bf16 channels-last (the default where the hardware has bf16), with the
  GFLOP/s achieved. The default is timed on the whole volume; the slower settings of the patch CNNs
  on ``--sample`` slices spread over the volume, scaled to the volume (marked ``*``); the patch CNNs
  also with their stride-1 pooling and 21x21 output layer run as written (``F.max_pool2d`` and the
  convolution itself, ``nets.twopath.FAST_LAYERS=False``), the code before this change, in the same run;
  and every net's channels-last rate as a fraction of the ceiling;
* ``model.compile``: FCN + symmetry maps with and without ``torch.compile`` (inductor): compile time
  (the first call) and the steady speed, of inference (16 slices) and of a training step; in a child
  process given ``--compile-timeout`` seconds (inductor compiles C++ kernels with the machine's
  compiler, which can take long on few cores): when it runs out, the JSON says so
  (``compile.finished: false``) and the rest of the figures stand;
* end to end, like for like, from the same NIfTI files of the same ``--cases`` cases to label files
  written, on the CPU with the same threads, in fp32 and in bf16 (bf16 only on CPUs with bf16 units),
  random weights (speed only):

  - ours: ``python -m brats_lightning.predict`` of FCN + symmetry maps (``precision=fp32`` /
    ``bf16``), split into read, preprocess, symmetry maps, inference and write;
  - MONAI's SegResNet as MONAI's BraTS bundle runs it (``brats_mri_segmentation``: 4 in, 3 out,
    ``init_filters=16``, ``blocks_down=(1, 2, 2, 4)``, ``blocks_up=(1, 1, 1)``; load, orientation,
    1 mm spacing, foreground crop, ``NormalizeIntensityd(nonzero, channel_wise)``,
    ``sliding_window_inference`` with ROI 240x240x160, overlap 0.5, one window at a time, sigmoid >
    0.5 to BraTS labels, the crop undone, NIfTI written), fp32 and bf16 autocast, split into load,
    preprocess, inference and write;

  with SegResNet's seconds per case over ours, per precision, and its 95% interval paired over the cases
  (:func:`brats_lightning.stats.ratio_interval`): "no measurable difference" when it holds 1;
* the speed-ups the figures quote (bf16 over fp32, channels-last over NCHW, the patch CNNs' fast layers),
  timed in ``--pairs`` interleaved pairs on 16 slices, each with its 95% interval;
* training throughput: FCN + symmetry slices/s and TwoPathCNN patches/s, fp32 and bf16.

A failed case in any ``predict`` run fails the benchmark. The last line is a JSON object with
``predict_s_per_case`` (the default precision: bf16 where the CPU has it), ``twopath_volume_s``,
``cascade_volume_s_max``, ``twopath_fraction_of_ceiling``, ``twopath_speedup_vs_layers_as_written``,
``cascade_speedup_vs_layers_as_written_min``, ``compile``, ``bf16_speedup_fcn_sym_inference``,
``bf16_speedup_fcn_training``,
``segresnet_over_fcn_sym`` (end to end, bf16), ``segresnet_over_fcn_sym_fp32`` (end to end, fp32),
``segresnet_over_fcn_sym_per_case_<precision>`` with ``_ci95_low`` / ``_ci95_high``, every paired speed-up with
its interval, ``conv_gflops`` (the large convolution), ``ceiling_gflops``, ``peak`` (the theoretical peak and
how it was found), ``fraction_of_ceiling``, ``predict_s_per_case_by_precision``, ``segresnet_s_per_case`` and
the other figures.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _common import (
    ConvCall,
    best_time,
    brats_root,
    conv_calls,
    conv_ceiling_over,
    conv_rate,
    cpu_peak,
    fraction_of,
    json_line,
    large_conv,
    paired_ratio,
    peak_line,
    table,
)

from brats_lightning.data.labels import get_convention
from brats_lightning.data.layouts import discover_cases
from brats_lightning.data.preprocess import PreprocessConfig, SymmetryConfig, crop, preprocess_case
from brats_lightning.inference.volume import predict_volume
from brats_lightning.modules.fcn import FCNModule
from brats_lightning.modules.patch import PatchCNNModule
from brats_lightning.nets import twopath
from brats_lightning.precision import bf16_supported
from brats_lightning.stats import Estimate, ratio_interval

SETTINGS = (("fp32 NCHW", False, False), ("fp32 CL", True, False), ("bf16 CL", True, True))
#: the patch CNNs in bf16 channels-last with their pooling and output layer as written (``FAST_LAYERS=False``)
AS_WRITTEN = "bf16 CL, layers as written"
#: the FCN as it ran before this work: fp32, NCHW, upsampling then convolving, batch norm unfused
BEFORE = "fp32 NCHW, literal"


def net_conv_calls(
    module, image: torch.Tensor, mask: torch.Tensor, bf16: bool, device: str, batch: int
) -> list[ConvCall]:
    """Every convolution the net runs on the volume as :func:`volume_time` runs it: a full batch of brain slices
    and the last, partial one (the shapes differ only in the batch)."""
    brain = torch.nonzero(mask.flatten(1).any(1)).flatten()
    sizes = {batch, brain.numel() % batch} - {0}
    calls: list[ConvCall] = []
    for n in sorted(sizes):
        img, msk = image[brain[:n]].to(device), mask[brain[:n]].to(device)

        def run(img=img, msk=msk) -> None:
            with torch.inference_mode(), torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
                predict_volume(module.predict_slices, img, batch, msk)

        calls += conv_calls(run)
    return calls


def ceilings(calls: dict[str, list[ConvCall]], device: str) -> dict[str, dict]:
    """Per precision, the large convolution's rate and the ceiling: the best rate over the large convolution and
    every layer shape of the nets (``calls``, by precision), with the layer that reached it."""
    out = {}
    for p, layer_calls in calls.items():
        large = large_conv(device, p == "bf16")
        best, where, rates = conv_ceiling_over([large, *layer_calls], device)
        out[p] = {"large_conv": rates[large], "ceiling": best, "at": where, "shapes": len(rates)}
    return out


def conv_ceiling(device: str, bf16: bool) -> float:
    """GFLOP/s of the large convolution (64->64 3x3 on 8x64x144x192, channels-last): the rate printed beside every
    rate, to compare machines (not a ceiling of the nets: :func:`ceilings` is)."""
    return conv_rate(large_conv(device, bf16), device)


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


def slices_call(module, image: torch.Tensor, mask: torch.Tensor, bf16: bool, device: str, n: int = 16):
    """A call that infers ``n`` brain slices spread over the volume (for paired timings)."""
    brain = torch.nonzero(mask.flatten(1).any(1)).flatten()
    pick = brain[torch.linspace(0, brain.numel() - 1, min(n, brain.numel())).long()]
    img, msk = image[pick].to(device), mask[pick].to(device)

    def run() -> None:
        with torch.inference_mode(), torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            predict_volume(module.predict_slices, img, 4, msk)

    return run


def paired_ratios(image8: torch.Tensor, image4: torch.Tensor, mask: torch.Tensor, device: str, pairs: int) -> dict:
    """The speed-ups the benchmark reports, each timed in interleaved pairs (16 slices) with its 95% interval."""
    torch.manual_seed(0)
    fcn_cl = build("fcn_sym", 8, True, None).to(device)
    fcn_before = build("fcn_sym", 8, False, None, literal=True).to(device)
    fcn_nchw = build("fcn_sym", 8, False, None).to(device)
    twopath_net = build("twopath", 4, True, None).to(device)
    bf16 = slices_call(fcn_cl, image8, mask, True, device)

    def as_written() -> None:
        twopath.FAST_LAYERS = False
        try:
            slices_call(twopath_net, image4, mask, True, device, 8)()
        finally:
            twopath.FAST_LAYERS = True

    fp32 = functools.partial(slices_call, image=image8, mask=mask, bf16=False, device=device)
    fast_twopath = slices_call(twopath_net, image4, mask, True, device, 8)
    specs = {
        "bf16_speedup_fcn_sym_inference": ("FCN+sym: fp32 CL over bf16 CL", fp32(fcn_cl), bf16),
        "speedup_fcn_sym_inference_vs_fp32_nchw": ("FCN+sym: fp32 NCHW over bf16 CL", fp32(fcn_nchw), bf16),
        "speedup_fcn_sym_inference_vs_before": (
            "FCN+sym: fp32 NCHW literal (before) over bf16 CL",
            fp32(fcn_before),
            bf16,
        ),
        "twopath_speedup_vs_layers_as_written": (
            "TwoPathCNN bf16 CL: layers as written over fast layers",
            as_written,
            fast_twopath,
        ),
    }
    out = {}
    for key, (label, slow, fast) in specs.items():
        out[key] = (label, paired_ratio(slow, fast, device, pairs))
    return out


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


def check_predict_report(report: dict, cases: list[str], what: str) -> None:
    """Fail the benchmark unless ``predict`` wrote every case of ``cases``.

    Raises:
        SystemExit: a case failed (named, with the reason from the report's ``failed``), a case is
            neither done nor failed, or no case is done.
    """
    problems = [f"{c} ({why})" for c, why in report["failed"].items()]
    missing = [c for c in cases if c not in report["done"] and c not in report["failed"]]
    problems += [f"{c} (neither done nor failed)" for c in missing]
    if problems or not report["done"]:
        raise SystemExit(f"{what}: {'failed: ' + '; '.join(problems) if problems else 'no case done'}")


def predict_end_to_end(root: Path, cases: list[str], threads: int, precision: str = "auto", width: float = 1.0) -> dict:
    """``predict`` of FCN + symmetry maps on ``cases`` (a random-weights checkpoint), with its report.

    ``width`` scales every layer's channels (``model.width``; 0.5: a quarter of the FLOPs).

    Raises:
        SystemExit: a case failed or none was done (:func:`check_predict_report`).
    """
    import pytorch_lightning as pl
    from omegaconf import OmegaConf

    from brats_lightning.predict import predict_dir

    work = Path(tempfile.mkdtemp(prefix="bench_predict_"))
    try:
        torch.manual_seed(0)
        m = FCNModule(8, 4, width=width)
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
                "precision": precision,
            }
        )
        t0 = time.perf_counter()
        report = predict_dir(cfg)
        report["wall_s"] = time.perf_counter() - t0
        check_predict_report(report, cases, f"predict FCN+sym (precision={precision}, width={width})")
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


#: MONAI's BraTS bundle, Project-MONAI/model-zoo ``models/brats_mri_segmentation``: the input channels
#: in the order of its ``scripts/prepare_datalist.py`` (t1ce, t1, t2, flair), the sliding window of its
#: ``configs/inference.json`` (ROI 240x240x160, ``sw_batch_size`` 1, overlap 0.5)
SEGRESNET_MODALITIES = ("t1c", "t1", "t2", "flair")
SEGRESNET_ROI = (240, 240, 160)
SEGRESNET_STAGES = ("load", "preprocess", "inference", "write")


def segresnet_end_to_end(root: Path, cases: list[str], bf16: bool, roi: tuple[int, int, int] = SEGRESNET_ROI) -> dict:
    """MONAI's SegResNet as its BraTS bundle runs it, from the NIfTI files of ``cases`` to label files written.

    Follows ``configs/inference.json`` of Project-MONAI/model-zoo ``models/brats_mri_segmentation``:
    the network (SegResNet, 4 in, 3 out, ``init_filters=16``, ``blocks_down=(1, 2, 2, 4)``,
    ``blocks_up=(1, 1, 1)``; its ``dropout_prob=0.2`` is inactive in eval mode), ``LoadImaged`` of
    the four files, ``NormalizeIntensityd(nonzero=True, channel_wise=True)``, the sliding window,
    sigmoid, ``Invertd``, threshold 0.5, its labels (ET -> 4, else TC -> 1, else WT -> 2) and the
    label map saved in the input's geometry. Added, as MONAI's BraTS tutorial and ``predict`` do:
    orientation to RAS and 1 mm spacing (a no-op on BraTS data), and a crop to the foreground
    (undone before writing; with the bundle's ROI the window is padded back to 240x240x160, so it
    saves nothing in inference). Random weights: speed only. One case after the other in this
    process, with this process's threads.

    Args:
        root: the data set (a folder of case folders).
        cases: the case ids to segment.
        bf16: run the network under bf16 autocast (the bundle runs fp32 on a CPU: its ``amp`` is
            CUDA autocast).
        roi: the sliding window's ROI (smaller only for smoke tests).

    Returns:
        ``done``, ``times_s`` (per case: load, preprocess, inference, write, total), ``totals_s``
        and ``wall_s`` (everything, building the network included).
    """
    import nibabel as nib
    from monai.data import MetaTensor
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import SegResNet
    from monai.transforms import (
        Compose,
        CropForegroundd,
        EnsureChannelFirstd,
        Invertd,
        LoadImaged,
        NormalizeIntensityd,
        Orientationd,
        Spacingd,
    )

    by_id = {c.case_id: c for c in discover_cases(root)}
    work = Path(tempfile.mkdtemp(prefix="bench_segresnet_"))
    try:
        t_start = time.perf_counter()
        torch.manual_seed(0)
        net = SegResNet(
            spatial_dims=3,
            in_channels=4,
            out_channels=3,
            init_filters=16,
            blocks_down=(1, 2, 2, 4),
            blocks_up=(1, 1, 1),
        ).eval()
        load = Compose([LoadImaged("image"), EnsureChannelFirstd("image")])
        # the crop goes before the normalisation: CropForegroundd keeps voxels > 0 (any channel), and
        # z-scores of brain voxels below the mean are negative
        preprocess = Compose(
            [
                Orientationd("image", axcodes="RAS"),
                Spacingd("image", pixdim=(1.0, 1.0, 1.0)),
                CropForegroundd("image", source_key="image"),
                NormalizeIntensityd("image", nonzero=True, channel_wise=True),
            ]
        )
        # the bundle inverts the sigmoid probabilities (interpolating) and thresholds after
        invert = Invertd("pred", transform=preprocess, orig_keys="image", nearest_interp=False)
        times: dict[str, dict[str, float]] = {}
        for case_id in cases:
            t0 = time.perf_counter()
            d = load({"image": [str(by_id[case_id].images[m]) for m in SEGRESNET_MODALITIES]})
            affine, shape = d["image"].affine.numpy(), tuple(d["image"].shape[1:])
            t1 = time.perf_counter()
            d = preprocess(d)
            t2 = time.perf_counter()
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = sliding_window_inference(d["image"].as_tensor()[None], roi, 1, net, overlap=0.5)
            d["pred"] = MetaTensor(torch.sigmoid(logits[0].float()))  # Invertd takes the image's transforms
            t3 = time.perf_counter()
            x = invert(d)["pred"].as_tensor() > 0.5  # (TC, WT, ET) in the input's grid
            labels = torch.where(x[2], 4, torch.where(x[0], 1, torch.where(x[1], 2, 0))).to(torch.uint8).numpy()
            if labels.shape != shape:
                raise SystemExit(f"SegResNet: {case_id}: label map {labels.shape} != input {shape}")
            nib.save(nib.Nifti1Image(labels, affine), work / f"{case_id}.nii.gz")
            t4 = time.perf_counter()
            t = dict(zip(SEGRESNET_STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True))
            times[case_id] = {k: round(v, 3) for k, v in {**t, "total": t4 - t0}.items()}
        wall = time.perf_counter() - t_start
        totals = {s: round(sum(t[s] for t in times.values()), 3) for s in (*SEGRESNET_STAGES, "total")}
        return {"done": list(times), "times_s": times, "totals_s": totals, "wall_s": wall}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def compile_figures(image8: torch.Tensor, mask: torch.Tensor, device: str) -> dict[str, float]:
    """``model.compile``: FCN + symmetry maps with and without ``torch.compile`` (inductor), bf16 where the
    hardware has it: the compile time (the first call) and the steady speed, inference and training."""
    from brats_lightning.precision import bf16_supported

    bf16 = bf16_supported(device)
    out: dict[str, float] = {}
    brain = torch.nonzero(mask.flatten(1).any(1)).flatten()
    pick = brain[torch.linspace(0, brain.numel() - 1, 16).long()]
    img, msk = image8[pick].to(device), mask[pick].to(device)
    x = torch.randn(8, 8, 144, 192, device=device)
    y = torch.randint(0, 4, (8, 144, 192), device=device)
    for compiled in (False, True):
        torch.manual_seed(0)
        m = FCNModule(8, 4, compile=compiled).to(device)
        inf = FCNModule(8, 4, compile=compiled).to(device).prepare_for_inference()

        def infer(inf=inf) -> None:
            with torch.inference_mode(), torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
                predict_volume(inf.predict_slices, img, 4, msk)

        opt = torch.optim.Adam(m.parameters(), 1e-3)

        def step(m=m, opt=opt) -> None:
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
                loss = m.loss(m.run_net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        key = "compiled" if compiled else "eager"
        t0 = time.perf_counter()
        infer()
        out[f"{key}_first_inference_s"] = time.perf_counter() - t0
        out[f"{key}_inference_s_16_slices"] = best_time(infer, device, repeats=2)
        t0 = time.perf_counter()
        step()
        out[f"{key}_first_step_s"] = time.perf_counter() - t0
        out[f"{key}_step_s"] = best_time(step, device, repeats=2)
    out["compile_s_inference"] = out["compiled_first_inference_s"] - out["eager_inference_s_16_slices"]
    out["compile_s_training"] = out["compiled_first_step_s"] - out["eager_step_s"]
    out["compile_speedup_inference"] = out["eager_inference_s_16_slices"] / out["compiled_inference_s_16_slices"]
    out["compile_speedup_training"] = out["eager_step_s"] / out["compiled_step_s"]
    print(
        table(
            [[k, f"{v:.2f}"] for k, v in out.items()],
            [f"torch.compile of FCN+sym ({'bf16' if bf16 else 'fp32'}), 16 slices / a batch of 8", "value"],
        )
    )
    print(
        f"model.compile: compiling takes {out['compile_s_inference']:.0f} s (inference) and "
        f"{out['compile_s_training']:.0f} s (training); then {out['compile_speedup_inference']:.2f}x inference, "
        f"{out['compile_speedup_training']:.2f}x training\n"
    )
    return out


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


def s_per_case(report: dict) -> float:
    """Wall seconds of an end-to-end run per case done."""
    return report["wall_s"] / len(report["done"])


def ratio(seg: dict[str, dict], ours: dict[str, dict], precision: str) -> float | None:
    """SegResNet's seconds per case over ours in ``precision``, or ``None`` when either did not run."""
    if precision not in seg or precision not in ours:
        return None
    return s_per_case(seg[precision]) / s_per_case(ours[precision])


def case_ratio(seg: dict, ours: dict) -> Estimate:
    """SegResNet's seconds over ours, paired per case (each case's stage total), with its 95% interval."""
    done = [c for c in seg["done"] if c in ours["times_s"]]
    return ratio_interval([seg["times_s"][c]["total"] for c in done], [ours["times_s"][c]["total"] for c in done])


def stage_table(title: str, report: dict, stages: tuple[str, ...]) -> str:
    """Per-case seconds of each stage of an end-to-end run."""
    rows = [[c, *[f"{t[s]:.2f}" for s in (*stages, "total")]] for c, t in report["times_s"].items()]
    return table(rows, [title, *stages, "total"])


def end_to_end(root: Path, cases: list[str], threads: int, segresnet: bool) -> tuple[dict, dict]:
    """Ours (``predict``, FCN + symmetry maps) and MONAI's SegResNet, NIfTI in to labels out, fp32 and bf16.

    Both on the CPU with the same threads and cases; bf16 only on CPUs with bf16 units. Prints the
    stages of every run and, per precision, which is faster.

    Returns:
        Our reports and SegResNet's by precision (``fp32``, ``bf16``).
    """
    from brats_lightning.predict.cases import STAGES

    precisions = ["fp32", "bf16"]
    if not bf16_supported("cpu"):
        precisions = ["fp32"]
        print(
            "bf16 end to end skipped: this CPU has no bf16 units (AMX or AVX-512 bf16), so predict refuses "
            "precision=bf16; fp32 only\n"
        )
    ours: dict[str, dict] = {}
    seg: dict[str, dict] = {}
    for p in precisions:
        ours[p] = predict_end_to_end(root, cases, threads, p)
        print(stage_table(f"predict FCN+sym ({p}), s", ours[p], STAGES))
        print(
            f"end to end: {ours[p]['wall_s']:.1f} s for {len(ours[p]['done'])} cases = {s_per_case(ours[p]):.1f} s "
            "per case (the next case is read while one is inferred)\n"
        )
        if segresnet:
            seg[p] = segresnet_end_to_end(root, cases, p == "bf16")
            print(stage_table(f"MONAI SegResNet ({p}), s", seg[p], SEGRESNET_STAGES))
            print(
                f"end to end: {seg[p]['wall_s']:.1f} s for {len(seg[p]['done'])} cases = "
                f"{s_per_case(seg[p]):.1f} s per case (one case after the other)\n"
            )
    if not seg:
        return ours, seg
    per_case = {p: case_ratio(seg[p], ours[p]) for p in precisions}
    rows = [
        [
            p,
            f"{s_per_case(ours[p]):.1f}",
            f"{s_per_case(seg[p]):.1f}",
            f"{ratio(seg, ours, p):.2f}",
            f"{per_case[p].value:.2f} {per_case[p].interval(2)}",
        ]
        for p in precisions
    ]
    header = ["end to end, s per case", "ours (FCN+sym)", "SegResNet", "SegResNet / ours", "per case, 95% interval"]
    print(table(rows, header))
    for p in precisions:
        a, b, e = s_per_case(ours[p]), s_per_case(seg[p]), per_case[p]
        if e.holds(1.0):
            print(
                f"{p}: no measurable difference end to end: SegResNet / ours {e.value:.2f} {e.interval(2)} over "
                f"{e.n} cases ({b:.1f} s against our {a:.1f} s per case)"
            )
        elif e.low > 1:
            print(f"{p}: ours is faster end to end, {a:.1f} s per case against SegResNet's {b:.1f} s ({e.describe(2)})")
        else:
            print(f"{p}: SegResNet is faster end to end, {b:.1f} s per case against our {a:.1f} s ({e.describe(2)})")
    print()
    return ours, seg


def compile_in_child(threads: int, device: str, timeout_s: float) -> dict:
    """:func:`compile_figures` in a child process (this script with ``--compile-only``), killed after
    ``timeout_s`` seconds; ``finished`` says whether it completed."""
    if timeout_s <= 0:
        print("model.compile: skipped (--compile-timeout 0)\n")
        return {"finished": False, "skipped": True}
    cmd = [sys.executable, __file__, "--compile-only", "--threads", str(threads), "--device", device, "--cases", "1"]
    t0 = time.perf_counter()
    # a session of its own, so that inductor's compile workers go with it when it is stopped
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = child.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        print(f"model.compile: not finished after {timeout_s:.0f} s (compiling + timing); not measured\n")
        return {"finished": False, "timeout_s": timeout_s}
    done = subprocess.CompletedProcess(cmd, child.returncode, stdout, stderr)
    if done.returncode != 0:
        raise RuntimeError(f"the compile section failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    print(done.stdout[: done.stdout.rstrip().rfind("\n") + 1])
    figures = json.loads(done.stdout.rstrip().splitlines()[-1])
    return {"finished": True, "wall_s": time.perf_counter() - t0, **figures}


def load_case(cases: int) -> tuple[Path, str, str, torch.Tensor, torch.Tensor]:
    """The benchmark's folder, its description, the first case's id, its 8-channel brain box and brain mask."""
    root, what = brats_root(cases)
    case = discover_cases(root)[0]
    pre = preprocess_case(case, get_convention("brats2017"), PreprocessConfig(), SymmetryConfig(enabled=True))
    image8 = torch.from_numpy(np.ascontiguousarray(crop(pre.image, pre.box).transpose(3, 0, 1, 2)))
    mask = torch.from_numpy(np.ascontiguousarray(crop(pre.mask, pre.box).transpose(2, 0, 1)))
    return root, what, case.case_id, image8, mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sample", type=int, default=24, help="slices timed for the slow settings of patch CNNs")
    parser.add_argument("--skip-segresnet", action="store_true")
    parser.add_argument("--cases", type=int, default=2, help="cases of the end-to-end runs (ours and SegResNet)")
    parser.add_argument(
        "--compile-timeout", type=float, default=900, help="seconds for the torch.compile section (0: skip it)"
    )
    parser.add_argument("--pairs", type=int, default=5, help="interleaved pairs of each timed speed-up ratio")
    parser.add_argument("--compile-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dev = args.device
    root, what, case_id, image8, mask = load_case(args.cases)
    if args.compile_only:
        print(json_line(compile_figures(image8, mask, dev)))
        return
    names = sorted(p.name for p in root.iterdir() if p.is_dir())
    image4 = image8[:, :4].contiguous()
    n_brain = int(mask.flatten(1).any(1).sum())
    print(
        f"Data: {what}; {case_id}: brain box {tuple(image8.shape[2:])}, {n_brain} slices with brain; "
        f"{args.threads} threads on {dev}\n"
    )

    large = {p: conv_ceiling(dev, p == "bf16") for p in ("fp32", "bf16")}
    print(
        f"Large 3x3 convolution (64->64, 8x144x192): {large['fp32']:.0f} GFLOP/s fp32, {large['bf16']:.0f} GFLOP/s "
        "bf16\n"
    )

    torch.manual_seed(0)
    first = PatchCNNModule("twopath", 4, 4).net
    nets = [("fcn", 4), ("fcn_sym", 8), ("twopath", 4), ("input_cascade", 4), ("local_cascade", 4), ("mf_cascade", 4)]
    rows, vol = [], {}
    flops_of: dict[str, float] = {}
    layer_calls: dict[str, list[ConvCall]] = {"fp32": [], "bf16": []}
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
            if layout:  # the channels-last settings: their layer shapes join the ceiling of their precision
                layer_calls["bf16" if bf16 else "fp32"] += net_conv_calls(m, img, mask, bf16, dev, 4)
        if not name.startswith("fcn"):  # the same net, its pooling and output layer run as written (before)
            twopath.FAST_LAYERS = False
            try:
                t = volume_time(build(name, ch, True, first).to(dev), img, mask, True, dev, 4)
            finally:
                twopath.FAST_LAYERS = True
            vol[(name, AS_WRITTEN)] = t
            cells.append(f"{t:.1f} ({flops / t / 1e9:.0f})")
        else:
            cells.append("-")
        flops_of[name] = flops
        rows.append(cells)
    print(table(rows, ["whole volume, s (GFLOP/s)", BEFORE, *[s[0] for s in SETTINGS], AS_WRITTEN]))
    print("* extrapolated from", args.sample, "slices spread over the volume")
    bounds = ceilings(layer_calls, dev)
    ceiling = {p: b["ceiling"] for p, b in bounds.items()}
    for p, b in bounds.items():
        print(
            f"{p} ceiling: {b['ceiling']:.0f} GFLOP/s, the best of {b['shapes']} convolutions (every layer shape of "
            f"the six nets in channels-last {p}, and the large one at {b['large_conv']:.0f}), reached by {b['at']}"
        )
    peak = cpu_peak(args.threads)
    print(peak_line(peak, ceiling))
    fraction: dict[str, dict[str, float]] = {}
    for name, _ in nets:
        for p, label in (("fp32", "fp32 CL"), ("bf16", "bf16 CL")):
            rate = flops_of[name] / vol[(name, label)] / 1e9
            fraction.setdefault(name, {})[p] = fraction_of(rate, ceiling[p], f"{name} {label}")
    print(
        "\nwhole-volume rate as a fraction of the ceiling (fp32 CL / bf16 CL): "
        + ", ".join(f"{n} {f['fp32']:.0%} / {f['bf16']:.0%}" for n, f in fraction.items())
        + "\n"
    )
    ratios = paired_ratios(image8, image4, mask, dev, args.pairs)
    print(
        table(
            [[label, f"{e.value:.2f}x", e.interval(2), str(e.n)] for label, e in ratios.values()],
            ["speed-up, timed in interleaved pairs (16 slices)", "ratio", "95% interval", "pairs"],
        )
    )
    print()
    ours, seg = end_to_end(root, names[: args.cases], args.threads, not args.skip_segresnet)
    # what predict runs by default (precision=auto): bf16 where the CPU has it
    report = ours["bf16"] if "bf16" in ours else ours["fp32"]
    per_case = s_per_case(report)

    train = training_rates(dev)
    print(table([[k, f"{v:,.1f}"] for k, v in train.items()], ["training throughput", "samples/s"]))
    compiled = compile_in_child(args.threads, dev, args.compile_timeout)
    seg_ratio = {
        k: v
        for p in seg
        for k, v in case_ratio(seg[p], ours[p]).as_dict(f"segresnet_over_fcn_sym_per_case_{p}").items()
    }
    figures = {
        "predict_s_per_case": per_case,
        "predict_stage_totals_s": report["totals_s"],
        "twopath_volume_s": vol[("twopath", "bf16 CL")],
        "cascade_volume_s_max": max(vol[(n, "bf16 CL")] for n in ("input_cascade", "local_cascade", "mf_cascade")),
        "twopath_fraction_of_ceiling": fraction["twopath"]["bf16"],
        "fcn_sym_fraction_of_ceiling": fraction["fcn_sym"]["bf16"],
        "cascade_fraction_of_ceiling_min": min(
            fraction[n]["bf16"] for n in ("input_cascade", "local_cascade", "mf_cascade")
        ),
        "fraction_of_ceiling": fraction,
        "cascade_speedup_vs_layers_as_written_min": min(
            vol[(n, AS_WRITTEN)] / vol[(n, "bf16 CL")] for n in ("input_cascade", "local_cascade", "mf_cascade")
        ),
        "compile": compiled,
        **{k: v for key, (_, e) in ratios.items() for k, v in e.as_dict(key).items()},
        **seg_ratio,
        "bf16_speedup_fcn_training": train["fcn_sym bf16 CL"] / train["fcn_sym fp32 CL"],
        "speedup_fcn_training_vs_fp32_nchw": train["fcn_sym bf16 CL"] / train["fcn_sym fp32 NCHW"],
        "bf16_speedup_twopath_training": train["twopath bf16 CL"] / train["twopath fp32 CL"],
        # end to end, NIfTI files in, label files out, same cases and threads: SegResNet's s per case / ours
        "segresnet_over_fcn_sym": ratio(seg, ours, "bf16"),
        "segresnet_over_fcn_sym_fp32": ratio(seg, ours, "fp32"),
        "predict_s_per_case_by_precision": {p: s_per_case(r) for p, r in ours.items()},
        "segresnet_s_per_case": {p: s_per_case(r) for p, r in seg.items()},
        "segresnet_stage_totals_s": {p: r["totals_s"] for p, r in seg.items()},
        "conv_gflops": large,
        "ceiling_gflops": ceiling,
        "ceiling_at": {p: b["at"] for p, b in bounds.items()},
        "peak_gflops": None if peak is None else {p: peak[p] for p in ("fp32", "bf16")},
        "peak": peak,
        "volume_s": {f"{n} {s}": v for (n, s), v in vol.items()},
        "training_per_s": train,
        "data": what,
        "threads": args.threads,
    }
    print(json_line(figures))


if __name__ == "__main__":
    main()
