"""Uncertainty a reader can act on: where a segmentation may be wrong, and which cases to review first.

The members of a prediction are the models of an ensemble (the folds of a cross-validation run) and
each one's test-time flips (Wang et al. 2019: test-time augmentation as an uncertainty estimate).
For one case:

* the **voxel map** is the entropy of the members' averaged class probabilities, divided by
  ``log K`` (0: every member sure of the same class; 1: all classes equally likely);
* the **case score** is the members' *agreement*: the mean Dice between the segmentations of every
  pair of members, over the BraTS regions (a case the members segment alike is likely segmented
  well; one they disagree on is one a person should look at first).

:func:`auroc` and :func:`spearman` measure how well they do their job against the truth
(``benchmarks/uncertainty.py`` on out-of-fold predictions).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations

import numpy as np
import torch

from brats_lightning.data.labels import REGIONS, LabelConvention

__all__ = ["normalised_entropy", "agreement", "auroc", "spearman"]


def normalised_entropy(probs: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Entropy of class probabilities along ``dim`` divided by ``log K``: in ``[0, 1]``."""
    k = probs.shape[dim]
    p = probs.float().clamp_min(1e-12)
    return -(p * p.log()).sum(dim) / math.log(k)


def agreement(classes: Sequence[np.ndarray | torch.Tensor], convention: LabelConvention) -> float | None:
    """Mean pairwise Dice over the BraTS regions between the members' class maps (``None`` for one member).

    A region empty in both maps of a pair counts as agreement (Dice 1), as the BraTS scorers count it.
    """
    if len(classes) < 2:
        return None
    masks = [
        convention.region_masks(c.cpu().numpy() if isinstance(c, torch.Tensor) else np.asarray(c)) for c in classes
    ]
    scores = []
    for a, b in combinations(masks, 2):
        for r in REGIONS:
            total = int(a[r].sum()) + int(b[r].sum())
            scores.append(1.0 if total == 0 else 2.0 * int((a[r] & b[r]).sum()) / total)
    return float(np.mean(scores))


def auroc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for telling ``positives`` apart (Mann-Whitney U, ties averaged).

    Examples:
        >>> auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([False, False, True, True]))
        0.75
    """
    from scipy.stats import rankdata

    s = np.asarray(scores, dtype=np.float64).ravel()
    pos = np.asarray(positives, bool).ravel()
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation of two sequences (``nan`` with fewer than 3 pairs)."""
    from scipy.stats import spearmanr

    if len(a) < 3:
        return float("nan")
    return float(spearmanr(a, b).statistic)
