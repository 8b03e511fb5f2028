"""Tables and figures from a multirun: ``python -m brats_lightning.report <multirun folder>``.

:mod:`.runs` reads the jobs of a multirun as data, :mod:`.ensembles` scores the ensemble of a setting's folds,
:mod:`.tables` writes the report.
"""

from brats_lightning.report.tables import main, write_report

__all__ = ["main", "write_report"]
