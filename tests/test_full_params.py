"""Gathering full parameters for export and sampling: wrappers set aside and restored, the LoRA read
under its plain names, and which strategies gather (the FSDP run itself: test_fsdp.py)."""
import contextlib

import pytest
import torch
from diffusers.loaders import PeftAdapterMixin
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, SingleDeviceStrategy
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

from reangle.models.lora import add_lora, lora_state_dict
from reangle.training.full_params import full_parameters, gathering_context, wrappers_removed


class Attention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.to_q, self.to_k = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)

    def forward(self, x):
        return self.to_q(x) + self.to_k(x)


class Blocks(torch.nn.Sequential, PeftAdapterMixin):
    """Two attention blocks that take a LoRA the way the diffusers transformer does."""


def _model_with_lora():
    torch.manual_seed(0)
    model = Blocks(Attention(), Attention())
    add_lora(model, rank=2, alpha=2, targets=["to_q", "to_k"])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    return model


def test_wrapped_blocks_give_the_plain_lora_and_forward_and_are_restored():
    plain = _model_with_lora()
    expected, x = lora_state_dict(plain), torch.rand(3, 8)
    wrapped = _model_with_lora()
    for i in range(2):
        wrapped[i] = checkpoint_wrapper(wrapped[i])
    assert all("_checkpoint_wrapped_module" in n for n, _ in wrapped.named_parameters())
    with wrappers_removed(wrapped) as model:
        assert not any("_checkpoint_wrapped_module" in n for n, _ in model.named_parameters())
        state = lora_state_dict(model)
        assert all(type(block) is Attention for block in model)
        torch.testing.assert_close(model(x), plain(x))
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)
    assert all(type(block) is not Attention for block in wrapped)  # the wrappers are back


def test_unsharded_strategies_gather_nothing_and_zero3_needs_deepspeed():
    model = _model_with_lora()
    assert isinstance(gathering_context(SingleDeviceStrategy(torch.device("cpu")), model), contextlib.nullcontext)
    with full_parameters(SingleDeviceStrategy(torch.device("cpu")), model) as inside:
        assert inside is model
    for stage in (2, 3):  # built without DeepSpeed installed: only the config is read here
        strategy = DeepSpeedStrategy.__new__(DeepSpeedStrategy)
        strategy.config = {"zero_optimization": {"stage": stage}}
        if stage == 2:
            assert isinstance(gathering_context(strategy, model), contextlib.nullcontext)
        else:
            try:
                import deepspeed
            except ImportError:
                with pytest.raises(ImportError, match="deepspeed"):
                    gathering_context(strategy, model)
            else:
                assert isinstance(gathering_context(strategy, model), deepspeed.zero.GatheredParameters)


def test_fsdp_without_original_parameters_is_a_clear_error():
    with pytest.raises(ValueError, match="use_orig_params: true"):
        gathering_context(FSDPStrategy(use_orig_params=False), _model_with_lora())
