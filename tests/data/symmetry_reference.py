"""Plain per-pixel reference implementation of Shen et al.'s symmetry difference (for tests and benchmarks).

Deliberately naive: a Python loop over pixels, a window per pixel, no vectorisation beyond numpy on
the 11x11 window. It follows the same definition as :func:`brats_lightning.data.symmetry.symmetry_difference`:
pixel ``(h, w)`` of a straightened slice is compared with the window centred on ``(k - h, w)``
(``k = 2 * center_h``), window pixels outside the image are skipped, the signed difference to the
closest value is kept (ties: the positive one), pixels outside the mask get 0.
"""

from __future__ import annotations

import numpy as np


def reference_difference(slices: np.ndarray, mask: np.ndarray | None, k: int, window: int = 11) -> np.ndarray:
    """``(N, C, H, W)`` signed symmetry differences computed pixel by pixel."""
    n, c, h, w = slices.shape
    r = window // 2
    out = np.zeros_like(slices, dtype=np.float64)
    if mask is None:
        mask = np.ones((n, h, w), bool)
    for i in range(n):
        for y in range(h):
            my = k - y
            y0, y1 = max(my - r, 0), min(my + r + 1, h)
            if y0 >= y1:
                continue
            for x in range(w):
                if not mask[i, y, x]:
                    continue
                x0, x1 = max(x - r, 0), min(x + r + 1, w)
                for ch in range(c):
                    d = float(slices[i, ch, y, x]) - slices[i, ch, y0:y1, x0:x1].astype(np.float64).ravel()
                    ad = np.abs(d)
                    best = ad.min()
                    cands = d[ad == best]
                    out[i, ch, y, x] = cands.max()  # tie -> the positive one
    return out
