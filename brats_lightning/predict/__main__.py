"""``python -m brats_lightning.predict``."""

from brats_lightning.predict import main

main()
