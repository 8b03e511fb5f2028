"""Segment new scans: ``python -m brats_lightning.predict ckpt_path=... input_dir=... output_dir=...``."""

from brats_lightning.predict.run import main, predict_dir

__all__ = ["main", "predict_dir"]
