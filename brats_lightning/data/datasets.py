"""Datasets over prepared cases: training slices, patch batches (:mod:`.sampling`) and whole volumes.

Loader workers only read and cut from the memory-mapped cache (a copy per item); augmentation runs
afterwards as one batched transform on the device (:mod:`brats_lightning.data.augment`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, SequentialSampler

from brats_lightning.data.cache import PreparedCase
from brats_lightning.data.loading import BatchRing, RingToken, produce
from brats_lightning.errors import DataError

__all__ = [
    "EpochItems",
    "FixedBatches",
    "SliceDataset",
    "VolumeDataset",
    "crop_offsets",
    "first_item",
    "window_holding",
]


class EpochItems(Sampler):
    """Yields ``(epoch, i, *tags)`` for every ``i`` of an epoch, shuffled as a pure function of ``(seed, epoch)``.

    ``state()`` is read when an epoch's iteration starts and gives ``(epoch, *tags)`` (the data
    module's current epoch, and e.g. the patch distribution in force). Every item carries them to
    the loader workers, so workers persist across epochs and phases while each epoch's randomness
    stays a function of its number: a resumed run sees what an uninterrupted one saw, however many
    times the loader was iterated before. Under DDP Lightning wraps this sampler and shards its items.

    Args:
        n: items per epoch.
        seed: seed of the shuffle.
        state: returns ``(epoch, *tags)``.
        shuffle: permute the items (slices); ``False`` keeps ``0..n-1`` (patch batches, random anyway).
    """

    def __init__(self, n: int, seed: int, state: Callable[[], tuple], shuffle: bool = True) -> None:
        self.n, self.seed, self.state, self.shuffle = n, seed, state, shuffle

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple]:
        epoch, *tags = self.state()
        order = np.random.default_rng((self.seed, epoch, 1)).permutation(self.n) if self.shuffle else range(self.n)
        return iter([(int(epoch), int(i), *tags) for i in order])


class FixedBatches(SequentialSampler):
    """The first ``n_batches`` batches of epoch 0's shuffled order, as ``(0, slice)`` items, every epoch.

    A ``SequentialSampler`` (of ``range(n_items)``), so that Lightning's ``overfit_batches`` keeps it.

    Examples:
        >>> s = FixedBatches(10, seed=0, batch_size=4, n_batches=2)
        >>> list(s) == list(s), len(s), [len(b) for b in s]
        (True, 2, [4, 4])
    """

    def __init__(self, n_items: int, seed: int, batch_size: int, n_batches: int) -> None:
        super().__init__(range(n_items))
        # the order EpochItems gives epoch 0, cut to the batches kept
        order = np.random.default_rng((seed, 0, 1)).permutation(n_items)[: max(1, n_batches) * batch_size]
        self.batches = [[(0, int(i)) for i in order[k : k + batch_size]] for k in range(0, len(order), batch_size)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:  # type: ignore[override]
        return iter([list(b) for b in self.batches])

    def __len__(self) -> int:
        return len(self.batches)


def crop_offsets(size: Sequence[int], shape: Sequence[int], rng: np.random.Generator | None) -> list[int]:
    """Offset of a ``size`` window in an axis of ``shape`` per axis: negative pads, centred without ``rng``."""
    out = []
    for n, s in zip(shape, size):
        free = n - s  # >= 0: crop, < 0: pad
        if rng is None:
            out.append(free // 2 if free >= 0 else -((-free) // 2))
        else:
            out.append(int(rng.integers(0, free + 1)) if free >= 0 else -int(rng.integers(0, -free + 1)))
    return out


def _window(src: np.ndarray, out: np.ndarray, offsets: Sequence[int]) -> None:
    """Copy the part of ``src``'s last two axes that falls in ``out`` (at ``offsets`` of ``src``) into ``out``."""
    (ox, oy), (h, w) = offsets, out.shape[-2:]
    nx, ny = src.shape[-2:]
    sx0, sy0 = max(ox, 0), max(oy, 0)
    sx1, sy1 = min(ox + h, nx), min(oy + w, ny)
    out[..., sx0 - ox : sx1 - ox, sy0 - oy : sy1 - oy] = src[..., sx0:sx1, sy0:sy1]


