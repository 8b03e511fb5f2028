"""predict under faults: an image whose header claims too much, a file-size limit, a read-only output folder. Each
ends in one line naming the file; a bad case never stops the others."""

from __future__ import annotations

import gzip
import resource
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from brats_lightning.data.readers import MAX_VOXELS
from tests.helpers import ENV, can_mount_tmpfs, copy_cases


def _claim_shape(image: Path, side: int) -> None:
    """Rewrite a .nii.gz header's dim[1..3] (bytes 42-47) to ``side``: the data stay as they were."""
    raw = bytearray(gzip.decompress(image.read_bytes()))
    raw[42:48] = struct.pack("<3h", side, side, side)
    image.write_bytes(gzip.compress(bytes(raw)))


def _predict(*args: str, fsize: int | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    def limit() -> None:
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.run(
        [sys.executable, "-m", "brats_lightning.predict", *args],
        capture_output=True, text=True, env=ENV, timeout=timeout, preexec_fn=limit,
    )  # fmt: skip


def test_a_header_claiming_a_huge_volume_fails_its_case_alone(
    tmp_path: Path, trained_ckpt: Path, synthetic_root: Path
) -> None:
    """Before: a header claiming 2100^3 voxels made nibabel allocate 37 GB: a MemoryError traceback ended the whole
    predict and the good cases were not done."""
    data = copy_cases(synthetic_root, tmp_path / "in", 3)
    bad_case = sorted(p for p in data.iterdir() if p.is_dir())[1]
    flair = next(bad_case.glob("*flair*"))
    _claim_shape(flair, 2100)
    out = tmp_path / "out"
    run = _predict(f"ckpt_path={trained_ckpt}", f"input_dir={data}", f"output_dir={out}", "device=cpu",
                   f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    assert run.returncode == 1, run.stderr[-3000:]
    assert "Traceback" not in run.stderr and "MemoryError" not in run.stderr
    assert f"{flair}: its header claims a 2100 x 2100 x 2100 image (9,261,000,000 voxels)" in run.stderr
    assert f"{MAX_VOXELS:,} voxels (MAX_VOXELS)" in run.stderr
    done = sorted(p.name.removesuffix(".nii.gz") for p in out.glob("*.nii.gz"))
    assert done == sorted(p.name for p in data.iterdir() if p.is_dir() and p != bad_case)


def test_a_file_size_limit_is_one_line_naming_the_file(
    tmp_path: Path, trained_ckpt: Path, synthetic_root: Path
) -> None:
    """Before: the first write past ``ulimit -f`` raised SIGXFSZ, which killed the process and left it waiting on its
    loader (it hung until killed)."""
    data = copy_cases(synthetic_root, tmp_path / "in", 2)
    out = tmp_path / "out"
    run = _predict(f"ckpt_path={trained_ckpt}", f"input_dir={data}", f"output_dir={out}", "device=cpu",
                   "probabilities=true", f"hydra.run.dir={tmp_path / 'run'}", fsize=20_000, timeout=240)  # fmt: skip
    assert run.returncode == 2, run.stderr[-3000:]
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {out}/") and "File too large: cannot write it" in last, last
    assert "Traceback" not in run.stderr
    assert not [p for p in out.rglob("*") if p.is_file() and p.name.startswith(".")]  # no temporary left


def test_a_read_only_output_folder_is_one_line(tmp_path: Path, trained_ckpt: Path, synthetic_root: Path) -> None:
    """Before: an ``OSError`` traceback (EROFS). A read-only tmpfs in a user and mount namespace."""
    if not can_mount_tmpfs(tmp_path):
        pytest.skip("cannot mount a tmpfs here (unshare --user --mount is not permitted)")
    data = copy_cases(synthetic_root, tmp_path / "in", 1)
    out = tmp_path / "out"
    out.mkdir()
    script = (
        f"mount -t tmpfs -o size=64k,ro none {out} && {sys.executable} -m brats_lightning.predict "
        f"ckpt_path={trained_ckpt} input_dir={data} output_dir={out} device=cpu hydra.run.dir={tmp_path / 'run'}"
    )
    run = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
                         capture_output=True, text=True, env=ENV, timeout=240)  # fmt: skip
    assert run.returncode == 2, run.stderr[-3000:]
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {out}") and "Read-only file system: cannot write it" in last, last
    assert "Traceback" not in run.stderr
