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

    Args:
        cases: prepared, labelled training cases.
        num_classes: number of internal classes.
        patch_size: side of the square patches (33 for TwoPathCNN; larger for cascades).
    """

    def __init__(self, cases: Sequence[PreparedCase], num_classes: int, patch_size: int) -> None:
        if patch_size % 2 != 1:
            raise ValueError(f"patch_size must be odd (a centre pixel), got {patch_size}")
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
        n = case.size
        p = self.patch_size
        r = p // 2
        c0 = self.cases[0].image.shape[1]
        out = np.empty((n, c0, p, p), dtype=np.float32)
        offs = np.arange(p)
        for i in np.unique(case):
            sel = np.flatnonzero(case == i)
            img = self.cases[i].image  # (Z, C, X, Y), memory-mapped
            _, _, nx, ny = img.shape
            z, rem = np.divmod(flat[sel], nx * ny)
            x, y = np.divmod(rem, ny)
            zu, zi = np.unique(z, return_inverse=True)
            slabs = np.pad(np.asarray(img[zu], dtype=np.float32), ((0, 0), (0, 0), (r, r), (r, r)))
            rows = x[:, None] + offs  # window rows in padded coordinates
            cols = y[:, None] + offs
            patches = slabs[zi[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (m, P, P, C)
            out[sel] = patches.transpose(0, 3, 1, 2)
        return out

    def batch(self, n: int, distribution: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A batch of ``n`` patches and their centre labels."""
        case, flat, label = self.sample(n, distribution, rng)
        return self.extract(case, flat), label


class PatchBatchDataset(Dataset):
    """An epoch of ``batches`` patch batches; item ``i`` is a whole batch ``(x, y)``.

    Use with ``DataLoader(batch_size=None)``. The label distribution is read from ``state`` at
    every batch (a dict shared with the data module), so a phase switch takes effect at once in
    the main process; loader workers see it when the loader is rebuilt at the next epoch.
    """

    def __init__(self, sampler: PatchSampler, batch_size: int, batches: int, state: dict, seed: int = 0) -> None:
        self.sampler = sampler
        self.batch_size = batch_size
        self.batches = batches
        self.state = state
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.batches

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.sampler.batch(self.batch_size, self.state["distribution"], self.rng)
        return torch.from_numpy(x), torch.from_numpy(y)
