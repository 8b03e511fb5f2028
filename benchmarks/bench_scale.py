"""Memory and preparation at the scale of BraTS 2021 (1,251 cases): does anything grow per case?

Usage::

    python benchmarks/bench_scale.py [--sizes 4 16 48] [--cascade-sizes 2 8 16] [--prepare-cases 16] [--repeats 3]

Generates BraTS-size synthetic cases (240x240x155, 1 mm; ``--shape`` makes smaller ones, for smoke
tests only) and, in one run:

* prepares ``--prepare-cases`` of them with 1 and with 2 worker processes (separate caches) and
  prints the speed-up;
* for each size N, ``--repeats`` times (3), starts a fresh process that sets up the data module on N
  cases (N - 1 for training; 1 for validation, the same case at every size, as whole-volume
  inference of it sets much of the peak and brain boxes differ between cases) and trains one epoch
  that visits every training case, then validates on every validation case (``limit_val_batches=None``):

  - the slice model (the FCN): a training loader of one brain slice of every training case (its
    middle one), in full batches of 4, at least 4 of them (the first slices again to fill the last one,
    so that the batch size does not change with N, and every size runs past the first optimiser
    steps), through the real fill path
    (:class:`~brats_lightning.data.datasets.SliceDataset` over the data module's memory-mapped cache);
  - the cascade (InputCascadeCNN, whose first-stage maps over the training cases are computed once
    and cached on disk before any measured run): as many balanced patch batches of 64 as it takes
    the data module's patch sampler to draw from every training case (found by replaying its seeded
    draws, at least 4);

  the process counts the training cases its batches were cut from and the validation cases it
  scored, and both must equal the cases of the split; it samples its memory every 20 ms: private
  anonymous memory (``RssAnon``: what the process owns) and file-backed memory (``RssFile``: pages
  of the memory-mapped cache, which the OS shares between processes and ranks and can drop);
* fits the peak private memory of every run against its number of training cases by least squares:
  the growth per added case with its 95% confidence interval (the slope's standard error, Student's
  t with runs - 2 degrees of freedom). The figure that counts is the interval's upper bound: what
  the data do not rule out; it is extrapolated to 1,251 cases.

The last line is a JSON object with ``mb_per_case_slices`` and ``mb_per_case_cascade`` (the upper
bounds of the 95% intervals; the slopes are ``..._slope``, the lower bounds ``..._ci95_low``) and
``prepare_speedup_2_workers``, and the other figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from _common import CACHE, json_line, table

from brats_lightning.stats import slope_interval

if TYPE_CHECKING:
    from brats_lightning.data.datamodule import BratsDataModule

RUN = r"""
import json, sys, threading, time
import numpy as np
import torch

def status():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("RssAnon", "RssFile", "RssShmem"):
                out[k] = int(v.split()[0]) / 1024
    return out

peak = {"RssAnon": 0.0, "RssFile": 0.0}
stop = False
def sample():
    while not stop:
        s = status()
        for k in peak:
            peak[k] = max(peak[k], s.get(k, 0.0))
        time.sleep(0.02)
threading.Thread(target=sample, daemon=True).start()

import pytorch_lightning as pl
from brats_lightning.data.datamodule import BratsDataModule
from brats_lightning.data.datasets import SliceDataset
from brats_lightning.data.loading import RingLoader
from brats_lightning.data.sampling import PatchSampler
from brats_lightning.seeding import training_epoch
args = json.loads(sys.argv[1])
torch.set_num_threads(2)
trained, validated = set(), set()  # case ids the training batches were cut from; validation cases scored

class CountingSlices(SliceDataset):
    def fill(self, items, arrays):
        trained.update(self.cases[self.index[i][0]].case_id for _, i in items)
        return super().fill(items, arrays)

class CountingPatches(PatchSampler):
    def sample(self, n, distribution, rng):
        case, flat, label = super().sample(n, distribution, rng)
        trained.update(self.cases[c].case_id for c in np.unique(case).tolist())
        return case, flat, label

