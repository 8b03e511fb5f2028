"""Training: ``train(cfg)`` (:mod:`.train`, behind ``python -m brats_lightning``) and multi-stage jobs
(:mod:`.pipeline`: cascades, AverageCNN*)."""

from brats_lightning.training.train import main, train

__all__ = ["main", "train"]
