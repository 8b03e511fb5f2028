"""Class-balanced patch sampling for Havaei et al.'s patch CNNs (Sec. 3.2, "Two-phase training").

Patch centres are brain voxels. In the first training phase every label is equiprobable
(``"balanced"``: a class is drawn uniformly among those present, then a voxel of that class
uniformly over all training cases); in the second phase labels follow their natural frequencies
inside the brain (``"natural"``: a brain voxel drawn uniformly). TorchIO's ``LabelSampler`` does
the former for one volume; here it is done over the whole training set at once.

Memory does not grow with the data set: the only per-case data in memory is a row of class
counts. The voxels of each class come from the case's compact on-disk index (``index.npy``,
int32 offsets grouped by class, memory-mapped and shared by every process of a machine), and
patches are cut from the memory-mapped images, one slice copy per patch (``benchmarks/bench_pipeline.py``).

**Dense training** (``dense_size=D > 1``, an option beside the paper's per-patch training): around each
sampled centre a window of ``P + D - 1`` pixels is cut, whose ``D x D`` centre pixels the fully
convolutional net labels in one pass (the 33x33 patch of each is inside the window). The loss weights
of a window's pixels (:func:`dense_weights`) keep the paper's class balance: with ``"balanced"``
sampling every class present in the window weighs the same in all (the centre's class was drawn
uniformly, so the expected balance is the paper's), with ``"natural"`` every brain pixel weighs the
same; pixels outside the brain are not labelled (weight 0, label -1).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from brats_lightning.data.cache import PreparedCase, open_array
from brats_lightning.data.loading import BatchRing, RingToken, produce
from brats_lightning.errors import DataError

__all__ = ["DISTRIBUTIONS", "PatchSampler", "PatchBatchDataset", "dense_weights"]

DISTRIBUTIONS = ("balanced", "natural")


class PatchSampler:
    """Draws patch centres over a set of labelled cases and cuts the patches.

    A patch of side ``P`` centred on voxel ``p`` covers ``p - P//2 .. p + P - 1 - P//2`` (for an
    even side such as LocalCascadeCNN's 56, one more pixel before the centre than after); pixels
    outside the volume are 0.

    Cascades with a cached first stage also hand, for every patch, the aligned window of a
    per-case auxiliary map (:meth:`set_aux`), e.g. the first CNN's output probabilities.

    Args:
        cases: prepared, labelled training cases.
        num_classes: number of internal classes.
        patch_size: side of the square patches (33 for TwoPathCNN; larger for cascades).
        dense_size: side of the square of pixels labelled per sample (1: the paper's per-patch
            training; ``D > 1``: windows of ``patch_size + D - 1``, see the module docstring).
    """

    def __init__(self, cases: Sequence[PreparedCase], num_classes: int, patch_size: int, dense_size: int = 1) -> None:
        if patch_size < 1:
            raise ValueError(f"patch_size must be positive, got {patch_size}")
        if dense_size < 1:
            raise ValueError(f"dense_size must be positive, got {dense_size}")
        self.dense_size = int(dense_size)
        if not cases:
            raise ValueError("no training cases to sample patches from")
        for c in cases:
            if not c.has_label:
                raise DataError(f"{c.folder}: case {c.case_id} has no label; it cannot be used for training")
        self.cases = list(cases)
        self.num_classes = num_classes
        self.patch_size = patch_size
        #: (n_cases, K) voxels of each class per case; (n_cases + 1, K) cumulated over cases
        self.case_counts = np.array([c.meta["label_counts"] for c in self.cases], dtype=np.int64)
        if self.case_counts.shape[1] != num_classes:
            raise DataError(
                f"{self.cases[0].folder}: {self.case_counts.shape[1]} classes in the cache, the model has {num_classes}"
            )
        self.cum = np.vstack([np.zeros((1, num_classes), np.int64), np.cumsum(self.case_counts, axis=0)])
        self.starts = np.array([c.class_starts[:-1] for c in self.cases], dtype=np.int64)
        self.shapes = np.array([c.shape for c in self.cases], dtype=np.int64)  # (Z, C, X, Y)
        self.counts = self.cum[-1]
        if self.counts.sum() == 0:
            raise ValueError("the training cases contain no brain voxel")
        self.present = np.flatnonzero(self.counts)
        self.aux: list[str] | None = None
        self.aux_margin = self.aux_size = self.aux_before = 0

    def set_aux(self, maps: Sequence[str | Path], margin: int, size: int, before: int) -> None:
        """Attach per-case ``.npy`` maps ``(Z, A, X + 2*margin, Y + 2*margin)`` (index ``margin + x`` is voxel ``x``).

        Each patch then comes with the ``size x size`` window of its case's map starting ``before``
        pixels before the patch centre. The maps are memory-mapped, not loaded.
        """
        if len(maps) != len(self.cases):
            raise ValueError(f"{len(maps)} auxiliary maps for {len(self.cases)} cases")
        for path, c in zip(maps, self.cases):
            m = open_array(str(path))
            z, _, nx, ny = c.shape
            if m.shape[0] != z or m.shape[2:] != (nx + 2 * margin, ny + 2 * margin):
                raise ValueError(
                    f"auxiliary map of {c.case_id} has shape {m.shape}, expected ({z}, A, {nx + 2 * margin}, "
                    f"{ny + 2 * margin})"
                )
        if not 0 <= margin - before and margin - before + size <= 2 * margin + 1:
            raise ValueError(f"window of {size} starting {before} before the centre does not fit a margin of {margin}")
        self.aux, self.aux_margin, self.aux_size, self.aux_before = [str(p) for p in maps], margin, size, before

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
        case = np.empty(n, dtype=np.int64)
        pos = np.empty(n, dtype=np.int64)
        for k in np.unique(cls):  # at most num_classes vectorised draws
            sel = np.flatnonzero(cls == k)
            j = rng.integers(0, self.counts[k], size=sel.size)
            c = np.searchsorted(self.cum[:, k], j, side="right") - 1
            case[sel] = c
            pos[sel] = self.starts[c, k] + (j - self.cum[c, k])
        flat = np.fromiter(
            (self.cases[c].index[p] for c, p in zip(case.tolist(), pos.tolist())), dtype=np.int64, count=n
        )
        return case, flat, cls.astype(np.int64)

    def _centres(self, case: np.ndarray, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        _, _, nx, ny = self.shapes[case].T
        z, rem = np.divmod(flat, nx * ny)
        x, y = np.divmod(rem, ny)
        return z, x, y

    def extract(self, case: np.ndarray, flat: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """``(n, C, P, P)`` float16 patches centred on the given voxels (zero outside the volume).

        Written into ``out`` (zeroed) when given.
        """
        p, d = self.patch_size, self.dense_size
        side = p + d - 1
        if out is None:
            out = np.zeros((case.size, int(self.shapes[0, 1]), side, side), dtype=np.float16)
        _cut(out, [self.cases[c].image for c in case.tolist()], *self._centres(case, flat), p // 2 + d // 2)
        return out

    def extract_labels(self, case: np.ndarray, flat: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """``(n, D, D)`` labels of the pixels a dense window labels: -1 outside the brain (not labelled)."""
        d = self.dense_size
        if out is None:
            out = np.zeros((case.size, d, d), dtype=np.int64)
        z, x, y = self._centres(case, flat)
        labels = np.full((case.size, 1, d, d), 255, np.uint8)
        brain = np.zeros((case.size, 1, d, d), np.uint8)
        cases = [self.cases[c] for c in case.tolist()]
        _cut(labels, [c.label[:, None] for c in cases], z, x, y, d // 2)
        _cut(brain, [c.mask[:, None] for c in cases], z, x, y, d // 2)
        out[:] = np.where(brain[:, 0] > 0, labels[:, 0].astype(np.int64), -1)
        return out

    @property
    def aux_channels(self) -> int:
        return int(open_array(self.aux[0]).shape[1]) if self.aux else 0

    def extract_aux(self, case: np.ndarray, flat: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """``(n, A, S, S)`` windows of the auxiliary maps aligned with :meth:`extract`'s patches."""
        if self.aux is None:
            raise ValueError("no auxiliary maps attached (set_aux)")
        maps = [open_array(self.aux[c]) for c in case.tolist()]
        s = self.aux_size + self.dense_size - 1
        if out is None:
            out = np.zeros((case.size, maps[0].shape[1], s, s), dtype=maps[0].dtype)
        z, x, y = self._centres(case, flat)
        # map index margin + x is voxel x: the window starts aux_before pixels before the centre
        before = self.aux_before + self.dense_size // 2
        if before > self.aux_margin:
            raise ValueError(
                f"dense windows need a first-stage map margin of {before}, the maps have {self.aux_margin}"
            )
        _cut(out, maps, z, x + self.aux_margin, y + self.aux_margin, before)
        return out

    def batch(self, n: int, distribution: str, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        """A batch: ``(patches, labels)``, or ``(patches, aux windows, labels)`` with maps attached."""
        case, flat, label = self.sample(n, distribution, rng)
        if self.aux is not None:
            return self.extract(case, flat), self.extract_aux(case, flat), label
        return self.extract(case, flat), label


def _cut(
    out: np.ndarray, arrays: Sequence[np.ndarray], z: np.ndarray, x: np.ndarray, y: np.ndarray, before: int
) -> None:
    """``out[k] = arrays[k][z[k], :, x[k] - before : ..., y[k] - before : ...]``, zero where it leaves the array.

    One slice copy per window: on memory maps this is ~10x faster than one fancy-indexed gather.
    """
    s = out.shape[-1]
    for k, (a, zk, xk, yk) in enumerate(zip(arrays, z.tolist(), x.tolist(), y.tolist())):
        x0, y0 = xk - before, yk - before
        nx, ny = a.shape[-2:]
        if x0 >= 0 and y0 >= 0 and x0 + s <= nx and y0 + s <= ny:
            out[k] = a[zk, :, x0 : x0 + s, y0 : y0 + s]
        else:
            ax0, ay0, ax1, ay1 = max(x0, 0), max(y0, 0), min(x0 + s, nx), min(y0 + s, ny)
            if ax0 < ax1 and ay0 < ay1:
                out[k, :, ax0 - x0 : ax1 - x0, ay0 - y0 : ay1 - y0] = a[zk, :, ax0:ax1, ay0:ay1]


class PatchBatchDataset(Dataset):
    """An epoch of patch batches; item ``(epoch, i, distribution)`` is a whole batch ``(x, [aux,] y)``.

    Use with a :class:`~brats_lightning.data.loading.RingLoader` (``batch_size=None``) and an
    :class:`~brats_lightning.data.datasets.EpochItems` sampler, which tells every item the epoch and
    the label distribution in force, so that loader workers persist across epochs and phases. Batch
    ``i`` of epoch ``e`` is drawn with a random generator seeded by ``(seed, e, i)``: reproducible
    whatever the number of workers, the same after a resume, and different on every DDP rank
    (Lightning's distributed sampler gives each rank other indices). Patches are float16 (the
    cache's precision); the data module converts them on the device.

    Args:
        sampler: the patch sampler of the training cases.
        batch_size: patches per batch.
        batches: batches per epoch.
        seed: seed of the run.
    """

    ring: BatchRing | None = None  # set by RingLoader: shared batch buffers of the loader workers

    def __init__(self, sampler: PatchSampler, batch_size: int, batches: int, seed: int = 0) -> None:
        self.sampler = sampler
        self.batch_size = batch_size
        self.batches = batches
        self.seed = seed

    def __len__(self) -> int:
        return self.batches

    def batch_specs(self) -> list[tuple[tuple[int, ...], np.dtype]]:
        s, n, d = self.sampler, self.batch_size, self.sampler.dense_size
        side = s.patch_size + d - 1
        specs = [((n, int(s.shapes[0, 1]), side, side), np.dtype(np.float16))]
        if s.aux is not None:
            specs.append(((n, s.aux_channels, s.aux_size + d - 1, s.aux_size + d - 1), np.dtype(np.float16)))
        if d == 1:
            return specs + [((n,), np.dtype(np.int64))]
        return specs + [((n, d, d), np.dtype(np.int64)), ((n, d, d), np.dtype(np.float32))]

    def fill(self, item: tuple[int, int, str], arrays: Sequence[np.ndarray]) -> int:
        epoch, i, distribution = item
        s = self.sampler
        case, flat, label = s.sample(self.batch_size, distribution, np.random.default_rng((self.seed, epoch, i)))
        s.extract(case, flat, out=arrays[0])
        if s.aux is not None:
            s.extract_aux(case, flat, out=arrays[1])
        if s.dense_size == 1:
            arrays[-1][:] = label
        else:
            labels = s.extract_labels(case, flat, out=arrays[-2])
            arrays[-1][:] = dense_weights(labels, s.num_classes, distribution)
        return self.batch_size

    def __getitem__(self, item: tuple[int, int, str]) -> tuple[torch.Tensor, ...] | RingToken:
        return produce(self, item)


def dense_weights(labels: np.ndarray, num_classes: int, distribution: str) -> np.ndarray:
    """Loss weights of the pixels of dense windows ``(n, D, D)`` (label -1: not labelled, weight 0).

    ``"balanced"``: in every window each class present weighs ``1 / n_present`` in all, shared by its
    pixels; ``"natural"``: every labelled pixel of the window weighs the same. Each window sums to 1.
    """
    n = labels.shape[0]
    flat = labels.reshape(n, -1)
    valid = flat >= 0
    out = np.zeros(flat.shape, np.float32)
    for k in range(n):
        v = flat[k][valid[k]]
        if v.size == 0:
            continue
        if distribution == "natural":
            out[k][valid[k]] = 1.0 / v.size
        else:
            counts = np.bincount(v, minlength=num_classes).astype(np.float64)
            present = int((counts > 0).sum())
            out[k][valid[k]] = 1.0 / (present * counts[v])
    return out.reshape(labels.shape)
