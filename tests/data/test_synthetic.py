"""Tests of the synthetic BraTS-like phantom, its files and montage (tiny shapes: the file runs in seconds)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from brats_lightning.data import synthetic
from brats_lightning.data.synthetic import FILE_KEYS, read_cases, write_dataset
from brats_lightning.data.synthetic import __main__ as synthetic_cli
from brats_lightning.data.synthetic.phantom import MODALITIES, brats_affine, case_id, case_seed, generate_case
from brats_lightning.viz import save_montage
from tests.helpers import run_argv

ROOT = Path(__file__).resolve().parents[2]
SHAPE = (48, 56, 32)
SEEDS = tuple(case_seed(0, i) for i in range(6))
CSF, GM, WM = 1, 2, 3  # codes of the ``tissue`` map (phantom.TISSUE_NAMES)


@pytest.fixture(scope="module")
def cases() -> list[dict[str, np.ndarray]]:
    """Six tiny cases with their tissue maps."""
    return [generate_case(s, SHAPE, return_tissues=True) for s in SEEDS]


def _mirror(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mirror image about the brain's mid-sagittal plane (the mask is symmetric about it)."""
    xs = np.nonzero(mask.any(axis=(1, 2)))[0]
    shift = int(xs.min() + xs.max() - (img.shape[0] - 1))  # twice the head's translation
    return np.roll(img[::-1], shift, axis=0)


def _corr(a: np.ndarray, b: np.ndarray, sel: np.ndarray) -> float:
    return float(np.corrcoef(a[sel].astype(float), b[sel].astype(float))[0, 1])


# ------------------------------------------------------------------------------------------------
# arrays
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [SHAPE, (40, 40, 40), (64, 48, 24)])
def test_keys_dtypes_shapes(shape: tuple[int, int, int]) -> None:
    case = generate_case(3, shape)
    assert sorted(case) == sorted(FILE_KEYS)
    for key in MODALITIES:
        assert case[key].dtype == np.int16 and case[key].shape == shape
        assert case[key].min() == 0 and 200 < case[key].max() < 32767
    assert case["seg"].dtype == np.uint8 and case["seg"].shape == shape


def test_bad_shape_rejected() -> None:
    with pytest.raises(ValueError):
        generate_case(0, (8, 8, 8))


def test_same_seed_same_arrays() -> None:
    a, b = generate_case(11, SHAPE), generate_case(11, SHAPE)
    for key in FILE_KEYS:
        assert a[key].tobytes() == b[key].tobytes()


def test_different_seeds_differ() -> None:
    a, b = generate_case(11, SHAPE), generate_case(12, SHAPE)
    for key in FILE_KEYS:
        assert not np.array_equal(a[key], b[key])


def test_case_seed_depends_on_both_and_not_on_count() -> None:
    seeds = [case_seed(0, i) for i in range(5)]
    assert len(set(seeds)) == 5
    assert case_seed(0, 3) == seeds[3] and case_seed(1, 3) != seeds[3]


def test_labels(cases: list[dict[str, np.ndarray]]) -> None:
    n_all = 0
    for case in cases:
        seg = case["seg"]
        assert set(np.unique(seg)) <= {0, 1, 2, 4}
        n_all += all((seg == k).any() for k in (1, 2, 4))
        brain = case["t1"] > 0
        assert not seg[~brain].any()
        whole = (seg > 0).sum() / brain.sum()
        assert 0.005 < whole < 0.25
    assert n_all >= 5  # most cases have all three labels


def test_tumour_in_one_hemisphere(cases: list[dict[str, np.ndarray]]) -> None:
    sides = set()
    for case in cases:
        brain = case["t1"] > 0
        xs = np.nonzero(brain.any(axis=(1, 2)))[0]
        mid = (xs.min() + xs.max()) / 2.0
        tx = np.nonzero(case["seg"])[0]
        assert (tx < mid).all() or (tx > mid).all()
        sides.add(bool(tx[0] < mid))
    assert sides == {True, False}  # both sides occur


