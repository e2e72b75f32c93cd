"""Frozen diffusers networks kept on the CPU and brought to the device one block at a time
(``inpaint.offload``).

``offload_weights(model, "group", device)`` is diffusers' block-level group offloading
(``ModelMixin.enable_group_offload``, one block per group): every block of the model's
``ModuleList``/``Sequential`` children is a group that comes to ``device`` just before its forward
and goes back to the CPU after it; the rest of the model (embedders, final norm and projection)
is one group, on ``device`` for the whole forward of the model. On CUDA the copies run on a side
stream from pinned memory and each block prefetches the next one (after a first forward that
records the order), so the device holds the running block and the next one. Elsewhere
(``device`` the CPU included) the hooks move the groups synchronously; on the CPU the moves are
no-ops and the numerics are the same as without offloading (group offloading copies weights, it
does not change them).

Apply it after :func:`reangle.models.storage.store_weights`: on CUDA the hooks keep a pinned CPU
copy of each weight as it is when they are installed, so float8-stored weights are copied to the
device in float8 (casting after offloading would bring the weights back in their original dtype).
A group-offloaded model is not moved with ``.to(device)`` (diffusers ignores the call with a
warning): :func:`is_offloaded` tells callers which networks to leave where they are.
"""
from __future__ import annotations

import torch

from reangle.errors import InputError

OFFLOAD_MODES = ("group",)
GROUP_HOOK = "group_offloading"  # diffusers.hooks.group_offloading._GROUP_OFFLOADING


def check_offload(mode: str | None, key: str) -> None:
    """One :class:`InputError` naming the config ``key`` when ``mode`` is neither null nor a known offload mode."""
    if mode is not None and mode not in OFFLOAD_MODES:
        raise InputError(f"unknown {key} {mode!r}; use null (weights on the device) or one of {list(OFFLOAD_MODES)}")


def offload_weights(model: torch.nn.Module, mode: str | None, device: torch.device | str) -> torch.nn.Module:
    """``model`` (a diffusers ``ModelMixin``, on the CPU) group-offloaded to run on ``device`` (``mode``
    ``None``: unchanged); in place, returned."""
    check_offload(mode, "offload mode")
    if mode is None:
        return model
    device = torch.device(device)
    model.enable_group_offload(onload_device=device, offload_device=torch.device("cpu"), offload_type="block_level",
                               num_blocks_per_group=1, use_stream=device.type == "cuda")
    return model


def is_offloaded(model: torch.nn.Module) -> bool:
    """Whether any module of ``model`` carries diffusers' group offloading hook."""
    return any(getattr(m, "_diffusers_hook", None) is not None and m._diffusers_hook.get_hook(GROUP_HOOK) is not None
               for m in model.modules())


def offload_groups(model: torch.nn.Module) -> tuple[list[torch.nn.Module], list[torch.Tensor]]:
    """The groups :func:`offload_weights` makes of ``model``: (its blocks, one group each; the tensors of
    the rest, one group on the device through the model's forward)."""
    blocks = [block for child in model.children() if isinstance(child, (torch.nn.ModuleList, torch.nn.Sequential))
              for block in child]
    inside = {id(t) for block in blocks for t in (*block.parameters(), *block.buffers())}
    rest = [t for t in (*model.parameters(), *model.buffers()) if id(t) not in inside]
    return blocks, rest
