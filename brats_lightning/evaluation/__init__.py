"""Scoring segmentations as BraTS does: the metric registry (:mod:`.metrics`), the lesion-wise metrics
(:mod:`.lesions`), summaries and tables (:mod:`.results`), the papers' published figures (:mod:`.papers`), and
a folder of predictions against its ground truth (:mod:`.folders`, the ``evaluate`` command's work)."""
