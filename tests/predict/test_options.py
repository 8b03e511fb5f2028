"""brats_lightning.predict.options: output folders outside the data set."""

from __future__ import annotations

from pathlib import Path

import pytest

from brats_lightning import predict
from brats_lightning.errors import ConfigError
from brats_lightning.predict import predict_dir
from tests.helpers import copy_cases, md5s, predict_cfg, run_command


def test_predict_never_writes_into_the_data_set(tmp_path: Path, trained_ckpt: Path, synthetic_root: Path) -> None:
    data = copy_cases(synthetic_root, tmp_path / "data", 2)
    before = md5s(data)
    case = sorted(data.iterdir())[0]
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / case.name).symlink_to(case, target_is_directory=True)
    for out, message in [
        (data, "is input_dir"),
        (data / "predictions", "is inside input_dir"),
        (case / "seg", "is inside input_dir"),
        (case, "is input_dir"),  # (a case folder given as the input folder)
    ]:
        inp = case if out == case else data
        with pytest.raises(ConfigError, match=rf"output_dir={out} {message}"):
            predict_dir(predict_cfg(ckpt_path=str(trained_ckpt), input_dir=str(inp), output_dir=str(out)))
    # a case folder reached through a link: the output is inside the case's real folder
    with pytest.raises(ConfigError, match=r"is inside the case folder"):
        predict_dir(predict_cfg(ckpt_path=str(trained_ckpt), input_dir=str(outside), output_dir=str(case / "preds")))
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match=rf"output_dir={a_file}: is an existing file"):
        predict_dir(predict_cfg(ckpt_path=str(trained_ckpt), input_dir=str(data), output_dir=str(a_file)))
    assert md5s(data) == before and not (data / "predictions").exists() and a_file.read_text() == "x"
    run = run_command(
        predict.main,
        f"ckpt_path={trained_ckpt}",
        f"input_dir={data}",
        f"output_dir={data}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert run.code == 2 and run.err.strip().splitlines() == [run.err.strip()]
    assert run.err.startswith(f"error: output_dir={data} is") and md5s(data) == before


def test_a_missing_or_bad_option_is_one_line(tmp_path: Path) -> None:
    run = run_command(predict.main, "ckpt_path=x.ckpt", f"input_dir={tmp_path}", f"hydra.run.dir={tmp_path}")
    assert run.code == 2 and run.err.startswith("error: missing option: output_dir")
    run = run_command(
        predict.main,
        "ckpt_path=x.ckpt",
        f"input_dir={tmp_path}",
        "output_dir=o",
        "output_convention=brats1999",
        f"hydra.run.dir={tmp_path}",
    )
    assert run.code == 2 and run.err.startswith("error: output_convention='brats1999'")
