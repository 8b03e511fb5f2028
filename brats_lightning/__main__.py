"""``python -m brats_lightning [overrides]``: train and test a model (see ``conf/train.yaml``)."""

from brats_lightning.train import main

if __name__ == "__main__":
    main()
