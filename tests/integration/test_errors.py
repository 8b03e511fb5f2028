"""A user error through the real command: one line on stderr, exit status 2, no traceback."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import cli


def test_a_user_error_is_one_line_with_exit_status_2(tmp_path: Path) -> None:
    proc = cli("brats_lightning", "debug=default", "data.fold=9", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: data.fold must be one of 0..4")
    assert "Traceback" not in proc.stderr
