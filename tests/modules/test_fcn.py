"""brats_lightning.modules.fcn: the FCN module's options."""

from __future__ import annotations

import pytest

from brats_lightning.errors import ConfigError


def test_region_outputs_need_the_region_loss_and_a_nested_convention() -> None:
    from brats_lightning.modules.fcn import FCNModule

    with pytest.raises(ConfigError, match="region outputs train with loss=dice_bce"):
        FCNModule(4, 4, width=0.25, outputs="regions", loss="ce")
    with pytest.raises(ConfigError, match="model.outputs=regions: region-based outputs need"):
        FCNModule(4, 5, width=0.25, outputs="regions", loss="dice_bce", convention="brats2013")
    with pytest.raises(ConfigError, match="model.arch: Input should be 'fcn', 'unet' or 'dynunet'"):
        FCNModule(4, 4, arch="resnet")


def test_a_bad_loss_name_is_a_config_error() -> None:
    from brats_lightning.modules.fcn import FCNModule

    with pytest.raises(ConfigError, match="model.loss"):
        FCNModule(4, 4, width=0.25, loss="dice_only")
