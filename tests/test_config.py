"""The configs in conf/ (brats_lightning.config): every entry point, model, experiment and ablation composes and
sets what it says.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from brats_lightning.config import compose, config_dir

CONF = Path(config_dir())


ENTRY_POINTS = sorted(p.stem for p in CONF.glob("*.yaml"))


# model option -> (LightningModule class, input channels, data mode, expected values of model.*)
MODELS: dict[str, tuple[str, int, str, dict[str, Any]]] = {
    "fcn": ("FCNModule", 4, "slices", {"n_blocks": 3}),
    "fcn_sym": ("FCNModule", 8, "slices", {"n_blocks": 3}),
    "fcn4": ("FCNModule", 4, "slices", {"n_blocks": 4}),
    "fcn4_sym": ("FCNModule", 8, "slices", {"n_blocks": 4}),
    "localpath": ("PatchCNNModule", 4, "patches", {"arch": "localpath"}),
    "globalpath": ("PatchCNNModule", 4, "patches", {"arch": "globalpath"}),
    "twopath": ("PatchCNNModule", 4, "patches", {"arch": "twopath"}),
    "average": ("PatchCNNModule", 4, "patches", {"arch": "average", "local_ckpt": "l.ckpt", "global_ckpt": "g.ckpt"}),
    "input_cascade": ("PatchCNNModule", 4, "patches", {"arch": "input_cascade", "first_stage_ckpt": "f.ckpt"}),
    "local_cascade": ("PatchCNNModule", 4, "patches", {"arch": "local_cascade", "first_stage_ckpt": "f.ckpt"}),
    "mf_cascade": ("PatchCNNModule", 4, "patches", {"arch": "mf_cascade", "first_stage_ckpt": "f.ckpt"}),
}


# the options a model config leaves mandatory (???): given on the command line
MODEL_INPUTS = {
    "average": ["model.local_ckpt=l.ckpt", "model.global_ckpt=g.ckpt"],
    **{m: ["model.first_stage_ckpt=f.ckpt"] for m in ("input_cascade", "local_cascade", "mf_cascade")},
}


# experiment option -> values it must set (dotted keys of the composed config)
EXPERIMENTS: dict[str, dict[str, Any]] = {
    "shen_blocks": {
        "hydra.mode": RunMode.MULTIRUN,
        "hydra.sweeper.params": {"model": "fcn,fcn4", "data.fold": "0,1,2,3,4"},
        "data.test_fraction": 0.0,
        "data.num_folds": 5,
        "data.augment": False,
        "model.postprocess": None,
    },
    "shen_symmetry": {
        "hydra.mode": RunMode.MULTIRUN,
        "hydra.sweeper.params": {"model": "fcn,fcn_sym", "data.fold": "0,1,2,3,4"},
        "data.test_fraction": 0.0,
        "data.num_folds": 5,
        "data.augment": False,
    },
    "havaei_table1": {
        "hydra.mode": RunMode.MULTIRUN,
        "hydra.sweeper.params": {
            "havaei": "twopath_star,localpath_star,average_star,globalpath_star,twopath,localpath"
        },
        "cpu_patches_per_epoch": 12800,
    },
    "havaei_table2": {
        "hydra.mode": RunMode.MULTIRUN,
        "hydra.sweeper.params": {"havaei": "input_cascade_star,local_cascade_star,mf_cascade_star"},
        "cpu_patches_per_epoch": 8192,
    },
    "real_fast": {
        "hydra.mode": None,
        "cross_validation": True,
        "data._target_": "brats_lightning.data.datamodule.BratsDataModule",
        "data.synthetic": False,  # data=brats: real data only
        "data.test_fraction": 0.0,
        "data.num_folds": 5,
        "data.split": "stratified",
        "budget_minutes": 90,
        "trainer.max_epochs": -1,
        "trainer.min_epochs": None,  # the budget stops it even inside the first epoch
        "trainer.limit_val_batches": 0,  # a fold's cases choose nothing: no validation, no best epoch
        "callbacks.model_checkpoint": None,
        "callbacks.budget_schedule._target_": "brats_lightning.callbacks.budget.BudgetSchedule",
        "callbacks.ema": None,  # measured worse than the final weights (README ablation)
        "model.postprocess": None,
        "model.lesion_metrics": True,
        "model.arch": "unet",  # gained on the enhancing tumour under leave-one-site-out (docs: real-fast.md)
        "model.width": 0.5,
    },
    "real_fast_ablation": {
        "hydra.mode": RunMode.MULTIRUN,
        "hydra.sweeper.params": {"+ablation": "paper,baseline,unet,regions,augment,context,narrow,dynunet,all"},
        "cross_validation": True,
        "budget_minutes": 30,
        "reserve_minutes": 3,
        "cv.tta_flips": ["lr", "ap"],
        "cv.fold_minutes": 4.5,
        "cv.raw_weights": True,
        "callbacks.ema._target_": "pytorch_lightning.callbacks.EMAWeightAveraging",
        "callbacks.ema.decay": 0.99,
    },
    "havaei_cascade": {
        "hydra.mode": None,
        "cpu_patches_per_epoch": 8192,
        "cascade": "input_cascade",
        "pipeline.args": ["cascade"],
        "pipeline.stages": [
            {"name": "twopath", "overrides": ["model=twopath"]},
            {
                "name": "input_cascade",
                "overrides": ["model=input_cascade"],
                "inputs": {"model.first_stage_ckpt": "twopath"},
            },
        ],
    },
}


def _plain(cfg: DictConfig, key: str) -> Any:
    """``cfg``'s value at the dotted ``key``, as plain Python."""
    value = OmegaConf.select(cfg, key, throw_on_missing=True)
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig | ListConfig) else value


