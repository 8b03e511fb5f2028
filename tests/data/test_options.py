"""brats_lightning.data.options: the data module's options, declared once, checked before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from brats_lightning.config import compose
from brats_lightning.data.datamodule import BratsDataModule
from brats_lightning.errors import ConfigError


def test_bad_tumour_fraction_is_a_config_error(tiny_dm_kwargs: dict) -> None:
    from brats_lightning.data.datamodule import BratsDataModule

    with pytest.raises(ConfigError, match="tumour_fraction"):
        BratsDataModule(**tiny_dm_kwargs, tumour_fraction=1.5)


def test_the_data_options_are_declared_once() -> None:
    """DataOptions is the one declaration of data.*: every data config composes into it, the data module takes
    it (or the same options as keyword arguments), and an option it does not declare is refused by name."""
    from brats_lightning.config import config_dir
    from brats_lightning.data.options import DataOptions
    from brats_lightning.errors import ConfigError

    for name in sorted(p.stem for p in (Path(config_dir()) / "data").glob("*.yaml")):
        data = OmegaConf.to_container(compose([f"data={name}", "data.root=x"]).data, resolve=True)
        assert isinstance(data, dict) and data.pop("_target_").endswith("BratsDataModule")
        assert set(data) <= set(DataOptions.model_fields), name
        DataOptions.of(data)
    options = DataOptions(batch_size=3, symmetry=True, symmetry_options={"window": 7})
    dm = BratsDataModule(options)
    assert dm.batch_size == 3 and dm.symmetry.enabled and dm.symmetry.window == 7
    assert BratsDataModule(batch_size=3, symmetry=True, symmetry_options={"window": 7}).options == options
    with pytest.raises(ConfigError, match=r"^data\.nope: unknown option; expected one of .* \(got 1\)$"):
        BratsDataModule(nope=1)
    with pytest.raises(ConfigError, match=r"^data\.symmetry_options\.window: must be odd \(got 8\)$"):
        BratsDataModule(symmetry_options={"window": 8})
