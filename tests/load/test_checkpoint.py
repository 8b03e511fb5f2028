"""brats_lightning.load.checkpoint: a checkpoint is data: code, foreign classes and tampered values are refused."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from brats_lightning import predict
from brats_lightning.errors import CheckpointError
from brats_lightning.load.checkpoint import check_fits, load_module
from tests.helpers import run_command


def test_a_crafted_checkpoint_cannot_run_code(tmp_path: Path, synthetic_root: Path) -> None:
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.ckpt"
    # only plain strings: it loads under weights_only=True, and names a function to call
    torch.save(
        {"module_class": "subprocess.run", "hyper_parameters": {"args": ["touch", str(marker)]}, "state_dict": {}},
        evil,
    )
    with pytest.raises(CheckpointError, match=r"evil\.ckpt: names the module class 'subprocess.run', which is not"):
        load_module(evil)
    run = run_command(
        predict.main,
        f"ckpt_path={evil}",
        f"input_dir={synthetic_root}",
        f"output_dir={tmp_path / 'out'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert run.code == 2, run.err[-2000:]
    assert "is not a brats_lightning model" in run.err and "Traceback" not in run.err
    assert not marker.exists()  # the command the checkpoint names was not run


def test_bad_checkpoints_are_named_and_explained(tmp_path: Path, trained_ckpt: Path) -> None:
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.ckpt: the checkpoint is empty \(0 bytes"):
        load_module(empty)
    data = trained_ckpt.read_bytes()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.ckpt: the checkpoint is truncated or corrupt"):
        load_module(truncated)
    # weights that do not fit the hyper-parameters they come with
    state = torch.load(trained_ckpt, map_location="cpu", weights_only=True)
    state["hyper_parameters"]["n_blocks"] = 2
    tampered = tmp_path / "tampered.ckpt"
    torch.save(state, tampered)
    with pytest.raises(
        CheckpointError, match=r"tampered\.ckpt: its weights do not fit a FCNModule .*n_blocks=2.*is unexpected"
    ):
        load_module(tampered)
    # resuming (or testing) another model's checkpoint: the differing hyper-parameters are named
    from brats_lightning.modules.fcn import FCNModule
    from brats_lightning.modules.patch import PatchCNNModule

    with pytest.raises(CheckpointError, match=r"in_channels=8 in the checkpoint, 4 here"):
        check_fits(trained_ckpt, FCNModule(4, 4, width=0.25))
    with pytest.raises(CheckpointError, match=r"it holds a FCNModule .*this run's model is a PatchCNNModule"):
        check_fits(trained_ckpt, PatchCNNModule("twopath", 8, 4))
    check_fits(trained_ckpt, FCNModule(8, 4, width=0.25))  # the right model passes


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("data_config.convention", "../../etc/passwd", r"\(data_config\): convention: String should match pattern"),
        (
            "data_config.symmetry.evil",
            1,
            r"\(data_config\): symmetry.evil: unknown option; expected one of axis_modality",
        ),
        ("data_config.preprocess.margin", -1, r"preprocess.margin: Input should be greater than or equal to 0"),
        ("data_config.preprocess.clip_percentiles", [99, 1], r"the low percentile must be below the high one"),
        ("tta_flips", "lr", r"\(tta_flips\): tta_flips: Input should be a valid list"),
        ("postprocess", {"min_slices": "3"}, r"\(postprocess\): min_slices: Input should be a valid integer"),
        ("postprocess", {"et": {"largest_only": 1}}, r"\(postprocess\): et.largest_only: Input should be a valid bool"),
        ("et_threshold", 1.5, r": et_threshold must be a probability in \(0, 1\) or null, got 1.5"),
        ("et_threshold", "0.3", r": et_threshold must be a probability in \(0, 1\) or null, got '0.3'"),
        ("hyper_parameters._instantiator", "os.system", r"hyper-parameters name a Lightning _instantiator"),
        # the models' hyper-parameters, checked with the schema model.* options are (brats_lightning.modules.options)
        ("hyper_parameters.width", 1000, r"\(hyper_parameters\): width: Input should be less than or equal to 4"),
        ("hyper_parameters.postprocess", {"_target_": "os.system"}, r"postprocess._target_: unknown option"),
        ("hyper_parameters.convention", "../../etc/passwd", r"convention: unknown label convention '../../etc/passwd'"),
        ("hyper_parameters.n_blocks", "3", r"n_blocks: Input should be a valid integer"),
        ("hyper_parameters.depth", 3, r"\(hyper_parameters\): depth: unknown option; expected one of arch, "),
        ("data_config.modalities", ["flair", "t1"], r"its net takes 8 input channels, but its data_config"),
    ],
)
def test_a_tampered_checkpoint_is_named_and_refused(
    tmp_path: Path, trained_ckpt: Path, key: str, value: object, message: str
) -> None:
    state = torch.load(trained_ckpt, map_location="cpu", weights_only=True)
    *parents, leaf = key.split(".")
    node = state
    for p in parents:
        node = node[p]
    node[leaf] = value
    bad = tmp_path / "tampered.ckpt"
    torch.save(state, bad)
    with pytest.raises(CheckpointError, match=rf"^{bad}.*{message}"):
        load_module(bad)
    data = tmp_path / "in"
    run = run_command(
        predict.main,
        f"ckpt_path={bad}",
        f"input_dir={data}",
        f"output_dir={tmp_path / 'out'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert run.code == 2 and run.err.startswith(f"error: {bad}") and "Traceback" not in run.err


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_a_checkpoint_that_could_run_code_is_refused_as_such(tmp_path: Path, trained_ckpt: Path) -> None:
    state = torch.load(trained_ckpt, map_location="cpu", weights_only=True)
    for i, legacy in enumerate((False, True)):
        evil = tmp_path / f"evil{i}.ckpt"
        torch.save({**state, "extra": _RunsCode()}, evil, _use_new_zipfile_serialization=not legacy)
        with pytest.raises(CheckpointError, match=rf"{evil}: the checkpoint holds Python objects that could run code"):
            load_module(evil)
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"state_dict": {}, "x": _RunsCode()}))
    with pytest.raises(CheckpointError, match=r"could run code \(it names posix.system\)"):
        load_module(plain)
    assert not Path("PWNED").exists() and not (tmp_path / "PWNED").exists()