def _resolved(cfg: DictConfig) -> dict:
    """The whole job config resolved, every mandatory value given (raises otherwise)."""
    return OmegaConf.to_container(
        OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True, throw_on_missing=True
    )  # type: ignore[return-value]


def test_the_entry_points_and_options_are_those_tested() -> None:
    assert ENTRY_POINTS == ["evaluate", "export", "predict", "prepare", "train"]
    assert sorted(p.stem for p in (CONF / "model").glob("*.yaml")) == sorted(MODELS)
    assert sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")) == sorted(EXPERIMENTS)


def test_train_defaults(tmp_path: Path) -> None:
    cfg = compose(output_dir=str(tmp_path))
    plain = _resolved(cfg)
    assert plain["task_name"] == "train" and plain["seed"] == 42 and plain["train"] and plain["test"]
    assert plain["model"]["_target_"] == "brats_lightning.modules.fcn.FCNModule" and plain["model"]["n_blocks"] == 3
    assert plain["data"]["root"] is None and plain["data"]["synthetic"]["n_cases"] == 24  # the built-in data set
    assert plain["data"]["in_channels"] == plain["model"]["in_channels"] == 4 and plain["data"]["symmetry"] is False
    assert plain["trainer"]["accelerator"] == "cpu" and plain["trainer"]["max_epochs"] == 2
    assert plain["logger"]["csv"]["save_dir"] == str(tmp_path)
    assert plain["callbacks"]["model_checkpoint"]["dirpath"] == f"{tmp_path}/checkpoints"
    assert cfg.hydra.run.dir.startswith(f"{cfg.paths.log_dir}/train/runs/")