def test_skull_stripped_background(cases: list[dict[str, np.ndarray]]) -> None:
    for case in cases:
        brain = case["t1"] > 0
        for key in MODALITIES:
            assert ((case[key] > 0) == brain).all()  # one mask for all modalities, 0 outside
        frac = brain.mean()
        assert 0.08 < frac < 0.4
        extent = [np.ptp(np.nonzero(brain.any(axis=tuple(j for j in range(3) if j != i)))[0]) + 1 for i in range(3)]
        assert 0.5 < extent[0] / SHAPE[0] < 0.85 and 0.5 < extent[1] / SHAPE[1] < 0.85
        assert extent[2] / SHAPE[2] > 0.6  # most slices
        areas = brain.sum(axis=(0, 1))
        assert areas[areas > 0][[0, -1]].max() < 0.5 * areas.max()  # smaller at the top and bottom
        labels, n = ndimage.label(brain)
        assert n == 1  # one piece
        assert ndimage.binary_fill_holes(brain).sum() - brain.sum() < 0.002 * brain.sum()


def test_healthy_anatomy_is_mirror_symmetric() -> None:
    for seed in (0, 1, 2):
        case = generate_case(seed, SHAPE, tumour=False)
        brain = case["t1"] > 0
        assert not case["seg"].any()
        assert (brain != _mirror(brain, brain)).mean() < 0.002
        corr = {}
        for key, low in (("t1", 0.88), ("t2", 0.8), ("flair", 0.6)):  # FLAIR: little contrast, noisier
            mirrored = _mirror(case[key], brain)
            corr[key] = _corr(case[key], mirrored, brain & (mirrored > 0))
            assert corr[key] > low, (seed, key, corr[key])
        # an unrelated brain is much less similar to this one's mirror image
        other = generate_case(seed + 100, SHAPE, tumour=False)["t1"]
        mirrored = _mirror(other, other > 0)
        assert _corr(case["t1"], mirrored, brain & (mirrored > 0)) < corr["t1"] - 0.15


def test_tumour_breaks_symmetry_only_locally(cases: list[dict[str, np.ndarray]]) -> None:
    tested = 0
    for case in cases:
        brain, tumour = case["t1"] > 0, case["seg"] > 0
        flair = case["flair"]
        mirrored = _mirror(flair, brain)
        zs = np.nonzero(tumour.any(axis=(0, 1)))[0]
        far = np.zeros_like(brain)
        far[:, :, [z for z in range(SHAPE[2]) if z < zs.min() - 2 or z > zs.max() + 2]] = True
        far &= brain & (mirrored > 0)
        near = (tumour | _mirror(tumour, brain)) & brain & (mirrored > 0)
        if far.sum() < 200:  # the tumour spans almost all the slices of this tiny volume
            continue
        tested += 1
        c_far, c_near = _corr(flair, mirrored, far), _corr(flair, mirrored, near)
        assert c_far > 0.8
        assert c_near < c_far - 0.6
    assert tested >= 4


def test_tumour_free_twin_differs_only_near_the_tumour(cases: list[dict[str, np.ndarray]]) -> None:
    for seed, case in zip(SEEDS[:3], cases[:3], strict=True):
        twin = generate_case(seed, SHAPE, tumour=False)
        brain, tumour = case["t1"] > 0, case["seg"] > 0
        assert not twin["seg"].any() and ((twin["t1"] > 0) == brain).all()
        diff = np.zeros_like(brain)
        for key in MODALITIES:
            diff |= case[key] != twin[key]
        assert diff[tumour].mean() > 0.99
        radius = (3 * tumour.sum() / (4 * np.pi)) ** (1 / 3)
        dist = ndimage.distance_transform_edt(~tumour)
        assert dist[diff].max() < 2.5 * radius + 2  # tumour and mass effect are local
        assert (~diff & brain).sum() > 0.2 * brain.sum()


