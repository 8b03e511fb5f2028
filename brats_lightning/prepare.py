"""Preprocess a whole data set into the cache: ``python -m brats_lightning.prepare data=brats data.root=...``.

Uses the same data configuration as training (``model=fcn_sym`` adds the symmetry maps, ``data.preprocess.n4=[t1,t1c]``
enables N4...), so a later ``python -m brats_lightning`` with the same options starts at once.
"""

from __future__ import annotations

import logging
import time

from hydra.utils import instantiate
from omegaconf import DictConfig

from brats_lightning.config import register_resolvers
from brats_lightning.options import check_config, command

__all__ = ["main"]

log = logging.getLogger("brats_lightning.prepare")


@command("prepare")
def main(cfg: DictConfig) -> None:
    """Prepare every case of ``cfg.data`` (skipping those already in the cache)."""
    register_resolvers()
    check_config(cfg, "prepare")  # every option's type and range, before any work
    t0 = time.perf_counter()
    dm = instantiate(cfg.data, _convert_="all")
    dm.prepare_data()
    n = len(dm.discover())
    log.info("%d cases prepared in %s (%.1f s)", n, dm.prepared_dir, time.perf_counter() - t0)


if __name__ == "__main__":
    main()