def test_predict_defaults_and_mandatory_options(tmp_path: Path) -> None:
    cfg = compose(["ckpt_path=m.ckpt", "input_dir=in", "output_dir=out"], config_name="predict")
    plain = _resolved(cfg)
    assert (plain["task_name"], plain["ckpt_path"], plain["input_dir"], plain["output_dir"]) == (
        "predict",
        "m.ckpt",
        "in",
        "out",
    )
    # the model's own clean-up and the input's label convention, unless asked otherwise
    assert plain["postprocess"] == "auto" and plain["output_convention"] == "auto" and plain["layout"] == "auto"
    assert plain["probabilities"] is False and plain["overwrite"] is False and plain["devices"] == 1
    # mirroring as the checkpoint was tuned (none unless a run chose it on its validation cases), or as asked
    assert plain["tta"] == "auto" and plain["tta_flips"] == ["lr"]
    assert cfg.hydra.run.dir.startswith(f"{cfg.paths.log_dir}/predict/runs/")
    bare = compose(config_name="predict")
    for key in ("ckpt_path", "input_dir", "output_dir"):
        with pytest.raises(MissingMandatoryValue):
            bare[key]


def test_export_defaults_and_mandatory_options() -> None:
    cfg = compose(["ckpt_path=m.ckpt", "out=m.onnx"], config_name="export")
    plain = _resolved(cfg)
    assert (plain["task_name"], plain["ckpt_path"], plain["out"]) == ("export", "m.ckpt", "m.onnx")
    assert plain["opset"] == 18 and plain["check"] is True
    assert cfg.hydra.run.dir.startswith(f"{cfg.paths.log_dir}/export/runs/")
    bare = compose(config_name="export")
    for key in ("ckpt_path", "out"):
        with pytest.raises(MissingMandatoryValue):
            bare[key]


def test_evaluate_defaults_and_mandatory_options() -> None:
    cfg = compose(["pred_dir=p", "gt_dir=g", "out_dir=o"], config_name="evaluate")
    plain = _resolved(cfg)
    assert plain["task_name"] == "evaluate" and (plain["pred_dir"], plain["gt_dir"], plain["out_dir"]) == (
        "p",
        "g",
        "o",
    )
    assert plain["pred_convention"] == plain["gt_convention"] == "auto"
    assert plain["hd95"] is True and plain["lesion_wise"] is True and plain["name"] is None
    assert cfg.hydra.run.dir.startswith(f"{cfg.paths.log_dir}/evaluate/runs/")
    bare = compose(config_name="evaluate")
    for key in ("pred_dir", "gt_dir", "out_dir"):
        with pytest.raises(MissingMandatoryValue):
            bare[key]


@pytest.mark.parametrize("options", [["model=fcn_sym"], ["model=twopath", "data.modalities=[flair,t1c]"]])
def test_prepare_prepares_what_training_with_the_same_options_reads(tmp_path: Path, options: list[str]) -> None:
    prep = compose(options, config_name="prepare", output_dir=str(tmp_path))
    train = compose(options, output_dir=str(tmp_path))
    assert prep.task_name == "prepare" and train.task_name == "train"
    assert _resolved(prep)["data"] == _resolved(train)["data"]
    assert prep.data.in_channels == (8 if options == ["model=fcn_sym"] else 2)
    assert prep.hydra.run.dir.startswith(f"{prep.paths.log_dir}/prepare/runs/")


