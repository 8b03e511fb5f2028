"""Class-balanced patch sampling for Havaei et al.'s patch CNNs (Sec. 3.2, "Two-phase training").

Patch centres are brain voxels. In the first training phase every label is equiprobable
(``"balanced"``: a class is drawn uniformly among those present, then a voxel of that class
uniformly over all training cases); in the second phase labels follow their natural frequencies
inside the brain (``"natural"``: a brain voxel drawn uniformly). TorchIO's ``LabelSampler`` does
the former for one volume; here it is done over the whole training set at once.

Sampling and extraction are vectorised: a batch costs a handful of numpy calls per *case* in the
batch (one fancy-indexed gather of the needed slices and one of the windows), never a loop over
voxels or patches. See ``benchmarks/bench_patch_cnn.py`` for the throughput.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from brats_lightning.data.cache import PreparedCase

__all__ = ["DISTRIBUTIONS", "PatchSampler", "PatchBatchDataset"]

DISTRIBUTIONS = ("balanced", "natural")


class PatchSampler:
    """Draws patch centres over a set of labelled cases and extracts the patches.

    A patch of side ``P`` centred on voxel ``p`` covers ``p - P//2 .. p + P - 1 - P//2`` (for an
    even side such as LocalCascadeCNN's 56, one more pixel before the centre than after).

    Cascades with a cached first stage also hand, for every patch, the aligned window of a
    per-case auxiliary map (:meth:`set_aux`), e.g. the first CNN's output probabilities.

    Args:
        cases: prepared, labelled training cases.
        num_classes: number of internal classes.
        patch_size: side of the square patches (33 for TwoPathCNN; larger for cascades).
    """

    def __init__(self, cases: Sequence[PreparedCase], num_classes: int, patch_size: int) -> None:
        if patch_size < 1:
            raise ValueError(f"patch_size must be positive, got {patch_size}")
        if not cases:
            raise ValueError("no training cases to sample patches from")
        self.cases = list(cases)
        self.num_classes = num_classes
        self.patch_size = patch_size
        case_ids: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
        flats: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
        for i, c in enumerate(self.cases):
            if c.label is None:
                raise ValueError(f"{c.folder}: case {c.case_id} has no label; it cannot be used for training")
            mask = np.asarray(c.mask).ravel()
            label = np.asarray(c.label).ravel()
            brain = np.flatnonzero(mask)
            lab = label[brain]
            for k in range(num_classes):
                sel = brain[lab == k]
                flats[k].append(sel.astype(np.int64))
                case_ids[k].append(np.full(sel.size, i, dtype=np.int32))
        self.class_case = [np.concatenate(v) for v in case_ids]
        self.class_flat = [np.concatenate(v) for v in flats]
        self.counts = np.array([v.size for v in self.class_flat], dtype=np.int64)
        if self.counts.sum() == 0:
            raise ValueError("the training cases contain no brain voxel")
        self.present = np.flatnonzero(self.counts)
        self.aux: list[np.ndarray] | None = None
        self.aux_margin = self.aux_size = self.aux_before = 0

    def set_aux(self, maps: Sequence[np.ndarray], margin: int, size: int, before: int) -> None:
        """Attach per-case maps ``(Z, A, X + 2*margin, Y + 2*margin)`` (index ``margin + x`` is voxel ``x``).

        Each patch then comes with the ``size x size`` window of its case's map starting ``before``
        pixels before the patch centre.
        """
        if len(maps) != len(self.cases):
            raise ValueError(f"{len(maps)} auxiliary maps for {len(self.cases)} cases")
        for m, c in zip(maps, self.cases):
            z, _, nx, ny = c.image.shape
            if m.shape[0] != z or m.shape[2:] != (nx + 2 * margin, ny + 2 * margin):
                raise ValueError(
                    f"auxiliary map of {c.case_id} has shape {m.shape}, expected ({z}, A, {nx + 2 * margin}, "
                    f"{ny + 2 * margin})"
                )
        if not 0 <= margin - before and margin - before + size <= 2 * margin + 1:
            raise ValueError(f"window of {size} starting {before} before the centre does not fit a margin of {margin}")
        self.aux, self.aux_margin, self.aux_size, self.aux_before = list(maps), margin, size, before

    @property
    def frequencies(self) -> np.ndarray:
        """Natural class frequencies inside the brain."""
        return self.counts / self.counts.sum()

    def sample(self, n: int, distribution: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Draw ``n`` centres.

        Returns:
            ``(case_index, flat_index, label)``; ``flat_index`` indexes the case's ``(Z, X, Y)`` grid.
        """
        if distribution == "balanced":
            cls = self.present[rng.integers(0, self.present.size, size=n)]
        elif distribution == "natural":
            cls = rng.choice(self.num_classes, size=n, p=self.frequencies)
        else:
            raise ValueError(f"unknown distribution {distribution!r}; expected one of {DISTRIBUTIONS}")
        case = np.empty(n, dtype=np.int32)
        flat = np.empty(n, dtype=np.int64)
        for k in np.unique(cls):  # at most num_classes vectorised draws
            sel = np.flatnonzero(cls == k)
            j = rng.integers(0, self.counts[k], size=sel.size)
            case[sel] = self.class_case[k][j]
            flat[sel] = self.class_flat[k][j]
        return case, flat, cls.astype(np.int64)

    def extract(self, case: np.ndarray, flat: np.ndarray) -> np.ndarray:
        """``(n, C, P, P)`` float32 patches centred on the given voxels (zero outside the volume)."""
        p = self.patch_size
        before, after = p // 2, p - 1 - p // 2
        out = np.empty((case.size, self.cases[0].image.shape[1], p, p), dtype=np.float32)
        for i, sel, z, x, y in self._by_case(case, flat):
            zu, zi = np.unique(z, return_inverse=True)
            slabs = np.pad(
                np.asarray(self.cases[i].image[zu], dtype=np.float32),
                ((0, 0), (0, 0), (before, after), (before, after)),
            )
            out[sel] = _windows(slabs, zi, x, y, p)  # padded index x + j = voxel x - before + j
        return out

    def extract_aux(self, case: np.ndarray, flat: np.ndarray) -> np.ndarray:
        """``(n, A, S, S)`` windows of the auxiliary maps aligned with :meth:`extract`'s patches."""
        if self.aux is None:
            raise ValueError("no auxiliary maps attached (set_aux)")
        s = self.aux_size
        out = np.empty((case.size, self.aux[0].shape[1], s, s), dtype=self.aux[0].dtype)
        start = self.aux_margin - self.aux_before
        for i, sel, z, x, y in self._by_case(case, flat):
            out[sel] = _windows(self.aux[i], z, x + start, y + start, s)
        return out

    def _by_case(self, case: np.ndarray, flat: np.ndarray):
        """Per case in the batch: (case index, batch positions, z, x, y)."""
        for i in np.unique(case):
            sel = np.flatnonzero(case == i)
            _, _, nx, ny = self.cases[i].image.shape
            z, rem = np.divmod(flat[sel], nx * ny)
            x, y = np.divmod(rem, ny)
            yield int(i), sel, z, x, y

    def batch(self, n: int, distribution: str, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        """A batch: ``(patches, labels)``, or ``(patches, aux windows, labels)`` with maps attached."""
        case, flat, label = self.sample(n, distribution, rng)
        if self.aux is not None:
            return self.extract(case, flat), self.extract_aux(case, flat), label
        return self.extract(case, flat), label


def _windows(arr: np.ndarray, idx: np.ndarray, x: np.ndarray, y: np.ndarray, size: int) -> np.ndarray:
    """``(n, C, size, size)`` windows ``arr[idx[k], :, x[k]:x[k]+size, y[k]:y[k]+size]`` in one gather."""
    offs = np.arange(size)
    rows = x[:, None] + offs
    cols = y[:, None] + offs
    return arr[idx[:, None, None], :, rows[:, :, None], cols[:, None, :]].transpose(0, 3, 1, 2)


class PatchBatchDataset(Dataset):
    """An epoch of ``batches`` patch batches; item ``i`` is a whole batch ``(x, y)``.

    Use with ``DataLoader(batch_size=None)``. Batch ``i`` is drawn with a random generator seeded by
    ``(seed, epoch, i)``: reproducible whatever the number of workers, the same after a resume, and
    different on every DDP rank (Lightning's distributed sampler gives each rank other indices).

    Args:
        sampler: the patch sampler of the training cases.
        batch_size: patches per batch.
        batches: batches per epoch.
        distribution: label distribution of the patch centres (``"balanced"`` or ``"natural"``).
        seed: seed of the run.
        epoch: the training epoch (part of the seed).
    """

    def __init__(
        self,
        sampler: PatchSampler,
        batch_size: int,
        batches: int,
        distribution: str = "balanced",
        seed: int = 0,
        epoch: int = 0,
    ) -> None:
        if distribution not in DISTRIBUTIONS:
            raise ValueError(f"unknown distribution {distribution!r}; expected one of {DISTRIBUTIONS}")
        self.sampler = sampler
        self.batch_size = batch_size
        self.batches = batches
        self.distribution = distribution
        self.seed = seed
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        rng = np.random.default_rng((self.seed, self.epoch, i))
        arrays = self.sampler.batch(self.batch_size, self.distribution, rng)
        return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays)