def test_modality_contrasts(cases: list[dict[str, np.ndarray]]) -> None:
    def mean(key: str, sel_fn) -> float:  # noqa: ANN001
        vals = [c[key][sel_fn(c)].astype(float) for c in cases]
        return float(np.concatenate(vals).mean())

    def normal(c: dict[str, np.ndarray]) -> np.ndarray:
        return (c["t1"] > 0) & (c["seg"] == 0)

    def tissue(code: int):  # noqa: ANN202
        return lambda c: normal(c) & (c["tissue"] == code)

    def label(value: int):  # noqa: ANN202
        return lambda c: c["seg"] == value

    necrosis = [c for c in cases if ((c["seg"] == 1) & (c["t1ce"] < np.median(c["t1ce"][normal(c)]))).any()]
    assert necrosis, "no case with a dark necrotic core"
    # tumour
    assert mean("flair", label(2)) > 1.3 * mean("flair", normal)
    assert mean("t2", label(2)) > 1.3 * mean("t2", tissue(WM))
    assert mean("t1ce", label(4)) > 1.4 * mean("t1ce", normal)
    assert mean("t1ce", label(4)) > 1.4 * mean("t1", label(4))  # it enhances
    assert mean("t1ce", label(1)) < mean("t1ce", label(4))
    assert mean("t1", label(1)) < mean("t1", normal)
    assert mean("t1", label(2)) < mean("t1", tissue(WM))  # edematous white matter is darker on T1


def test_healthy_tissue_contrasts() -> None:
    """Tissue contrasts on the cores of the tissue classes (eroded: fewer partial volumes)."""
    sums: dict[tuple[str, int], list[float]] = {}
    for seed in (0, 1, 2):
        case = generate_case(seed, SHAPE, tumour=False, return_tissues=True)
        for code in (CSF, GM, WM):
            core = ndimage.binary_erosion(case["tissue"] == code)
            assert core.sum() > 30
            for key in ("t1", "t2", "flair"):
                sums.setdefault((key, code), []).append(float(case[key][core].mean()))
    t1, t2, fl = ([np.mean(sums[(key, code)]) for code in (CSF, GM, WM)] for key in ("t1", "t2", "flair"))
    assert t1[2] > t1[1] > t1[0]  # T1: WM > GM > CSF (CSF dark)
    assert t2[0] > t2[1] > t2[2]  # T2: CSF > GM > WM (CSF bright)
    assert fl[1] > 1.02 * fl[2] and fl[2] > 2.0 * fl[0]  # FLAIR: GM slightly above WM, CSF suppressed
    assert t1[2] > 2.0 * t1[0] and t2[0] > 2.0 * t2[2]


def test_intensity_ranges(cases: list[dict[str, np.ndarray]]) -> None:
    for case in cases:
        for key in MODALITIES:
            vals = case[key][case[key] > 0]
            assert 100 < np.median(vals) < 3000
            assert np.percentile(vals, 99.9) < 8000


# ------------------------------------------------------------------------------------------------
# files
# ------------------------------------------------------------------------------------------------


def _files(folder: Path) -> list[Path]:
    return [folder / f"{folder.name}_{k}.nii.gz" for k in FILE_KEYS]


def test_write_dataset_files(tmp_path: Path) -> None:
    folders = write_dataset(tmp_path, n_cases=2, shape=SHAPE, spacing=3.0, seed=5, progress=False)
    assert [f.name for f in folders] == ["Synth_0000", "Synth_0001"]
    expected = brats_affine(SHAPE, 3.0)
    assert np.allclose(expected, [[-3, 0, 0, 0], [0, -3, 0, (SHAPE[1] - 1) * 3], [0, 0, 3, 0], [0, 0, 0, 1]])
    for i, folder in enumerate(folders):
        case = generate_case(case_seed(5, i), SHAPE)
        for key, path in zip(FILE_KEYS, _files(folder), strict=True):
            img = nib.load(str(path))
            assert img.shape == SHAPE
            assert img.get_data_dtype() == (np.uint8 if key == "seg" else np.int16)
            assert np.allclose(img.affine, expected)
            assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
            assert np.allclose(img.header.get_zooms(), 3.0)
            assert np.array_equal(np.asanyarray(img.dataobj), case[key])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_adding_cases_keeps_earlier_ones(tmp_path: Path) -> None:
    write_dataset(tmp_path / "a", n_cases=1, shape=SHAPE, seed=2, progress=False)
    write_dataset(tmp_path / "b", n_cases=2, shape=SHAPE, seed=2, progress=False)
    for fa, fb in zip(_files(tmp_path / "a" / case_id(0)), _files(tmp_path / "b" / case_id(0)), strict=True):
        assert np.array_equal(np.asanyarray(nib.load(str(fa)).dataobj), np.asanyarray(nib.load(str(fb)).dataobj))


