"""Benchmark Havaei et al.'s patch CNNs: whole-slice vs patch-by-patch inference, training throughput.

Usage::

    python benchmarks/bench_patch_cnn.py [--device cpu|cuda] [--threads N] [--size 240]

Prints, in one run:

* time per 240x240 slice of fully convolutional whole-slice inference (the slice padded by 16 and
  passed once) and of patch-by-patch inference (every pixel's 33x33 patch, in batches, timed on a
  sample of patches and scaled to the slice), and their ratio (Havaei et al. report 45x);
* training throughput (forward, backward, SGD step) in patches per second, and the data pipeline's
  throughput (balanced sampling + patch extraction from a prepared synthetic data set), which must
  exceed it;
* whole-slice inference time of the three cascades next to TwoPathCNN, per slice and per
  240x240x155 volume (155 slices; Havaei et al. on a Titan Black: 25 s TwoPathCNN, 1.5 / 1.7 / 3 min
  MF / Local / Input cascade per brain);
* dense training (``data.dense_size``) beside the paper's per-patch training: labelled pixels per
  second of TwoPathCNN trained on ``(32 + D) x (32 + D)`` windows labelled on their ``D x D`` centre
  pixels, against one pixel per 33x33 patch;
* with ``--equal-minutes M`` (real data: ``../shared/data/brats2018``, else synthetic), both ways of
  training TwoPathCNN for the same M wall-clock minutes, side by side (each on half the threads), and
  the validation Dice of their final weights (fold 0's validation cases, scored once at the end).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import CACHE, ROOT, SHARED, best_time, json_line, mean_time

from brats_lightning.nets.cascade import InputCascadeCNN, LocalCascadeCNN, MFCascadeCNN
from brats_lightning.nets.twopath import GlobalPathCNN, LocalPathCNN, TwoPathCNN


@torch.no_grad()
def inference_times(net: torch.nn.Module, size: int, dev: torch.device, sample: int, batch: int) -> tuple[float, float]:
    """Seconds per ``size x size`` slice: whole-slice and patch-by-patch (extrapolated from ``sample`` patches)."""
    x = torch.randn(1, 4, size, size, device=dev)
    padded = F.pad(x, (16, 16, 16, 16))
    t_whole = best_time(lambda: torch.softmax(net(padded), 1), dev)
    patches = padded.unfold(2, 33, 1).unfold(3, 33, 1)[0].permute(1, 2, 0, 3, 4).reshape(-1, 4, 33, 33)
    sub = patches[:sample].contiguous()

    def run() -> None:
        for i in range(0, sub.shape[0], batch):
            torch.softmax(net(sub[i : i + batch]), 1)

    t_sample = best_time(run, dev, repeats=1)
    return t_whole, t_sample * (size * size) / sample


def steps_per_second(step: Callable[[], None], dev: torch.device, steps: int) -> float:
    """Rate of ``step`` over ``steps`` calls after one untimed call."""
    return 1.0 / mean_time(step, dev, repeats=steps, warmup=1)


def training_throughput(net: torch.nn.Module, dev: torch.device, batch: int, steps: int) -> float:
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.005, momentum=0.9)
    x = torch.randn(batch, 4, 33, 33, device=dev)
    y = torch.randint(0, 4, (batch,), device=dev)

    def step() -> None:
        loss = F.cross_entropy(net(x)[:, :, 0, 0], y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    rate = steps_per_second(step, dev, steps)
    net.eval()
    return batch * rate


def dense_throughput(net: torch.nn.Module, dev: torch.device, windows: int, dense: int, steps: int) -> float:
    """Labelled pixels per second of dense training: ``windows`` inputs of ``(32 + dense)^2`` pixels, the
    cross entropy on every one of the ``dense^2`` output pixels (class-balanced weights, as the module)."""
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.005, momentum=0.9)
    x = torch.randn(windows, 4, 32 + dense, 32 + dense, device=dev)
    y = torch.randint(0, 4, (windows, dense, dense), device=dev)
    w = torch.full((windows, dense, dense), 1.0 / dense**2, device=dev)

    def step() -> None:
        out = net(x)
        assert out.shape[-2:] == (dense, dense), out.shape
        loss = (F.cross_entropy(out, y, reduction="none") * w).sum() / windows
        opt.zero_grad()
        loss.backward()
        opt.step()

    rate = steps_per_second(step, dev, steps)
    net.eval()
    return windows * dense * dense * rate


def equal_time_runs(minutes: float, dense: int, threads: int) -> dict[str, dict[str, float]]:
    """Train TwoPathCNN per patch and densely for ``minutes`` each, side by side; their validation Dice.

    Both runs: Havaei et al.'s TwoPathCNN, balanced patches (phase 1 only: the time is too short for the
    second phase), SGD as the paper, no validation while training; then the final weights segment the
    validation cases of fold 0 (whole volumes, the paper's clean-up; the run's ``test/dice_*`` with
    ``data.test_fraction=0``). Preprocessing without N4, identical for both.
    """
    real = SHARED / "brats2018"
    root = real if real.is_dir() else None
    out = Path(tempfile.mkdtemp(prefix="dense_vs_patch_", dir=CACHE.parent if CACHE.parent.is_dir() else None))
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, threads // 2)), PYTHONUNBUFFERED="1")
    arms = {"per_patch": (1, 128, 12800), "dense": (dense, 8, 1200)}
    procs = {}
    for name, (d, batch, per_epoch) in arms.items():
        args = [
            sys.executable, "-m", "brats_lightning", "model=twopath", "callbacks=default",
            f"++trainer.max_time=00:00:{int(minutes):02d}:{int(minutes % 1 * 60):02d}", "trainer.max_epochs=-1",
            "trainer.min_epochs=null", "trainer.limit_val_batches=0", "model.test_hd95=false",
            f"data.dense_size={d}", f"data.batch_size={batch}", f"data.patches_per_epoch={per_epoch}",
            "data.preprocess.n4=[]", "data.num_workers=0", "logger=csv", f"hydra.run.dir={out / name}",
            "trainer.devices=1", "++trainer.num_sanity_val_steps=0",
        ]  # fmt: skip
        if root is not None:
            args += ["data=brats", f"data.root={root}", "data.test_fraction=0", "data.fold=0"]
        log = open(out / f"{name}.log", "w")
        procs[name] = (subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log)
    results: dict[str, dict[str, float]] = {}
    for name, (proc, log) in procs.items():
        rc = proc.wait()
        log.close()
        if rc != 0:
            raise SystemExit(f"the {name} run failed (exit {rc}): see {out / name}.log")
        metrics = json.loads((out / name / "metrics.json").read_text())
        results[name] = {k.split("/")[-1]: float(v) for k, v in metrics.items() if k.startswith("test/dice_")}
        results[name]["steps"] = float(metrics.get("train/steps", 0))
    print(f"(runs in {out}; data: {'14 real BraTS 2018 cases' if root else 'synthetic'})")
    return results


def pipeline_throughput(batch: int, batches: int) -> float:
    from brats_lightning.data.datamodule import BratsDataModule

    with tempfile.TemporaryDirectory() as tmp:
        dm = BratsDataModule(cache_dir=tmp, mode="patches", batch_size=batch, patches_per_epoch=batch * batches)
        dm.prepare_data()
        dm.setup("fit")
        loader = dm.train_dataloader()
        next(iter(loader))
        t0 = time.perf_counter()
        n = sum(b[0].shape[0] for b in loader)
        return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=240)
    parser.add_argument("--sample", type=int, default=1024, help="patches timed for the patch-by-patch estimate")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--dense", type=int, default=33, help="dense training: pixels labelled per window side")
    parser.add_argument("--windows", type=int, default=8, help="dense training: windows per batch")
    parser.add_argument("--equal-minutes", type=float, default=0.0, help="train both ways this long (0: skip)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"\nHavaei et al. patch CNNs on {where}, {args.size}x{args.size} slices, torch {torch.__version__}")
    print(f"{'net':<15}{'whole slice':>14}{'patch by patch':>17}{'ratio':>8}{'train patches/s':>18}")
    figures: dict[str, float] = {}
    for cls in (TwoPathCNN, LocalPathCNN, GlobalPathCNN):
        net = cls(4, 5).to(dev).eval()
        whole, patchwise = inference_times(net, args.size, dev, args.sample, args.batch)
        thr = training_throughput(net, dev, args.batch, args.steps)
        key = cls.__name__.lower()
        figures |= {f"{key}_whole_slice_s": whole, f"{key}_speedup": patchwise / whole, f"{key}_train_patches_s": thr}
        print(f"{cls.__name__:<15}{whole * 1e3:>12.0f}ms{patchwise:>16.1f}s{patchwise / whole:>7.0f}x{thr:>18.0f}")
    print(
        f"(patch by patch: {args.sample} patches timed in batches of {args.batch}, scaled to "
        f"{args.size * args.size} pixels; Havaei et al.: whole slice 45x faster)"
    )
    two = TwoPathCNN(4, 5).to(dev)
    per_patch = training_throughput(two, dev, args.batch, args.steps)
    dense = dense_throughput(two, dev, args.windows, args.dense, args.steps)
    print(
        f"\nTwoPathCNN training, labelled pixels/s: per patch (batches of {args.batch} 33x33 patches) "
        f"{per_patch:,.0f}; dense ({args.windows} windows of {32 + args.dense}x{32 + args.dense}, "
        f"{args.dense}x{args.dense} pixels each) {dense:,.0f}: {dense / per_patch:.1f}x"
    )
    figures |= {"per_patch_pixels_s": per_patch, "dense_pixels_s": dense, "dense_over_per_patch": dense / per_patch}
    if args.equal_minutes > 0:
        res = equal_time_runs(args.equal_minutes, args.dense, args.threads)
        print(f"\nTwoPathCNN trained {args.equal_minutes:g} minutes each way, side by side; validation Dice")
        print(f"{'training':<12}{'steps':>8}{'WT':>8}{'TC':>8}{'ET':>8}{'mean':>8}")
        for name, r in res.items():
            print(
                f"{name:<12}{r['steps']:>8.0f}{r.get('dice_wt', 0):>8.3f}"
                f"{r.get('dice_tc', 0):>8.3f}{r.get('dice_et', 0):>8.3f}{r.get('dice_mean', 0):>8.3f}"
            )
            figures[f"{name}_val_dice_mean"] = r.get("dice_mean", 0.0)
        figures["equal_minutes"] = args.equal_minutes
    pipe = pipeline_throughput(args.batch, 50)
    print(f"data pipeline (balanced sampling + extraction, 1 process): {pipe:,.0f} patches/s")
    figures["pipeline_patches_s"] = pipe

    print(f"\nWhole-slice inference per {args.size}x{args.size} slice and per 155-slice volume")
    print(f"{'net':<18}{'per slice':>12}{'per volume':>13}{'Havaei et al. (GPU)':>22}")
    paper = {"TwoPathCNN": "25 s", "MFCascadeCNN": "1.5 min", "LocalCascadeCNN": "1.7 min", "InputCascadeCNN": "3 min"}
    x = torch.randn(1, 4, args.size, args.size, device=dev)
    with torch.no_grad():
        two = TwoPathCNN(4, 5).to(dev).eval()
        t = best_time(lambda: two(F.pad(x, (16, 16, 16, 16))), dev)
        print(f"{'TwoPathCNN':<18}{t:>11.2f}s{t * 155:>12.0f}s{paper['TwoPathCNN']:>22}")
        figures["twopathcnn_volume_s"] = t * 155
        for cls in (MFCascadeCNN, LocalCascadeCNN, InputCascadeCNN):
            net = cls(TwoPathCNN(4, 5), 4, 5).to(dev).eval()
            b, a = net.first_pad
            t = best_time(lambda net=net, b=b, a=a: net(F.pad(x, (b, a, b, a))), dev)
            print(f"{cls.__name__:<18}{t:>11.2f}s{t * 155:>12.0f}s{paper[cls.__name__]:>22}")
            figures[f"{cls.__name__.lower()}_volume_s"] = t * 155
    print(json_line(figures))


if __name__ == "__main__":
    main()
