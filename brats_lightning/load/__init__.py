"""Loading a trained model, one home: checkpoints (:mod:`.checkpoint`: read safely, rebuild only
brats_lightning's models), run folders (:mod:`.runs`), exported ONNX models (:mod:`.onnx`) and what
``predict`` runs (:mod:`.predictor`: one model, an ensemble, flips)."""

from brats_lightning.load.checkpoint import check_fits, load_module
from brats_lightning.load.predictor import check_compatible, load_model, load_predictor
from brats_lightning.load.runs import find_checkpoints, predictor_checkpoints

__all__ = [
    "check_compatible",
    "check_fits",
    "find_checkpoints",
    "load_model",
    "load_module",
    "load_predictor",
    "predictor_checkpoints",
]
