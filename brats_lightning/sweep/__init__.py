"""Resumable hyper-parameter search (``hparams_search=<name>``) and its report (see :mod:`.study`)."""