class Covering(BratsDataModule):
    # the real data module, whose training epoch visits every training case
    @property
    def patch_sampler(self):
        sampler = BratsDataModule.patch_sampler.fget(self)
        sampler.__class__ = CountingPatches  # the data module's own sampler, counting the cases it draws from
        return sampler

    def train_dataloader(self):
        if self.mode == "patches":
            return super().train_dataloader()
        ds = CountingSlices(self.train_cases, self.crop_size, self.batch_size, self.augment, self.seed,
                            self.tumour_fraction, self.context_slices)
        where = {key: i for i, key in enumerate(ds.index)}
        picks = [where[(k, c.brain_slices[len(c.brain_slices) // 2])] for k, c in enumerate(ds.cases)]
        epoch = training_epoch(self.trainer)
        # every batch full (the first slices again at the end): the batch size must not change with N; at
        # least 4 batches, so that every size runs past the first optimiser step (Adam's state, allocator)
        n_batches = max(4, -(-len(picks) // self.batch_size))
        items = [(epoch, picks[k % len(picks)]) for k in range(n_batches * self.batch_size)]
        batches = [items[k : k + self.batch_size] for k in range(0, len(items), self.batch_size)]
        return RingLoader(ds, batch_size=None, sampler=batches, **self._loader_options())

    def on_after_batch_transfer(self, batch, dataloader_idx):
        if isinstance(batch, dict) and not self.trainer.training:
            validated.add(batch["case_id"])
        return super().on_after_batch_transfer(batch, dataloader_idx)

kw = dict(root=args["root"], cache_dir=args["cache"], split_file=args["split"], max_cases=args["n"], num_folds=2,
          fold=1, test_fraction=0.0, crop_size=(144, 192), num_workers=0)
if args["model"] == "fcn":
    from brats_lightning.modules.fcn import FCNModule
    dm = Covering(**kw, batch_size=4)
    model = FCNModule(4, 4, width=0.25, test_hd95=False, inference_batch_size=8)
else:
    from brats_lightning.modules.patch import PatchCNNModule
    dm = Covering(**kw, mode="patches", batch_size=args["patch_batch"],
                  patches_per_epoch=args["patch_batch"] * args["patch_batches"])
    model = PatchCNNModule(
        "input_cascade", 4, 4, first_stage_ckpt=args["first"], inference_batch_size=8, test_hd95=False
    )
    model.preflight()
trainer = pl.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=None, limit_val_batches=None,
                     num_sanity_val_steps=0, logger=False, enable_progress_bar=False, enable_model_summary=False,
                     enable_checkpointing=False)
trainer.fit(model, datamodule=dm)
stop = True
time.sleep(0.05)
result = {**peak, "train_cases": len(dm.train_cases), "val_cases": len(dm.val_cases), "visited": len(trained),
          "validated": len(validated), "train_batches": trainer.global_step}
print("RESULT " + json.dumps(result))
assert trained == {c.case_id for c in dm.train_cases}, f"visited {len(trained)} of {len(dm.train_cases)} cases"
assert validated == {c.case_id for c in dm.val_cases}, f"validated {len(validated)} of {len(dm.val_cases)} cases"
"""

#: patches per batch of the cascade's training loader
PATCH_BATCH = 64


def prepare_time(root: Path, n: int, workers: int, cache: Path) -> float:
    from brats_lightning.data.datamodule import BratsDataModule

    shutil.rmtree(cache, ignore_errors=True)
    dm = BratsDataModule(root=str(root), cache_dir=str(cache), max_cases=n, prepare_workers=workers, num_folds=2)
    t0 = time.perf_counter()
    dm.prepare_data()
    return time.perf_counter() - t0


def measure(args: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", RUN, json.dumps(args)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(line[len("RESULT ") :])


def patch_batches_covering(dm: BratsDataModule, batch_size: int, seed: int = 0, at_least: int = 4) -> int:
    """Patch batches of an epoch whose draws (balanced, epoch 0) cover every training case of ``dm``.

    Replays :class:`~brats_lightning.data.sampling.PatchBatchDataset`'s seeded draws (batch ``i``:
    ``default_rng((seed, 0, i))``) on the data module's training cases.
    """
    sampler = dm.patch_sampler
    seen: set[int] = set()
    i = 0
    while len(seen) < len(sampler.cases):
        case, _, _ = sampler.sample(batch_size, "balanced", np.random.default_rng((seed, 0, i)))
        seen.update(case.tolist())
        i += 1
        if i > 100_000:
            raise RuntimeError("the patch sampler does not reach every training case")
    return max(at_least, i)


def fit_slope(x: list[float], y: list[float]) -> dict[str, float]:
    """Least-squares slope of ``y`` against ``x`` with its standard error and 95% interval
    (:func:`brats_lightning.stats.slope_interval`)."""
    est, intercept = slope_interval(x, y)
    return {"slope": est.value, "se": est.se, "low": est.low, "high": est.high, "intercept": intercept, "runs": est.n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 16, 48])
    parser.add_argument("--cascade-sizes", type=int, nargs="+", default=[2, 8, 16])
    parser.add_argument("--prepare-cases", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="measured processes per size")
    parser.add_argument(
        "--shape", type=int, nargs=3, default=[240, 240, 155], help="synthetic volume shape (smaller: smoke tests only)"
    )
    args = parser.parse_args()
    for name, sizes in (("--sizes", args.sizes), ("--cascade-sizes", args.cascade_sizes)):
        if min(sizes) < 2 or len(set(sizes)) < 2 or args.repeats * len(sizes) < 3:
            parser.error(f"{name}: 2 different sizes or more, each >= 2, and 3 runs or more (with --repeats)")
    if args.repeats < 1 or args.prepare_cases < 1:
        parser.error("--repeats and --prepare-cases must be >= 1")
    shape = tuple(args.shape)
    n_max = max(max(args.sizes), max(args.cascade_sizes), args.prepare_cases)
    from brats_lightning.data.synthetic import write_dataset

    what = "x".join(map(str, shape))
    name = "synthetic-brats-size" if shape == (240, 240, 155) else f"synthetic-{what}"
    root = CACHE / f"{name}-n{n_max}"
    write_dataset(root, n_cases=n_max, shape=shape, spacing=1.0, seed=0, progress=True)
    print(f"Data: {n_max} synthetic {what} cases in {root}\n")

    # preparation with 1 and 2 workers, one run
    t1 = prepare_time(root, args.prepare_cases, 1, CACHE / "scale-prep-1")
    t2 = prepare_time(root, args.prepare_cases, 2, CACHE / "scale-prep-2")
    print(
        table(
            [
                ["1 worker", f"{t1:.1f}", f"{t1 / args.prepare_cases:.2f}", "1.00"],
                ["2 workers", f"{t2:.1f}", f"{t2 / args.prepare_cases:.2f}", f"{t1 / t2:.2f}"],
            ],
            [f"prepare {args.prepare_cases} cases", "seconds", "s/case", "speed-up"],
        )
    )

    cache = CACHE / "scale-cache"
    from brats_lightning.data.datamodule import BratsDataModule

    dm = BratsDataModule(root=str(root), cache_dir=str(cache), max_cases=n_max, num_folds=2)
    dm.prepare_data()  # everything once, with the pool
    ids = [c.case_id for c in dm.discover()]
    # a random "trained" TwoPathCNN as the cascade's first stage (the maps' content does not matter here)
    import torch

    from brats_lightning.modules.patch import PatchCNNModule

    # seeded: its maps are cached under a hash of its weights, so every run reuses the first run's maps
    torch.manual_seed(0)
    first = PatchCNNModule("twopath", 4, 4)
    first_ckpt = CACHE / "scale-first-stage.ckpt"
    torch.save({"hyper_parameters": dict(first.hparams), "state_dict": first.state_dict()}, first_ckpt)

    def split(n: int) -> Path:
        path = CACHE / f"scale-split-{root.name}-{n}.json"
        # the same validation case at every size: whole-volume inference of it sets much of the peak,
        # and its brain box differs from case to case, which would read as growth with N
        path.write_text(json.dumps({"test": [], "folds": [ids[1:n], ids[:1]]}))
        return path

    def run(model: str, n: int) -> dict:
        job = {"root": str(root), "cache": str(cache), "split": str(split(n)), "n": n, "model": model}
        job |= {"first": str(first_ckpt), "patch_batch": PATCH_BATCH, "patch_batches": 4}
        if model == "cascade":
            patches = BratsDataModule(
                root=str(root), cache_dir=str(cache), split_file=job["split"], max_cases=n, num_folds=2, fold=1,
                test_fraction=0.0, mode="patches", batch_size=PATCH_BATCH,
            )  # fmt: skip
            patches.setup()
            job["patch_batches"] = patch_batches_covering(patches, PATCH_BATCH, patches.seed)
        r = measure(job)
        if r["visited"] != r["train_cases"] or r["validated"] != r["val_cases"]:
            raise RuntimeError(f"{model} on {n} cases visited {r['visited']} of {r['train_cases']} training cases")
        return r

    # the first-stage maps are computed once and cached on disk: compute them before measuring, so
    # that every measured process does the same work (maps read, not computed)
    run("cascade", max(args.cascade_sizes))
    results: dict[str, list[dict]] = {"fcn": [], "cascade": []}
    for repeat in range(args.repeats):  # sizes interleaved, so that a drift of the machine spreads over them
        for model, sizes in (("fcn", args.sizes), ("cascade", args.cascade_sizes)):
            for n in sizes:
                r = run(model, n)
                results[model].append({"n": n, "repeat": repeat + 1, **r})
                print(
                    f"  {model} N={n} run {repeat + 1}: {r['visited']} of {r['train_cases']} training cases "
                    f"visited, {r['validated']} validated, peak RssAnon {r['RssAnon']:.0f} MB",
                    flush=True,
                )
    fits = {}
    for model, rs in results.items():
        rs.sort(key=lambda r: (r["n"], r["repeat"]))
        rows = [
            [
                str(r["repeat"]),
                str(r["train_cases"]),
                f"{r['visited']}",
                str(r["train_batches"]),
                str(r["validated"]),
                f"{r['RssAnon']:.1f}",
                f"{r['RssFile']:.1f}",
            ]
            for r in rs
        ]
        header = ["run", "training cases", "visited", "training batches", "validation cases"]
        header += ["peak private MB (RssAnon)", "peak file-backed MB (RssFile)"]
        print(f"\n{model}\n" + table(rows, header))
        f = fits[model] = fit_slope([r["train_cases"] for r in rs], [r["RssAnon"] for r in rs])
        print(
            f"{model}: {f['slope']:+.3f} MB of private memory per added case, 95% CI [{f['low']:+.3f}, "
            f"{f['high']:+.3f}] (se {f['se']:.3f}, {f['runs']} runs) -> at most {f['high'] * 1251:+.0f} MB "
            f"at 1,251 cases (slope: {f['slope'] * 1251:+.0f} MB)"
        )
    figures: dict = {
        "mb_per_case_slices": fits["fcn"]["high"],
        "mb_per_case_cascade": fits["cascade"]["high"],
        "prepare_speedup_2_workers": t1 / t2,
        "prepare_s_per_case_1_worker": t1 / args.prepare_cases,
        "prepare_s_per_case_2_workers": t2 / args.prepare_cases,
    }
    for model, key in (("fcn", "slices"), ("cascade", "cascade")):
        f = fits[model]
        figures |= {
            f"mb_per_case_{key}_slope": f["slope"],
            f"mb_per_case_{key}_ci95_low": f["low"],
            f"mb_per_case_{key}_ci95_high": f["high"],
            f"mb_per_case_{key}_se": f["se"],
            f"extrapolated_mb_1251_{key}": f["high"] * 1251,
            f"extrapolated_mb_1251_{key}_slope": f["slope"] * 1251,
            f"runs_{key}": f["runs"],
        }
    for model, rs in results.items():
        for n in sorted({r["train_cases"] for r in rs}):
            same = [r for r in rs if r["train_cases"] == n]
            figures[f"peak_rss_anon_mb_{model}_{n}"] = [round(r["RssAnon"], 1) for r in same]
            figures[f"peak_rss_file_mb_{model}_{n}"] = [round(r["RssFile"], 1) for r in same]
            figures[f"train_batches_{model}_{n}"] = same[0]["train_batches"]
            figures[f"cases_visited_{model}_{n}"] = [r["visited"] for r in same]
    figures |= {"repeats": args.repeats, "data": f"synthetic {what}"}
    print(json_line(figures))


if __name__ == "__main__":
    main()