class SliceDataset(Dataset):
    """Batches of axial slices that hold brain, each cut or zero-padded to a fixed in-plane size.

    An item is a list of ``(epoch, i)`` (a batch from a ``BatchSampler`` over :class:`EpochItems`) and
    gives ``(image, label)``: ``(B, C, X, Y)`` float16 (the cache's precision; converted on the
    device) and ``(B, X, Y)`` uint8. With ``augment`` the window's position is random (translation),
    seeded by ``(seed, epoch, i)``; the other augmentations run batched on the device. Use with a
    :class:`~brats_lightning.data.loading.RingLoader` (``batch_size=None``).

    With ``tumour_fraction`` (the foreground oversampling of nnU-Net, Isensee et al. 2021), item
    ``i`` of an epoch is, with that probability, replaced by a slice through a tumour voxel of the
    same case: a tumour class present in the case is drawn uniformly (so the small classes, necrosis
    and enhancing tumour, are drawn as often as edema), then a voxel of that class, and the window
    is placed at random where it holds that voxel. The draw is seeded by ``(seed, epoch, i)``.

    Args:
        cases: prepared, labelled cases.
        crop_size: ``(X, Y)`` in-plane size (Shen et al.: 144 x 192).
        batch_size: slices per batch (the largest item).
        augment: random window position.
        seed: seed of the window positions.
        tumour_fraction: probability that a slot draws a tumour-centred slice (``0``: the natural
            distribution of brain slices, as the papers).
        context: neighbouring slices on each side stacked as channels before the slice's own
            (:func:`~brats_lightning.inference.volume.with_context`'s order; zeros beyond the volume).
    """

    ring: BatchRing | None = None  # set by RingLoader: shared batch buffers of the loader workers

    def __init__(
        self,
        cases: Sequence[PreparedCase],
        crop_size: Sequence[int],
        batch_size: int = 8,
        augment: bool = False,
        seed: int = 0,
        tumour_fraction: float = 0.0,
        context: int = 0,
    ) -> None:
        for c in cases:
            if not c.has_label:
                raise DataError(f"{c.folder}: case {c.case_id} has no label; it cannot be used for training")
        if not 0.0 <= float(tumour_fraction) <= 1.0:
            raise ValueError(f"tumour_fraction must be in [0, 1], got {tumour_fraction!r}")
        self.tumour_fraction = float(tumour_fraction)
        self.cases = list(cases)
        self.crop_size = tuple(int(s) for s in crop_size)
        self.batch_size = batch_size
        self.index = [(i, z) for i, c in enumerate(self.cases) for z in c.brain_slices]
        self.augment = augment
        self.seed = seed
        self.context = int(context)
        self.channels = (self.cases[0].shape[1] if self.cases else 0) * (2 * self.context + 1)

    def __len__(self) -> int:
        return len(self.index)

    def batch_specs(self) -> list[tuple[tuple[int, ...], np.dtype]]:
        n = self.batch_size
        return [((n, self.channels, *self.crop_size), np.dtype(np.float16)), ((n, *self.crop_size), np.dtype(np.uint8))]

    def fill(self, items: Sequence[tuple[int, int]], arrays: Sequence[np.ndarray]) -> int:
        image, label = arrays
        for k, (epoch, i) in enumerate(items):
            ci, z = self.index[i]
            case = self.cases[ci]
            rng = np.random.default_rng((self.seed, epoch, i)) if self.augment else None
            voxel = self._tumour_voxel(case, epoch, i) if self.tumour_fraction > 0 else None
            if voxel is None:
                offsets = crop_offsets(self.crop_size, case.shape[2:], rng)
            else:
                z, *centre = voxel
                place = np.random.default_rng((self.seed, epoch, i, 2))
                offsets = window_holding(centre, self.crop_size, case.shape[2:], place)
            if self.context:
                c = case.shape[1]
                for j, d in enumerate(range(-self.context, self.context + 1)):
                    if 0 <= z + d < case.shape[0]:
                        _window(case.image[z + d], image[k, j * c : (j + 1) * c], offsets)
                    else:
                        image[k, j * c : (j + 1) * c] = 0
            else:
                _window(case.image[z], image[k], offsets)
            _window(case.label[z], label[k], offsets)  # type: ignore[index]
        return len(items)

    def _tumour_voxel(self, case: PreparedCase, epoch: int, i: int) -> tuple[int, int, int] | None:
        """``(z, x, y)`` of a tumour voxel of ``case`` for slot ``(epoch, i)``, or ``None`` (a natural slice)."""
        rng = np.random.default_rng((self.seed, epoch, i, 1))
        if rng.random() >= self.tumour_fraction:
            return None
        starts = case.class_starts
        present = [k for k in range(1, len(starts) - 1) if starts[k + 1] > starts[k]]
        if not present:  # a case without tumour: its natural slice
            return None
        k = present[int(rng.integers(len(present)))]
        flat = int(case.index[int(rng.integers(starts[k], starts[k + 1]))])
        _, _, nx, ny = case.shape
        z, rest = divmod(flat, nx * ny)
        return z, *divmod(rest, ny)

    def __getitem__(self, items: Sequence[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor] | RingToken:
        return produce(self, items)  # type: ignore[return-value]


def window_holding(
    point: Sequence[int], size: Sequence[int], shape: Sequence[int], rng: np.random.Generator
) -> list[int]:
    """Random offsets (as :func:`crop_offsets`) of a ``size`` window of ``shape`` that holds ``point``.

    The window stays inside the image where the image is larger (and inside the padding where it
    is smaller), and ``point`` falls anywhere in it with equal chance within those bounds.
    """
    out = []
    for p, s, n in zip(point, size, shape):
        free = n - s
        lo, hi = max(p - s + 1, min(0, free)), min(p, max(0, free))
        out.append(int(rng.integers(lo, hi + 1)))
    return out


class VolumeDataset(Dataset):
    """Whole prepared cases for validation, testing and prediction (one case per item).

    Items are dicts with ``image`` ``(Z, C, X, Y)`` float16, ``mask`` ``(Z, X, Y)`` bool,
    ``label`` ``(Z, X, Y)`` uint8 (labelled cases only), ``index``, ``case_id``, the geometry
    needed to paste a prediction back into the full RAS grid (``box``, ``ras_shape``, ``spacing``)
    and ``context_slices`` (the model's 2.5D context, added at inference).
    """

    def __init__(self, cases: Sequence[PreparedCase], context: int = 0) -> None:
        self.cases = list(cases)
        self.context = int(context)

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, i: int) -> dict:
        c = self.cases[i]
        item = {
            "image": torch.from_numpy(np.array(c.image)),
            "mask": torch.from_numpy(np.array(c.mask)),
            "index": i,
            "case_id": c.case_id,
            "box": c.box,
            "ras_shape": c.ras_shape,
            "spacing": c.spacing,
            "channels": c.meta.get("channels", []),
            "context_slices": self.context,
        }
        if c.has_label:
            item["label"] = torch.from_numpy(np.array(c.label))
        return item


def first_item(batch: list):
    """Collate function for batches of one volume: the item itself."""
    if len(batch) != 1:
        raise ValueError(f"volume batches hold one case, got {len(batch)}")
    return batch[0]
