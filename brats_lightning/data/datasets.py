"""Torch datasets over prepared cases: 2D axial slices for training, whole volumes for evaluation."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from brats_lightning.data.cache import PreparedCase
from brats_lightning.errors import DataError

__all__ = ["EpochSampler", "SliceDataset", "VolumeDataset", "crop_or_pad", "first_item", "slice_augmentation"]


def slice_augmentation(rotate_deg: float = 10.0, scale: float = 0.1, prob: float = 0.5, flip_prob: float = 0.5):
    """MONAI transforms for Shen et al.'s augmentation (Sec. 3.1): scaling, rotation, flipping.

    Flipping is left-right (axis 0 of a ``(C, X, Y)`` slice), which keeps symmetry maps valid.
    """
    from monai.transforms import Compose, RandAffined, RandFlipd

    return Compose(
        [
            RandFlipd(keys=("image", "label"), prob=flip_prob, spatial_axis=0),
            RandAffined(
                keys=("image", "label"),
                prob=prob,
                rotate_range=(math.radians(rotate_deg),),
                scale_range=(scale, scale),
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            ),
        ]
    )


def crop_or_pad(
    arrays: Sequence[np.ndarray], size: Sequence[int], rng: np.random.Generator | None = None
) -> list[np.ndarray]:
    """Crop or zero-pad the trailing two axes of every array to ``size``, all at the same offset.

    Centred when ``rng`` is ``None``; otherwise at a random offset (translation augmentation).
    """
    h, w = arrays[0].shape[-2:]
    out_slices, pads = [], []
    for n, s in zip((h, w), size):
        if n >= s:
            start = (n - s) // 2 if rng is None else int(rng.integers(0, n - s + 1))
            out_slices.append(slice(start, start + s))
            pads.append((0, 0))
        else:
            before = (s - n) // 2 if rng is None else int(rng.integers(0, s - n + 1))
            out_slices.append(slice(None))
            pads.append((before, s - n - before))
    res = []
    for a in arrays:
        a = a[(..., *out_slices)]
        if any(p != (0, 0) for p in pads):
            a = np.pad(a, [(0, 0)] * (a.ndim - 2) + pads)
        res.append(a)
    return res


class EpochSampler(Sampler[int]):
    """A random permutation of ``range(n)`` that is a pure function of ``(seed, epoch)``.

    Unlike a ``RandomSampler`` with a generator, iterating it again gives the same order, so the
    order of an epoch does not depend on how often the loader was iterated before (a resumed run
    sees what an uninterrupted run saw). Under DDP Lightning wraps it and shards it per rank.
    """

    def __init__(self, n: int, seed: int = 0, epoch: int = 0) -> None:
        self.n, self.seed, self.epoch = n, seed, epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        return iter(np.random.default_rng((self.seed, self.epoch, 1)).permutation(self.n).tolist())


class SliceDataset(Dataset):
    """Every axial slice that contains brain, cropped or padded to a fixed in-plane size.

    Items are ``(image, label)``: ``(C, X, Y)`` float32 and ``(X, Y)`` int64. The random crop and
    augmentation of item ``i`` are seeded by ``(seed, epoch, i)``: reproducible whatever the number
    of loader workers or ranks, and the same after a resume.

    Args:
        cases: prepared (labelled) cases.
        crop_size: ``(X, Y)`` in-plane size (Shen et al.: 144 x 192).
        augment: random crop offset, flip, rotation and scaling.
        augment_options: keyword arguments of :func:`slice_augmentation`.
        seed: seed of the augmentation.
        epoch: the training epoch (part of the seed).
    """

    def __init__(
        self,
        cases: Sequence[PreparedCase],
        crop_size: Sequence[int],
        augment: bool = False,
        augment_options: dict | None = None,
        seed: int = 0,
        epoch: int = 0,
    ) -> None:
        for c in cases:
            if c.label is None:
                raise DataError(f"{c.folder}: case {c.case_id} has no label; it cannot be used for training")
        self.cases = list(cases)
        self.crop_size = tuple(int(s) for s in crop_size)
        self.index = [(i, z) for i, c in enumerate(self.cases) for z in np.nonzero(c.mask.any(axis=(1, 2)))[0]]
        self.augment = augment
        self.transform = slice_augmentation(**(augment_options or {})) if augment else None
        self.seed = seed
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        ci, z = self.index[i]
        case = self.cases[ci]
        image = np.asarray(case.image[z], dtype=np.float32)
        label = np.asarray(case.label[z], dtype=np.int64)  # type: ignore[index]
        rng = np.random.default_rng((self.seed, self.epoch, i)) if self.augment else None
        image, label = crop_or_pad([image, label], self.crop_size, rng)
        if self.transform is not None and rng is not None:
            self.transform.set_random_state(seed=int(rng.integers(2**31)))
            out = self.transform({"image": image, "label": label[None].astype(np.float32)})
            image = np.asarray(out["image"], dtype=np.float32)
            label = np.asarray(out["label"])[0].round().astype(np.int64)
        return torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy(np.ascontiguousarray(label))


class VolumeDataset(Dataset):
    """Whole prepared cases for validation, testing and prediction (one case per item).

    Items are dicts with ``image`` ``(Z, C, X, Y)`` float32, ``mask`` ``(Z, X, Y)`` bool,
    ``label`` ``(Z, X, Y)`` int64 (labelled cases only), ``index``, ``case_id`` and the geometry
    needed to paste a prediction back into the full RAS grid (``box``, ``ras_shape``, ``spacing``).
    """

    def __init__(self, cases: Sequence[PreparedCase]) -> None:
        self.cases = list(cases)

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, i: int) -> dict:
        c = self.cases[i]
        item = {
            "image": torch.from_numpy(np.array(c.image, dtype=np.float32)),
            "mask": torch.from_numpy(np.array(c.mask, dtype=bool)),
            "index": i,
            "case_id": c.case_id,
            "box": c.box,
            "ras_shape": c.ras_shape,
            "spacing": c.spacing,
            "channels": c.meta.get("channels", []),
        }
        if c.label is not None:
            item["label"] = torch.from_numpy(np.array(c.label, dtype=np.int64))
        return item


def first_item(batch: list):
    """Collate function for batches of one volume: the item itself."""
    if len(batch) != 1:
        raise ValueError(f"volume batches hold one case, got {len(batch)}")
    return batch[0]
