"""``python -m brats_lightning.report``."""

from brats_lightning.report import main

main()