@pytest.mark.parametrize("model", sorted(MODELS))
def test_every_model_option_composes_and_builds(tmp_path: Path, model: str) -> None:
    cls, channels, mode, expected = MODELS[model]
    cfg = compose([f"model={model}", *MODEL_INPUTS.get(model, [])], output_dir=str(tmp_path))
    plain = _resolved(cfg)
    assert plain["model"]["_target_"].rsplit(".", 1)[1] == cls
    assert plain["model"]["in_channels"] == plain["data"]["in_channels"] == channels
    assert plain["model"]["num_classes"] == plain["data"]["num_classes"] == 4
    assert plain["data"]["symmetry"] is model.endswith("_sym") and plain["data"]["mode"] == mode
    for key, value in expected.items():
        assert plain["model"][key] == value, key
    havaei = mode == "patches"
    # Havaei et al.: N4 on T1 and T1c, 33x33 patches, connected-component clean-up, two-phase training
    # (AverageCNN trains nothing: it averages two trained nets)
    assert plain["data"]["preprocess"]["n4"] == (["t1", "t1c"] if havaei else [])
    assert (plain["model"]["postprocess"] or {}).get("min_volume_mm3") == (500 if havaei else None)
    assert ("two_phase" in plain["callbacks"]) is (havaei and model != "average")
    assert plain["train"] is (model != "average")
    if havaei:
        assert plain["model"]["patch_size"] == plain["data"]["patch_size"] == 33
        assert plain["data"]["patches_per_epoch"] == 25600  # the CPU's epoch (conf/scale/cpu.yaml)
    # the model and the data module build from it (stage checkpoints are read later, in setup)
    net = instantiate(cfg.model, _convert_="all")
    assert type(net).__name__ == cls
    first_conv = next(w for w in net.state_dict().values() if w.ndim == 4)
    assert first_conv.shape[1] == channels
    dm = instantiate(cfg.data, _convert_="all")
    assert dm.in_channels == channels


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_every_experiment_option_sets_its_values(tmp_path: Path, name: str) -> None:
    cfg = compose([f"experiment={name}"], output_dir=str(tmp_path))
    assert cfg.task_name == name
    assert cfg.hydra.sweep.dir.startswith(f"{cfg.paths.log_dir}/{name}/multiruns/")
    for key, value in EXPERIMENTS[name].items():
        assert _plain(cfg, key) == value, key
    if name.startswith("havaei"):
        # the experiment's smaller CPU epochs reach the data (a multirun's jobs choose the model)
        job = [f"experiment={name}", "model=twopath", "pipeline=null"]
        assert compose(job, output_dir=str(tmp_path)).data.patches_per_epoch == cfg.cpu_patches_per_epoch
        assert compose([*job, "trainer=gpu"], output_dir=str(tmp_path)).data.patches_per_epoch == 300000
    _resolved(cfg)


# ablation option -> what it sets on top of experiment=real_fast_ablation's baseline (issue 15's recipe)
BASELINE = {
    "model.arch": "fcn",
    "model.outputs": "softmax",
    "model.loss": "ce_dice",
    "data.symmetry": True,
    "data.tumour_fraction": 0.5,
    "data.context_slices": 0,
    "data.augment_options": {"intensity": False},
    "callbacks.budget_schedule.floor": 0.01,
    "callbacks.ema.decay": 0.99,
    "model.width": 1.0,  # the ablation measures at Shen et al.'s width (real_fast itself runs at half width)
    "model.region_weights": [1.0, 1.0, 1.0],
    "data.preprocess.histogram": False,
}


AUGMENT = {"rotate_deg": 15.0, "scale": 0.15, "prob": 0.5, "flip_prob": 0.5, "elastic_prob": 0.2, "intensity": True}


ABLATIONS: dict[str, dict[str, Any]] = {
    "paper": {k: v for k, v in BASELINE.items() if not k.startswith("callbacks.")}
    | {
        "data.tumour_fraction": 0.0,
        "model.loss": "ce",
        "callbacks.budget_schedule": None,
        "callbacks.ema": None,
        "trainer.precision": 32,
    },
    "baseline": BASELINE,
    "unet": BASELINE | {"model.arch": "unet"},
    "regions": BASELINE | {"model.outputs": "regions", "model.loss": "dice_bce"},
    "augment": BASELINE | {"data.augment_options": AUGMENT},
    "context": BASELINE | {"data.context_slices": 1, "data.in_channels": 24},
    "narrow": BASELINE | {"model.width": 0.5},
    "dynunet": BASELINE | {"model.arch": "dynunet", "model.levels": 5},
    "et_weight": BASELINE | {"model.region_weights": [1.0, 1.0, 2.0]},
    "histogram": BASELINE | {"data.preprocess.histogram": True, "data.augment_options": {"intensity": True}},
    "all": BASELINE
    | {
        "model.arch": "unet",
        "model.outputs": "regions",
        "model.loss": "dice_bce",
        "data.augment_options": AUGMENT,
        "data.context_slices": 1,
    },
}


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_every_ablation_switches_on_one_option_of_the_baseline(tmp_path: Path, name: str) -> None:
    assert sorted(p.stem for p in (CONF / "ablation").glob("*.yaml")) == sorted(ABLATIONS)
    cfg = compose(["experiment=real_fast_ablation", f"+ablation={name}", "data.root=r"], output_dir=str(tmp_path))
    for key, value in ABLATIONS[name].items():
        assert _plain(cfg, key) == value, key
    assert cfg.cross_validation is True and cfg.budget_minutes == 30  # a whole cross-validation in 30 minutes
    _resolved(cfg)


