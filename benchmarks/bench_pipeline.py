"""Does the data pipeline outrun the device? Loader throughput against what a training step consumes.

Usage::

    python benchmarks/bench_pipeline.py [--workers 0 1 2] [--threads 2] [--gpu-tflops 220] [--device cpu|cuda]

On BraTS-size cases (the real BraTS 2018 cases of ``../shared/data`` when present, synthetic ones of
the same size otherwise), prepared with symmetry maps, it measures in one run:

* slices/s of 8x144x192 (FCN + symmetry maps, batches of 8) and patches/s of 4x33x33 (TwoPathCNN,
  balanced sampling, batches of 128) delivered by the real training loaders of
  :class:`~brats_lightning.data.datamodule.BratsDataModule` with 0, 1 and 2 workers;
* the on-device augmentation of a batch of slices (flips, rotations, scaling: one ``grid_sample``)
  against a training step of the FCN with symmetry maps on the same batch;
* what a training step consumes here (samples/s) and on a GPU of a given sustained speed (from the
  nets' FLOPs per sample, forward and backward; ``--gpu-tflops 220`` is about what one H100 sustains
  on these nets in bf16: roughly 2,000 FCN slices/s), and with ``--device cuda`` the real thing.

The last line is a JSON object: ``slices_per_s`` and ``patches_per_s`` (2 workers),
``augment_fraction`` (augmentation time / training step time), and the other figures.
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import CACHE, best_time, brats_root, json_line, table, train_flops

from brats_lightning.data.augment import SliceAugment
from brats_lightning.data.datamodule import BratsDataModule
from brats_lightning.nets.fcn import ShenFCN
from brats_lightning.nets.twopath import TwoPathCNN


def loader_rate(dm: BratsDataModule, workers: int, batches: int) -> float:
    """Samples per second delivered by the training loader with ``workers`` workers (after its first batch).

    Epochs follow one another as in training (persistent workers).
    """
    dm.num_workers = workers
    loader = dm.train_dataloader()

    def stream():
        while True:
            yield from loader

    it = stream()
    next(it)  # worker start-up
    n, t0 = 0, time.perf_counter()
    for _ in range(batches):
        n += next(it)[0].shape[0]
    rate = n / (time.perf_counter() - t0)
    it.close()
    return rate


def step_time(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device: str, bf16: bool) -> float:
    """Seconds of one training step (forward, cross entropy, backward, Adam) on ``x``."""
    net = net.to(device)
    opt = torch.optim.Adam(net.parameters())
    x, y = x.to(device), y.to(device)

    def step() -> None:
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            out = net(x)
        loss = torch.nn.functional.cross_entropy(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return best_time(step, device, repeats=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--batches", type=int, default=150, help="batches timed per loader")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gpu-tflops", type=float, default=220.0, help="sustained TFLOP/s of the GPU to compare with")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root, what = brats_root(args.cases)
    common = {"root": str(root), "cache_dir": str(CACHE), "symmetry": True, "test_fraction": 0.0, "num_folds": 2}
    slices = BratsDataModule(**common, crop_size=(144, 192), batch_size=8)
    slices.prepare_data()
    slices.setup()
    patches = BratsDataModule(
        **{**common, "symmetry": False}, mode="patches", batch_size=128, patches_per_epoch=128 * 10_000
    )
    patches.prepare_data()
    patches.setup()
    print(f"Data: {what} ({len(slices.train_cases)} training cases), {args.threads} threads\n")

    rows, rates = [], {}
    for w in args.workers:
        s = loader_rate(slices, w, args.batches)
        p = loader_rate(patches, w, args.batches)
        rates[w] = (s, p)
        rows.append([f"{w} worker{'s' if w != 1 else ''}", f"{s:,.0f}", f"{p:,.0f}"])
    print(table(rows, ["training loader", "slices/s (8x144x192)", "patches/s (4x33x33)"]))

    # augmentation and training steps on one batch
    x, y = next(iter(slices.train_dataloader()))
    x, y = slices.on_after_batch_transfer((x, y), 0)
    aug = SliceAugment()
    gen = torch.Generator().manual_seed(0)
    xd, yd = x.to(args.device), y.to(args.device)
    t_aug = best_time(lambda: aug(xd, yd, gen), args.device, repeats=5)
    fcn = ShenFCN(8, 4)
    bf16 = args.device != "cpu" or torch.backends.mkldnn.is_available()
    t_fcn = step_time(fcn, x, y, args.device, bf16=False)
    t_fcn_bf16 = step_time(fcn, x, y, args.device, bf16=True) if bf16 else float("nan")
    px, py = patches.on_after_batch_transfer(next(iter(patches.train_dataloader())), 0)
    twopath = TwoPathCNN(4, 4)

    class Flat(torch.nn.Module):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, v: torch.Tensor) -> torch.Tensor:
            return self.net(v)[:, :, 0, 0]

    t_tp = step_time(Flat(twopath), px, py, args.device, bf16=False)
    fcn_flops = train_flops(ShenFCN(8, 4), x[:1])
    tp_flops = train_flops(Flat(TwoPathCNN(4, 4)), px[:1])
    gpu = args.gpu_tflops * 1e12
    step_fraction = t_aug / min(t_fcn, t_fcn_bf16 if bf16 else t_fcn)
    rows = [
        [
            "FCN+sym slices",
            f"{fcn_flops / 1e9:.1f}",
            f"{8 / t_fcn:.1f}",
            f"{8 / t_fcn_bf16:.1f}" if bf16 else "-",
            f"{gpu / fcn_flops:,.0f}",
            f"{rates.get(2, rates[max(rates)])[0]:,.0f}",
        ],
        [
            "TwoPathCNN patches",
            f"{tp_flops / 1e9:.2f}",
            f"{128 / t_tp:,.0f}",
            "-",
            f"{gpu / tp_flops:,.0f}",
            f"{rates.get(2, rates[max(rates)])[1]:,.0f}",
        ],
    ]
    print()
    print(
        table(
            rows,
            [
                "training step",
                "GFLOP/sample (fwd+bwd)",
                f"consumed here ({args.device}, fp32)/s",
                "here bf16/s",
                f"GPU at {args.gpu_tflops:g} TFLOP/s /s",
                "loader (2 workers)/s",
            ],
        )
    )
    print(
        f"\nOn-device augmentation of a batch of 8 slices: {t_aug * 1e3:.1f} ms; FCN+sym training step on it: "
        f"{t_fcn:.2f} s fp32, {t_fcn_bf16:.2f} s bf16 -> augmentation = {100 * step_fraction:.1f}% of a step"
    )
    two = rates.get(2, rates[max(rates)])
    print(
        json_line(
            {
                "slices_per_s": two[0],
                "patches_per_s": two[1],
                "augment_fraction": step_fraction,
                "augment_ms_per_batch": t_aug * 1e3,
                "fcn_sym_step_s_fp32": t_fcn,
                "fcn_sym_step_s_bf16": t_fcn_bf16,
                "twopath_step_s_fp32_per_128": t_tp,
                "fcn_sym_gflop_per_slice": fcn_flops / 1e9,
                "twopath_gflop_per_patch": tp_flops / 1e9,
                "gpu_tflops": args.gpu_tflops,
                "gpu_slices_per_s": gpu / fcn_flops,
                "gpu_patches_per_s": gpu / tp_flops,
                **{f"slices_per_s_{w}w": r[0] for w, r in rates.items()},
                **{f"patches_per_s_{w}w": r[1] for w, r in rates.items()},
                "data": what,
                "threads": args.threads,
            }
        )
    )


if __name__ == "__main__":
    main()
