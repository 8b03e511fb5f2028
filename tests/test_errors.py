"""brats_lightning.errors: a user error is one line and exit status 2; anything else is a bug and keeps its
traceback."""

from __future__ import annotations

import pytest
from hydra.errors import InstantiationException

from brats_lightning.errors import ConfigError, DataError, cli, find_user_error, one_line


def test_a_user_error_is_one_line_and_exit_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    def main() -> None:
        raise DataError("/data/case_1/case_1_t2.nii.gz: file not found")

    with pytest.raises(SystemExit) as exc:
        cli(main)()
    assert exc.value.code == 2
    assert capsys.readouterr().err == "error: /data/case_1/case_1_t2.nii.gz: file not found\n"


def test_a_bug_keeps_its_traceback() -> None:
    def main() -> None:
        raise ZeroDivisionError("a bug")

    with pytest.raises(ZeroDivisionError, match="a bug"):
        cli(main)()


def test_the_user_error_behind_hydra_and_loader_workers_is_found() -> None:
    try:
        try:
            raise ConfigError("data.fold must be one of 0..4")
        except ConfigError as e:
            raise InstantiationException("Error in call to target 'BratsDataModule'") from e
    except InstantiationException as wrapped:
        assert str(find_user_error(wrapped)) == "data.fold must be one of 0..4"
    assert find_user_error(ValueError("not ours")) is None
    # torch re-raises a worker's exception with the worker's traceback in its message: the message alone
    worker = DataError("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
                       '  File "x.py", line 1\nbrats_lightning.errors.DataError: case_1: file not found')  # fmt: skip
    assert one_line(worker) == "case_1: file not found"