def test_real_fast_on_a_gpu_has_a_longer_budget_and_larger_batches(tmp_path: Path) -> None:
    cfg = compose(["experiment=real_fast", "trainer=gpu", "budget_minutes=100"], output_dir=str(tmp_path))
    assert cfg.budget_minutes == 100 and cfg.reserve_minutes == 10 and cfg.data.batch_size == 32
    ablation = compose(["experiment=real_fast_ablation", "trainer=gpu"], output_dir=str(tmp_path))
    assert ablation.callbacks.ema.decay == 0.999  # a GPU fold trains thousands of steps: a longer average
    gpu = compose(["experiment=real_fast", "trainer=gpu"], output_dir=str(tmp_path))
    assert gpu.budget_minutes == 240


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        ([], "U-Net decoder + symmetry, half width (real_fast)"),
        (["model.arch=fcn"], "FCN + symmetry, half width (real_fast)"),
        (["model.width=1.0"], "U-Net decoder + symmetry (real_fast)"),
        (["model.width=0.25", "data.symmetry=false"], "U-Net decoder, width 0.25 (real_fast)"),
        (["+ablation=et_weight"], "U-Net decoder + symmetry, half width, ET weighted x2"),
    ],
)
def test_a_real_fast_run_is_named_for_the_net_it_trains(tmp_path: Path, overrides: list[str], name: str) -> None:
    # the name goes into the model card, the tables and the logs: overriding the net must not keep the default's name
    cfg = compose(["experiment=real_fast", "data.root=r", *overrides], output_dir=str(tmp_path))
    assert cfg.model.name == name


def test_the_ablation_names_the_nets_it_measures(tmp_path: Path) -> None:
    # Shen et al.'s FCN at full width, whatever real_fast's default net is
    names = {
        a: compose(["experiment=real_fast_ablation", f"+ablation={a}"], output_dir=str(tmp_path)).model.name
        for a in ("baseline", "narrow", "unet")
    }
    assert names == {
        "baseline": "FCN + symmetry (baseline)",
        "narrow": "FCN + symmetry, half width",
        "unet": "U-Net decoder + symmetry",
    }


def test_the_cascade_experiment_follows_its_cascade_option(tmp_path: Path) -> None:
    cfg = compose(["experiment=havaei_cascade", "cascade=mf_cascade"], output_dir=str(tmp_path))
    second = _plain(cfg, "pipeline.stages")[1]
    assert second == {
        "name": "mf_cascade",
        "overrides": ["model=mf_cascade"],
        "inputs": {"model.first_stage_ckpt": "twopath"},
    }


