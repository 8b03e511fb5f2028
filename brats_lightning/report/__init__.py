"""Tables and figures from a multirun: ``python -m brats_lightning.report <multirun folder>`` (see :mod:`.runs`)."""

from brats_lightning.report.runs import main, write_report

__all__ = ["main", "write_report"]
