"""The run configuration: presets, the registry's defaults, overrides, validation, old folders."""

import pytest

from samedge import config
from samedge.errors import ConfigError


def test_preset_then_registry_then_overrides():
    cfg = config.resolve("mnist", "quick", optimizer="usam")
    assert cfg.hparams == {"rho": 0.5} and cfg.lr == 0.5  # USAM's default radius, the preset's lr
    cfg = config.resolve("mnist", "quick", optimizer="momentum", momentum=0.5, steps=10)
    assert cfg.hparams == {"momentum": 0.5} and cfg.steps == 10 and cfg.lr == 0.1
    assert config.resolve("mnist").preset == "quick"  # the task's first preset


def test_a_setting_the_optimizer_lacks_is_refused():
    with pytest.raises(ConfigError, match="gd has no rho"):
        config.resolve("mnist", "quick", optimizer="gd", rho=0.1)
    with pytest.raises(ConfigError, match="unknown setting"):
        config.resolve("mnist", "quick", learning_rate=0.1)


def test_a_saved_config_reads_back_equal():
    cfg = config.resolve("mnist", "quick", optimizer="sam_momentum", rho=0.2, momentum=0.8)
    assert config.from_dict(cfg.to_dict()) == cfg


def test_folders_written_before_the_registry_still_read():
    old = config.resolve("mnist", "quick", optimizer="sam", rho=0.3).to_dict()
    old.pop("hparams")
    old.pop("custom_optimizer")
    old |= {"rho": 0.3, "momentum": 0.0}  # the old fields: momentum meant nothing for SAM
    assert config.from_dict(old).hparams == {"rho": 0.3}
