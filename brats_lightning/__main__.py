"""``python -m brats_lightning [overrides]``: train and test a model (see ``conf/train.yaml``)."""

from brats_lightning.cli import train_command

if __name__ == "__main__":
    train_command()
