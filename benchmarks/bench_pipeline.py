"""Does the data pipeline outrun the device? Loader throughput against what a training step consumes.

Usage::

    python benchmarks/bench_pipeline.py [--workers 0 1 2] [--cases 6] [--batches 150] [--threads 2]
        [--gpu-tflops 220] [--device cpu|cuda]

On BraTS-size cases (the real BraTS 2018 cases of ``../shared/data`` when present, synthetic ones of
the same size otherwise), prepared with symmetry maps, it measures in one run:

* slices/s of 8x144x192 (FCN + symmetry maps, batches of 8) and patches/s of 4x33x33 (TwoPathCNN,
  balanced sampling, batches of 128) delivered by the real training loaders of
  :class:`~brats_lightning.data.datamodule.BratsDataModule` with 0, 1 and 2 workers, the slices
  both with every brain slice equally often (``tumour_fraction=0``, the papers) and with half of
  them drawn through a tumour voxel (``tumour_fraction=0.5``, what ``experiment=real_fast`` trains
  with); these cases are hot in the page cache;
* the cold-read cost of a case: its cache files are evicted from the page cache
  (``posix_fadvise(DONTNEED)`` on every ``.npy`` of its prepared folder, checked with ``mincore``),
  then every brain slice of the case is read once through the real loader path (a
  :class:`~brats_lightning.data.datasets.SliceDataset` of that case, shuffled batches of 8, 0
  workers), and read again hot; per case, over every prepared case. An epoch (every brain slice of
  every case once) of 1,251 cases whose cache does not fit in the page cache costs about 1,251 times
  the cold time per case in one process (the hot figure: when it does fit). On a virtual machine
  the host may still cache the disk: "cold" is then a lower bound of a real disk read;
* the on-device augmentation of a batch of slices (the papers' flips, rotations and scaling: one
  ``grid_sample``; and the strong options: nnU-Net's intensity transforms, elastic deformation with
  probability 0.2, rotations up to 15 degrees, scaling by up to 15%; mean over many batches, as
  their draws vary) against the training step that training runs on the same batch: the FCN with
  symmetry maps (:class:`~brats_lightning.modules.fcn.FCNModule`: channels-last layout, its loss,
  Adam) in the training precision (bf16 autocast where
  :func:`~brats_lightning.precision.training_precision` says ``bf16-mixed``, on a GPU always; fp32
  otherwise);
* what a training step consumes here (samples/s) and on a GPU of a given sustained speed (from the
  nets' FLOPs per sample, forward and backward; ``--gpu-tflops 220`` is about what one H100 sustains
  on these nets in bf16: roughly 2,000 FCN slices/s), and with ``--device cuda`` the real thing.

The last line is a JSON object: ``slices_per_s``, ``slices_per_s_tumour`` and ``patches_per_s`` (2
workers), ``cold_read_s_per_case``, ``epoch_s_1251_cases_cold`` and ``epoch_s_1251_cases_hot``,
``augment_fraction`` and ``augment_fraction_strong`` (augmentation time / training step time), and
the other figures.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import mmap
import os
import time
from pathlib import Path

import numpy as np
import torch
from _common import CACHE, best_time, brats_root, json_line, mean_time, table, train_flops
from torch.utils.data import BatchSampler

from brats_lightning.data.augment import SliceAugment
from brats_lightning.data.cache import PreparedCase, open_array
from brats_lightning.data.datamodule import BratsDataModule
from brats_lightning.data.datasets import EpochItems, SliceDataset
from brats_lightning.data.loading import RingLoader
from brats_lightning.modules.fcn import FCNModule
from brats_lightning.nets.fcn import ShenFCN
from brats_lightning.nets.twopath import TwoPathCNN
from brats_lightning.precision import training_precision

#: BraTS 2021's training cases
BRATS_2021_CASES = 1251
#: the strong augmentation options (nnU-Net's intensity transforms, elastic deformation, larger affine ranges)
STRONG = {"intensity": True, "elastic_prob": 0.2, "rotate_deg": 15, "scale": 0.15}


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


def evict(folder: Path) -> None:
    """Drop the ``.npy`` files of ``folder`` from the page cache (written back first: dirty pages stay)."""
    for path in sorted(folder.glob("*.npy")):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def resident_fraction(folder: Path) -> float | None:
    """Share of the pages of ``folder``'s ``.npy`` files in the page cache (``mincore``; ``None`` where unavailable)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        page = os.sysconf("SC_PAGE_SIZE")
        total = resident = 0
        for path in sorted(folder.glob("*.npy")):
            size = path.stat().st_size
            if size == 0:
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
                if addr is None or addr == ctypes.c_void_p(-1).value:
                    return None
                try:
                    pages = -(-size // page)
                    vec = ctypes.create_string_buffer(pages)
                    if libc.mincore(addr, size, vec) != 0:
                        return None
                    resident += int((np.frombuffer(vec.raw, np.uint8, count=pages) & 1).sum())
                    total += pages
                finally:
                    libc.munmap(addr, size)
            finally:
                os.close(fd)
        return resident / max(total, 1)
    except (OSError, AttributeError):
        return None


def read_case(dm: BratsDataModule, case: PreparedCase) -> tuple[float, int]:
    """Seconds to read every brain slice of ``case`` once through the training loader path, and the slices read.

    A :class:`~brats_lightning.data.datasets.SliceDataset` of the case with the data module's
    options, shuffled batches, no workers.
    """
    ds = SliceDataset([case], dm.crop_size, dm.batch_size, dm.augment, dm.seed, dm.tumour_fraction, dm.context_slices)
    order = BatchSampler(EpochItems(len(ds), dm.seed, lambda: (0,)), dm.batch_size, drop_last=False)
    loader = RingLoader(ds, batch_size=None, sampler=order, num_workers=0)
    t0 = time.perf_counter()
    n = sum(batch[0].shape[0] for batch in loader)
    return time.perf_counter() - t0, n


def cold_reads(dm: BratsDataModule, cases: list[PreparedCase]) -> list[dict]:
    """Per case: the read time of its brain slices with its cache files evicted, then hot, and the MB of the
    arrays the slices are read from (image and label)."""
    out = []
    for case in cases:
        case.image, case.label  # noqa: B018  (checksums verified now: once per process, not per epoch)
        open_array.cache_clear()  # unmap every array: mapped pages are not evicted
        gc.collect()
        evict(case.folder)
        before = resident_fraction(case.folder)
        cold, n = read_case(dm, case)
        hot, _ = read_case(dm, case)
        mb = sum((case.folder / f"{name}.npy").stat().st_size for name in ("image", "label")) / 2**20  # what it reads
        out.append({"case": case.case_id, "slices": n, "cold": cold, "hot": hot, "resident": before, "mb": mb})
    open_array.cache_clear()
    return out


def fcn_step_time(x: torch.Tensor, y: torch.Tensor, device: str, bf16: bool, channels_last: bool = True) -> float:
    """Seconds of the FCN + symmetry training step on ``x``: as :class:`FCNModule` trains (its net and memory
    layout, its loss, Adam), the forward and loss under bf16 autocast when ``bf16`` (Lightning's ``bf16-mixed``)."""
    module = FCNModule(x.shape[1], 4, test_hd95=False, channels_last=channels_last).to(device).train()
    opt = module.configure_optimizers()
    x, y = x.to(device), y.to(device)

    def step() -> None:
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            loss = module.loss(module.net(module.layout(x)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return best_time(step, device, repeats=2)


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
    tumour = BratsDataModule(**common, crop_size=(144, 192), batch_size=8, tumour_fraction=0.5)
    tumour.prepare_data()  # (the same prepared cases)
    tumour.setup()
    patches = BratsDataModule(
        **{**common, "symmetry": False}, mode="patches", batch_size=128, patches_per_epoch=128 * 10_000
    )
    patches.prepare_data()
    patches.setup()
    print(f"Data: {what} ({len(slices.train_cases)} training cases), {args.threads} threads\n")

    rows, rates = [], {}
    for w in args.workers:
        s = loader_rate(slices, w, args.batches)
        st = loader_rate(tumour, w, args.batches)
        p = loader_rate(patches, w, args.batches)
        rates[w] = (s, p, st)
        rows.append([f"{w} worker{'s' if w != 1 else ''}", f"{s:,.0f}", f"{st:,.0f}", f"{p:,.0f}"])
    header = ["training loader (hot cache)", "slices/s (8x144x192)", "slices/s, tumour_fraction 0.5"]
    print(table(rows, [*header, "patches/s (4x33x33)"]))
    two = rates.get(2, rates[max(rates)])
    two_w = 2 if 2 in rates else max(rates)

    # cold reads: every prepared case, its cache files evicted from the page cache first
    reads = cold_reads(slices, slices.train_cases + slices.val_cases)
    rows = [
        [
            r["case"],
            str(r["slices"]),
            f"{r['mb']:.0f}",
            "-" if r["resident"] is None else f"{100 * r['resident']:.0f}%",
            f"{r['cold']:.3f}",
            f"{r['hot']:.3f}",
            f"{r['mb'] / r['cold']:.0f}",
        ]
        for r in reads
    ]
    print()
    header = ["case (0 workers)", "brain slices", "image+label MB", "resident after eviction", "cold s", "hot s"]
    print(table(rows, [*header, "cold MB/s"]))
    cold = float(np.mean([r["cold"] for r in reads]))
    hot = float(np.mean([r["hot"] for r in reads]))
    per_case = float(np.mean([r["slices"] for r in reads]))
    resident = [r["resident"] for r in reads if r["resident"] is not None]
    epoch_cold, epoch_hot = cold * BRATS_2021_CASES, hot * BRATS_2021_CASES
    epoch_loader = BRATS_2021_CASES * per_case / two[0]
    print(
        f"Cold read: {cold:.3f} s per case ({per_case:.0f} brain slices, {cold / per_case * 1e3:.2f} ms/slice), "
        f"hot {hot:.3f} s.\nAssuming an epoch reads every brain slice of 1,251 cases once from storage (a cache "
        f"larger than the page cache), in one process: {epoch_cold:,.0f} s per epoch ({epoch_hot:,.0f} s with the "
        f"cache in the page cache; the {two_w}-worker loader's hot rate gives {epoch_loader:,.0f} s)."
    )
    if resident and max(resident) > 0.05:
        print(f"Warning: up to {100 * max(resident):.0f}% of a case stayed in the page cache after eviction")

    # augmentation and training steps on one batch
    slices.num_workers = 0
    x, y = next(iter(slices.train_dataloader()))
    x, y = slices.on_after_batch_transfer((x, y), 0)
    xd, yd = x.to(args.device), y.to(args.device)
    channels = slices.intensity_channels
    t_augs = {}
    for name, aug in (("default", SliceAugment()), ("strong", SliceAugment(**STRONG))):
        gen = torch.Generator().manual_seed(0)
        t_augs[name] = mean_time(lambda aug=aug, gen=gen: aug(xd, yd, gen, channels), args.device)
    # the step training runs: channels last, bf16 autocast where Lightning trains in bf16-mixed
    precision = "bf16-mixed" if torch.device(args.device).type == "cuda" else training_precision()
    bf16 = precision == "bf16-mixed"
    t_fcn32 = fcn_step_time(x, y, args.device, bf16=False)
    t_fcn = fcn_step_time(x, y, args.device, bf16=True) if bf16 else t_fcn32
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
    fraction = t_augs["default"] / t_fcn
    fraction_strong = t_augs["strong"] / t_fcn
    rows = [
        [
            "FCN+sym slices",
            f"{fcn_flops / 1e9:.1f}",
            f"{8 / t_fcn32:.1f}",
            f"{8 / t_fcn:.1f}",
            f"{gpu / fcn_flops:,.0f}",
            f"{two[0]:,.0f}",
        ],
        [
            "TwoPathCNN patches",
            f"{tp_flops / 1e9:.2f}",
            f"{128 / t_tp:,.0f}",
            "-",
            f"{gpu / tp_flops:,.0f}",
            f"{two[1]:,.0f}",
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
                f"here, training precision ({precision})/s",
                f"GPU at {args.gpu_tflops:g} TFLOP/s /s",
                f"loader ({two_w} workers)/s",
            ],
        )
    )
    print(
        f"\nOn-device augmentation of a batch of 8 slices (mean): {t_augs['default'] * 1e3:.1f} ms default, "
        f"{t_augs['strong'] * 1e3:.1f} ms strong ({', '.join(f'{k}={v}' for k, v in STRONG.items())}); "
        f"the FCN+sym training step on it (channels last): {t_fcn32:.2f} s fp32, {t_fcn:.2f} s in the training "
        f"precision ({precision}) -> augmentation = {100 * fraction:.1f}% of a step ({100 * fraction_strong:.1f}% "
        "strong)"
    )
    print(
        json_line(
            {
                "slices_per_s": two[0],
                "slices_per_s_tumour": two[2],
                "patches_per_s": two[1],
                "cold_read_s_per_case": cold,
                "hot_read_s_per_case": hot,
                "cold_read_mb_per_s": float(np.mean([r["mb"] / r["cold"] for r in reads])),
                "read_mb_per_case": float(np.mean([r["mb"] for r in reads])),
                "brain_slices_per_case": per_case,
                "resident_after_eviction_max": max(resident) if resident else None,
                "epoch_s_1251_cases_cold": epoch_cold,
                "epoch_s_1251_cases_hot": epoch_hot,
                "epoch_s_1251_cases_loader": epoch_loader,
                "epoch_assumption": "every brain slice of 1,251 cases once; cold: read from storage, one process "
                "(cache larger than the page cache); hot: from the page cache, one process; loader: "
                f"{two_w}-worker loader rate, hot",
                "cold_read_cases": len(reads),
                "augment_fraction": fraction,
                "augment_fraction_strong": fraction_strong,
                "augment_ms_per_batch": t_augs["default"] * 1e3,
                "augment_ms_per_batch_strong": t_augs["strong"] * 1e3,
                "training_precision": precision,
                "fcn_sym_step_s": t_fcn,
                "fcn_sym_step_s_fp32": t_fcn32,
                "fcn_sym_step_s_bf16": t_fcn if bf16 else None,
                "twopath_step_s_fp32_per_128": t_tp,
                "fcn_sym_gflop_per_slice": fcn_flops / 1e9,
                "twopath_gflop_per_patch": tp_flops / 1e9,
                "gpu_tflops": args.gpu_tflops,
                "gpu_slices_per_s": gpu / fcn_flops,
                "gpu_patches_per_s": gpu / tp_flops,
                **{f"slices_per_s_{w}w": r[0] for w, r in rates.items()},
                **{f"slices_per_s_tumour_{w}w": r[2] for w, r in rates.items()},
                **{f"patches_per_s_{w}w": r[1] for w, r in rates.items()},
                "data": what,
                "threads": args.threads,
            }
        )
    )


if __name__ == "__main__":
    main()
