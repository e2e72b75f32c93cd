"""The multi-GPU presets in configs/strategy build the strategies they name."""
import importlib.util

import pytest
from lightning.pytorch.strategies import FSDPStrategy
from lightning.fabric.utilities.exceptions import MisconfigurationException

from reangle.config import load_config
from reangle.training.build import build_strategy


def test_fsdp_preset_wraps_each_transformer_block():
    from diffusers.models.transformers.cogvideox_transformer_3d import CogVideoXBlock

    cfg = load_config(["configs/presets/tiny.yaml", "configs/strategy/fsdp.yaml"])
    strategy = build_strategy(cfg.trainer.strategy)
    assert isinstance(strategy, FSDPStrategy)
    assert strategy.kwargs["auto_wrap_policy"]._module_classes == {CogVideoXBlock}


def test_deepspeed_preset_builds_or_says_how_to_install():
    cfg = load_config(["configs/presets/tiny.yaml", "configs/strategy/deepspeed.yaml"])
    if importlib.util.find_spec("deepspeed") is None:
        with pytest.raises(MisconfigurationException, match="pip install"):
            build_strategy(cfg.trainer.strategy)
    else:
        assert type(build_strategy(cfg.trainer.strategy)).__name__ == "DeepSpeedStrategy"