def _stage_configs(name: str, cfg, tmp_path: Path) -> list:
    """Each pipeline stage of ``cfg`` composed as the pipeline would (stage inputs as dummy checkpoints)."""
    return [
        compose(
            [f"experiment={name}", *stage.overrides, "pipeline=null"]
            + [f"{k}=/tmp/x.ckpt" for k in (stage.get("inputs") or {})],
            output_dir=str(tmp_path),
        )
        for stage in cfg.pipeline.stages
    ]


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_every_experiment_composes(tmp_path: Path, name: str) -> None:
    cfg = compose([f"experiment={name}"], output_dir=str(tmp_path))
    assert cfg.task_name == name
    params = cfg.hydra.sweeper.params or {}
    # every swept value (and every pipeline stage) composes too
    for key, values in params.items():
        for value in str(values).split(","):
            sub = compose([f"experiment={name}", f"{key}={value}"], output_dir=str(tmp_path))
            if sub.pipeline:
                for stage_cfg in _stage_configs(name, sub, tmp_path):
                    assert stage_cfg.model.in_channels == stage_cfg.data.in_channels
            else:
                assert sub.model.in_channels == sub.data.in_channels
    if cfg.pipeline:
        for stage_cfg in _stage_configs(name, cfg, tmp_path):
            assert stage_cfg.model._target_
    GlobalHydra.instance().clear()


def test_there_are_paper_experiments() -> None:
    assert {"shen_blocks", "shen_symmetry", "havaei_table1", "havaei_table2", "havaei_cascade"} <= set(EXPERIMENTS)


def test_havaei_run_sizes_follow_the_hardware(tmp_path: Path) -> None:
    """CPU runs are short; trainer=gpu/ddp train the paper's ~3-minute epochs (conf/scale/)."""
    out = str(tmp_path)
    cpu = compose(["model=twopath"], output_dir=out)
    gpu = compose(["model=twopath", "trainer=gpu"], output_dir=out)
    ddp = compose(["model=twopath", "trainer=ddp"], output_dir=out)
    assert (cpu.data.patches_per_epoch, cpu.callbacks.two_phase.phase2_epochs) == (25600, 1)
    assert (gpu.data.patches_per_epoch, gpu.callbacks.two_phase.phase2_epochs) == (300000, 5)
    assert ddp.data.patches_per_epoch == 300000 and gpu.trainer.benchmark and gpu.data.num_workers == "auto"
    # an experiment's CPU size applies on the CPU only
    stage = ["experiment=havaei_cascade", "model=twopath", "pipeline=null"]
    assert compose(stage, output_dir=out).data.patches_per_epoch == 8192
    assert compose([*stage, "trainer=gpu"], output_dir=out).data.patches_per_epoch == 300000
    assert compose(["experiment=havaei_table1", "havaei=twopath_star"], output_dir=out).data.patches_per_epoch == 12800


def test_the_papers_protocols_are_the_experiments_defaults(tmp_path: Path) -> None:
    out = str(tmp_path)
    for name in ("shen_symmetry", "shen_blocks"):
        cfg = compose([f"experiment={name}"], output_dir=out)
        # Shen et al. Sec. 3.2: 5-fold CV over all cases, no augmentation in CV
        assert cfg.data.test_fraction == 0.0 and cfg.data.num_folds == 5 and cfg.data.augment is False
        assert cfg.hydra.sweeper.params["data.fold"] == "0,1,2,3,4"
        assert cfg.model.postprocess is None
    for row in ("twopath_star", "localpath", "average_star"):
        cfg = compose(["experiment=havaei_table1", f"havaei={row}"], output_dir=out)
        if cfg.pipeline:  # AverageCNN*: its stages
            cfg = compose(
                ["experiment=havaei_table1", f"havaei={row}", "model=localpath", "pipeline=null"], output_dir=out
            )
        # Havaei et al. Sec. 4: 1% clipping, N4 on T1 and T1c, connected-component post-processing
        assert list(cfg.data.preprocess.n4) == ["t1", "t1c"] and list(cfg.data.preprocess.clip_percentiles) == [
            1.0,
            99.0,
        ]
        assert cfg.model.postprocess.min_volume_mm3 == 500
    mf = compose(
        ["experiment=havaei_table2", "model=mf_cascade", "model.first_stage_ckpt=x", "pipeline=null"], output_dir=out
    )
    assert mf.model.first_stage_dropout is False
