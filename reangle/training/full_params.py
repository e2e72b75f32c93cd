"""Full parameters of a sharded LightningModule, on every rank, for reading (LoRA export) and
for calling submodules directly (sampling).

FSDP shards the parameters of each wrapped unit (and of the root unit around the
LightningModule); DeepSpeed ZeRO-3 partitions them. Outside a forward pass through the root,
a submodule then holds shards, and calling it directly (not through the root) bypasses the
gathering. :func:`full_parameters` gathers them collectively: every rank must enter it.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Iterator

import torch

WRAPPED_ATTRIBUTES = ("_fsdp_wrapped_module", "_checkpoint_wrapped_module")  # FSDP, activation checkpointing


def plain_name(name: str) -> str:
    """A parameter name without the wrappers' parts (the name in an unwrapped model and in FSDP's
    state dicts)."""
    for attr in WRAPPED_ATTRIBUTES:
        name = name.replace(attr + ".", "")
    return name


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    while any(hasattr(module, attr) for attr in WRAPPED_ATTRIBUTES):
        module = next(getattr(module, attr) for attr in WRAPPED_ATTRIBUTES if hasattr(module, attr))
    return module


@contextmanager
def wrappers_removed(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Inside: every FSDP / activation-checkpoint wrapper below ``module`` is replaced by the module
    it wraps (plain names, plain forward); restored on exit."""
    swaps = [(parent, name, child) for parent in module.modules() if _unwrap(parent) is parent
             for name, child in parent.named_children() if _unwrap(child) is not child]
    try:
        for parent, name, child in swaps:
            setattr(parent, name, _unwrap(child))
        yield module
    finally:
        for parent, name, child in reversed(swaps):
            setattr(parent, name, child)


def gathering_context(strategy, module: torch.nn.Module):
    """The context that makes ``module``'s parameters full on every rank under ``strategy``
    (FSDP: ``summon_full_params`` on the root unit, no write-back; DeepSpeed ZeRO-3:
    ``GatheredParameters``; anything else holds full parameters already)."""
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy

    if isinstance(strategy, FSDPStrategy):
        from torch.distributed.fsdp import FullyShardedDataParallel

        if not strategy.kwargs.get("use_orig_params"):
            raise ValueError("FSDP with use_orig_params=false hides the LoRA weights from export and sampling; "
                             "set use_orig_params: true in the strategy's params (configs/strategy/fsdp.yaml)")

        return FullyShardedDataParallel.summon_full_params(strategy.model, writeback=False)
    if isinstance(strategy, DeepSpeedStrategy) and strategy.zero_stage_3:
        import deepspeed  # DeepSpeedStrategy itself requires it

        return deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)
    return nullcontext()


@contextmanager
def full_parameters(strategy, module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Inside: ``module`` (the LightningModule) holds full parameters on every rank and no wrappers,
    so its submodules can be read (``state_dict`` has the plain names) and called directly without
    any collective call (ranks may run different numbers of forwards). Changes are not written
    back. Every rank must enter; with an unsharded strategy it costs nothing."""
    with gathering_context(strategy, module), wrappers_removed(module):
        yield module
