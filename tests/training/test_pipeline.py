"""brats_lightning.training.pipeline: multi-stage jobs hand checkpoints over."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from brats_lightning.run_files import PipelineFile, read_run_file
from brats_lightning.training.train import main as train_main
from tests.helpers import run_main

# the smallest runs that still go through both phases of two-phase training and validate once (in phase 2)
TINY_STAGES = [
    "debug=default",
    "logger=none",
    "data.preprocess.n4=[]",
    "data.max_cases=4",
    "data.num_folds=2",
    "data.patches_per_epoch=64",
    "data.batch_size=32",
    "trainer.limit_train_batches=1",
    "trainer.limit_val_batches=1",
    "trainer.check_val_every_n_epoch=2",
]


def test_the_second_stage_is_built_on_the_first_stages_best_checkpoint(tmp_path: Path, cache_dir: Path) -> None:
    run_main(
        train_main,
        "experiment=havaei_cascade",
        "cascade=local_cascade",
        *TINY_STAGES,
        f"paths.cache_dir={cache_dir}",
        f"hydra.run.dir={tmp_path}",
    )
    stages = json.loads((tmp_path / "pipeline.json").read_text())
    assert list(stages) == ["twopath", "local_cascade"]
    checked = read_run_file(tmp_path / "pipeline.json", PipelineFile, "pipeline").root  # the schema accepts it
    assert checked["twopath"].dir == stages["twopath"]["dir"]
    first, second = stages["twopath"], stages["local_cascade"]
    assert first["dir"] == str(tmp_path / "twopath") and second["dir"] == str(tmp_path / "local_cascade")
    best = first["best_ckpt"]
    assert best == str(tmp_path / "twopath" / "checkpoints" / "best.ckpt")
    # every stage got the command line's options but the pipeline's own; the second also the first's best checkpoint
    for stage in (first, second):
        assert set(TINY_STAGES) <= set(stage["overrides"]) and "pipeline=null" in stage["overrides"]
        assert not [o for o in stage["overrides"] if o.startswith(("cascade=", "hydra."))]
    assert f"model.first_stage_ckpt={best}" in second["overrides"]
    assert "model=local_cascade" in second["overrides"] and "model=twopath" in first["overrides"]
    cascade = torch.load(second["best_ckpt"], map_location="cpu", weights_only=True)
    assert cascade["hyper_parameters"]["arch"] == "local_cascade"
    assert cascade["hyper_parameters"]["first_stage_ckpt"] == best
    # the cascade's frozen first stage holds exactly the weights of that checkpoint
    twopath = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
    frozen = {k.removeprefix("net.first."): v for k, v in cascade["state_dict"].items() if k.startswith("net.first.")}
    assert frozen.keys() == {k.removeprefix("net.") for k in twopath}
    for key, value in twopath.items():
        assert torch.equal(frozen[key.removeprefix("net.")], value), key
    # the run's metrics are the last stage's test metrics
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics == {k: v for k, v in second.items() if k.startswith("test/")} and "test/dice_wt" in metrics
