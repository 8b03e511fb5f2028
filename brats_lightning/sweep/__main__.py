"""``python -m brats_lightning.sweep <sweep folder>``: the best trials, importances and a plot."""

from brats_lightning.sweep.report import main

main()