def test_skips_complete_cases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_dataset(tmp_path, n_cases=2, shape=SHAPE, progress=False)
    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.nii.gz")}
    calls: list[int] = []
    real = synthetic.generate_case

    def counting(seed: int, shape: tuple[int, int, int] = SHAPE, **kw: bool) -> dict[str, np.ndarray]:
        calls.append(seed)
        return real(seed, shape, **kw)

    monkeypatch.setattr(synthetic, "generate_case", counting)
    folders = write_dataset(tmp_path, n_cases=3, shape=SHAPE, progress=True)
    assert len(folders) == 3 and calls == [case_seed(0, 2)]
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())
    assert all(p.is_file() for f in folders for p in _files(f))


def test_interrupted_write_leaves_no_partial_case(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = synthetic._save
    count = {"n": 0}

    def failing(arr: np.ndarray, affine: np.ndarray, path: Path) -> None:
        count["n"] += 1
        if count["n"] == len(FILE_KEYS) + 3:  # in the middle of the second case
            raise KeyboardInterrupt
        real(arr, affine, path)

    monkeypatch.setattr(synthetic, "_save", failing)
    with pytest.raises(KeyboardInterrupt):
        write_dataset(tmp_path, n_cases=3, shape=SHAPE, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Synth_0000"]  # no half case, no temp folder
    assert all(p.is_file() for p in _files(tmp_path / "Synth_0000"))
    monkeypatch.setattr(synthetic, "_save", real)
    folders = write_dataset(tmp_path, n_cases=3, shape=SHAPE, progress=False)
    assert all(p.is_file() for f in folders for p in _files(f))


def test_incomplete_case_folder_is_rewritten(tmp_path: Path) -> None:
    stale = tmp_path / "Synth_0000"
    stale.mkdir()
    (stale / "Synth_0000_flair.nii.gz").write_bytes(b"")
    (stale / "junk.txt").write_text("x")
    write_dataset(tmp_path, n_cases=1, shape=SHAPE, progress=False)
    assert sorted(p.name for p in stale.iterdir()) == sorted(p.name for p in _files(stale))
    assert nib.load(str(stale / "Synth_0000_flair.nii.gz")).shape == SHAPE


def test_save_montage(tmp_path: Path) -> None:
    import matplotlib.image

    write_dataset(tmp_path / "ds", n_cases=2, shape=SHAPE, progress=False)
    cases = read_cases(tmp_path / "ds", 4)
    assert [name for name, _ in cases] == ["Synth_0000", "Synth_0001"]
    out = save_montage(cases, tmp_path / "m" / "montage.png")
    img = matplotlib.image.imread(str(out))
    assert img.ndim == 3 and img.shape[1] > 1.5 * img.shape[0]  # 2 rows x 5 columns
    with pytest.raises(FileNotFoundError):
        read_cases(tmp_path / "m")
    with pytest.raises(ValueError, match="no case"):
        save_montage([], tmp_path / "x.png")


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        synthetic_cli.main(["--help"])
    assert exc.value.code == 0
    assert "--n-cases" in capsys.readouterr().out
    args = ["--n-cases", "2", "--shape", *map(str, SHAPE), "--spacing", "4", "--seed", "7", "--no-progress"]
    run = run_argv(synthetic_cli.main, str(tmp_path / "ds"), *args, "--montage", str(tmp_path / "m.png"))
    assert run.code == 0 and "2 cases in" in run.out, run.err
    for i in range(2):
        for path in _files(tmp_path / "ds" / case_id(i)):
            assert nib.load(str(path)).shape == SHAPE
    assert np.allclose(nib.load(str(_files(tmp_path / "ds" / "Synth_0001")[0])).header.get_zooms(), 4.0)
    assert (tmp_path / "m.png").stat().st_size > 1000


@pytest.mark.slow
def test_full_size_case() -> None:
    case = generate_case(0, (240, 240, 155))
    brain = case["t1"] > 0
    assert set(np.unique(case["seg"])) == {0, 1, 2, 4}
    assert 0.5 < np.ptp(np.nonzero(brain.any(axis=(1, 2)))[0]) / 240 < 0.8
