"""Memory and preparation at the scale of BraTS 2021 (1,251 cases): does anything grow per case?

Usage::

    python benchmarks/bench_scale.py [--sizes 4 8 16] [--cascade-sizes 2 4 6] [--prepare-cases 8]

Generates BraTS-size synthetic cases (240x240x155, 1 mm) and, in one run:

* prepares ``--prepare-cases`` of them with 1 and with 2 worker processes (separate caches) and
  prints the speed-up;
* for each size N, starts a fresh process that sets up the data module on N cases (N - 1 for
  training, 1 for validation) and trains a few steps of a slice model (the FCN) and of a cascade
  (InputCascadeCNN, whose first-stage maps over the training cases are computed and cached on disk),
  sampling the process's memory every 20 ms: private anonymous memory (``RssAnon``: what the process
  owns) and file-backed memory (``RssFile``: pages of the memory-mapped cache, which the OS shares
  between processes and ranks and can drop);
* fits the peak private memory against N: the growth per added case, extrapolated to 1,251 cases.

The last line is a JSON object with ``mb_per_case_slices``, ``mb_per_case_cascade`` and
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

import numpy as np
from _common import CACHE, json_line, table

RUN = r"""
import json, sys, threading, time
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
args = json.loads(sys.argv[1])
torch.set_num_threads(2)
kw = dict(root=args["root"], cache_dir=args["cache"], split_file=args["split"], max_cases=args["n"], num_folds=2,
          fold=1, test_fraction=0.0, crop_size=(144, 192), num_workers=0)
if args["model"] == "fcn":
    from brats_lightning.modules.fcn import FCNModule
    dm = BratsDataModule(**kw, batch_size=4)
    model = FCNModule(4, 4, width=0.25, test_hd95=False, inference_batch_size=8)
else:
    from brats_lightning.modules.patch import PatchCNNModule
    dm = BratsDataModule(**kw, mode="patches", batch_size=64, patches_per_epoch=64 * 4)
    model = PatchCNNModule(
        "input_cascade", 4, 4, first_stage_ckpt=args["first"], inference_batch_size=8, test_hd95=False
    )
    model.preflight()
trainer = pl.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=3, limit_val_batches=0, logger=False,
                     enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
trainer.fit(model, datamodule=dm)
stop = True
time.sleep(0.05)
print("RESULT " + json.dumps({**peak, "train_cases": len(dm.train_cases)}))
"""


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


def slope(ns: list[int], values: list[float]) -> float:
    """Least-squares growth of ``values`` per unit of ``ns``."""
    return float(np.polyfit(np.asarray(ns, float), np.asarray(values, float), 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 16, 48])
    parser.add_argument("--cascade-sizes", type=int, nargs="+", default=[2, 8, 16])
    parser.add_argument("--prepare-cases", type=int, default=16)
    args = parser.parse_args()
    n_max = max(max(args.sizes), max(args.cascade_sizes), args.prepare_cases)
    from brats_lightning.data.synthetic import write_dataset

    root = CACHE / f"synthetic-brats-size-n{n_max}"
    write_dataset(root, n_cases=n_max, shape=(240, 240, 155), spacing=1.0, seed=0, progress=True)
    print(f"Data: {n_max} synthetic 240x240x155 cases in {root}\n")

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

    first = PatchCNNModule("twopath", 4, 4)
    first_ckpt = CACHE / "scale-first-stage.ckpt"
    torch.save({"hyper_parameters": dict(first.hparams), "state_dict": first.state_dict()}, first_ckpt)

    def run(model: str, n: int) -> dict:
        split = CACHE / f"scale-split-{n}.json"
        split.write_text(json.dumps({"test": [], "folds": [ids[: n - 1], ids[n - 1 : n]]}))
        job = {"root": str(root), "cache": str(cache), "split": str(split), "n": n, "model": model}
        return measure({**job, "first": str(first_ckpt)})

    # the first-stage maps are computed once and cached on disk: compute them before measuring, so
    # that every measured process does the same work (maps read, not computed)
    run("cascade", max(args.cascade_sizes))
    results: dict[str, list[dict]] = {"fcn": [], "cascade": []}
    for model, sizes in (("fcn", args.sizes), ("cascade", args.cascade_sizes)):
        for n in sizes:
            results[model].append({"n": n, **run(model, n)})
    rows = []
    growth = {}
    for model, rs in results.items():
        for r in rs:
            rows.append([model, str(r["train_cases"]), f"{r['RssAnon']:.0f}", f"{r['RssFile']:.0f}"])
        growth[model] = slope([r["train_cases"] for r in rs], [r["RssAnon"] for r in rs])
    print()
    print(table(rows, ["model", "training cases", "peak private MB (RssAnon)", "peak file-backed MB (RssFile)"]))
    for model, g in growth.items():
        print(f"{model}: {g:+.2f} MB of private memory per added case -> {g * 1251:+.0f} MB at 1,251 cases")
    print(
        json_line(
            {
                "mb_per_case_slices": growth["fcn"],
                "mb_per_case_cascade": growth["cascade"],
                "prepare_speedup_2_workers": t1 / t2,
                "prepare_s_per_case_1_worker": t1 / args.prepare_cases,
                "prepare_s_per_case_2_workers": t2 / args.prepare_cases,
                "extrapolated_mb_1251_slices": growth["fcn"] * 1251,
                "extrapolated_mb_1251_cascade": growth["cascade"] * 1251,
                **{f"peak_rss_anon_mb_{m}_{r['train_cases']}": r["RssAnon"] for m, rs in results.items() for r in rs},
                **{f"peak_rss_file_mb_{m}_{r['train_cases']}": r["RssFile"] for m, rs in results.items() for r in rs},
            }
        )
    )


if __name__ == "__main__":
    main()
