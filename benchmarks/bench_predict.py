"""``predict`` of FCN + symmetry maps end to end, at full and half width, per stage, in one run.

Usage::

    python benchmarks/bench_predict.py [--threads 2] [--cases 2] [--widths 1.0 0.5] [--precision auto]

From the same NIfTI files (the first ``--cases`` real BraTS 2018 cases of ``../shared/data``;
synthetic BraTS-size cases when absent) to label files written, ``python -m brats_lightning.predict``
of a random-weights FCN + symmetry checkpoint (speed only) at each ``model.width`` (1.0: Shen et al.'s
VGG widths; 0.5: half the channels of every layer, about a quarter of the FLOPs), in the default
precision (bf16 where the CPU has bf16 units), with:

* the large convolution's rate (fp32 and bf16, to compare machines) printed first;
* per case and per stage (read, preprocess, symmetry maps, inference, write) seconds;
* the inference's FLOPs per volume (every brain slice of the first case's brain box) and the time they take at
  the ceiling (the best rate over the large convolution and every convolution shape of that net, in the precision
  used): a lower bound for the inference stage on this machine, checked against the measured one (the benchmark
  stops if a measurement beats it).

A failed case fails the benchmark. The last line is a JSON object with ``predict_s_per_case`` (full
width), ``predict_s_per_case_half_width`` (width 0.5, when measured), ``predict_s_per_case_by_width``,
``stage_totals_s_by_width``, ``inference_tflop_per_volume_by_width``,
``inference_floor_s_by_width`` and ``conv_gflops``.
"""

from __future__ import annotations

import argparse

import torch
from _common import conv_ceiling_over, fraction_of, json_line, large_conv, table
from bench_inference import (
    conv_ceiling,
    load_case,
    net_conv_calls,
    predict_end_to_end,
    s_per_case,
    slice_flops,
    stage_table,
)

from brats_lightning.modules.fcn import FCNModule
from brats_lightning.precision import bf16_supported
from brats_lightning.predict.cases import STAGES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cases", type=int, default=2)
    parser.add_argument("--widths", type=float, nargs="+", default=[1.0, 0.5])
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    args = parser.parse_args()
    if any(not 0 < w <= 4 for w in args.widths) or args.cases < 1:
        parser.error("--widths must lie in (0, 4] and --cases be >= 1")
    torch.set_num_threads(args.threads)
    root, what, case_id, image8, mask = load_case(args.cases)
    names = sorted(p.name for p in root.iterdir() if p.is_dir())[: args.cases]
    bf16 = args.precision == "bf16" or (args.precision == "auto" and bf16_supported("cpu"))
    ceiling = {p: conv_ceiling("cpu", p == "bf16") for p in ("fp32", "bf16")}
    used = "bf16" if bf16 else "fp32"
    n_brain = int(mask.flatten(1).any(1).sum())
    print(
        f"Data: {what}; {args.threads} threads; precision {args.precision} ({used}).\n"
        f"Large 3x3 convolution (64->64, 8x144x192): {ceiling['fp32']:.0f} GFLOP/s fp32, "
        f"{ceiling['bf16']:.0f} GFLOP/s bf16\n"
    )
    per_case: dict[str, float] = {}
    totals: dict[str, dict] = {}
    tflop: dict[str, float] = {}
    floor: dict[str, float] = {}
    best: dict[str, float] = {}
    for width in args.widths:
        key = f"{width:g}"
        net = FCNModule(8, 4, width=width).prepare_for_inference()
        flops = slice_flops(net, image8) * n_brain
        calls = net_conv_calls(net, image8, mask, bf16, "cpu", 4)
        best[key], at, _ = conv_ceiling_over([large_conv("cpu", bf16), *calls])
        tflop[key] = flops / 1e12
        floor[key] = flops / (best[key] * 1e9)
        report = predict_end_to_end(root, names, args.threads, args.precision, width=width)
        per_case[key] = s_per_case(report)
        totals[key] = report["totals_s"]
        measured = report["times_s"][case_id]["inference"]
        share = fraction_of(flops / measured / 1e9, best[key], f"width {key}: {case_id}'s inference")
        print(stage_table(f"predict FCN+sym, width {key} ({used}), s", report, STAGES))
        print(
            f"width {key}: {per_case[key]:.1f} s per case end to end; inference {tflop[key]:.2f} TFLOP per volume "
            f"({case_id}: {n_brain} brain slices) in {measured:.1f} s, {share:.0%} of the {used} ceiling "
            f"{best[key]:.0f} GFLOP/s (reached by {at}), where it would take {floor[key]:.1f} s\n"
        )
    rows = [
        [k, f"{per_case[k]:.1f}", f"{totals[k]['inference'] / len(names):.1f}", f"{tflop[k]:.2f}", f"{floor[k]:.1f}"]
        for k in per_case
    ]
    print(table(rows, ["width", "s per case", "inference s", "TFLOP/volume", "inference at ceiling, s"]))
    print(json_line({
        "predict_s_per_case": per_case.get("1"),
        "predict_s_per_case_half_width": per_case.get("0.5"),
        "predict_s_per_case_by_width": per_case,
        "stage_totals_s_by_width": totals,
        "inference_tflop_per_volume_by_width": tflop,
        "inference_floor_s_by_width": floor,
        "precision": used,
        "conv_gflops": ceiling,
        "ceiling_gflops_by_width": best,
        "cases": len(names),
        "data": what,
        "threads": args.threads,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
