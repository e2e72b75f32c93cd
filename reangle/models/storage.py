"""Frozen diffusers networks stored in float8 and computed in their weights dtype (``model.storage_dtype``,
``inpaint.storage_dtype``).

``store_weights(model, "fp8", compute_dtype)`` is diffusers' layerwise casting
(``ModelMixin.enable_layerwise_casting``): the weights of the linear and convolution layers are
kept in ``float8_e4m3fn`` (1 byte per weight instead of 2 for bf16) and each layer is cast to
``compute_dtype`` just before its forward and back after it, so the matmuls run in
``compute_dtype``. diffusers' default skip patterns keep the patch and position embeddings, the
norms (``norm`` also covers the adaptive norms' linear layers), ``proj_in``/``proj_out``, each
model's own ``_skip_layerwise_casting_patterns`` and peft's LoRA layers (``lora_A``, ``lora_B``)
in ``compute_dtype``.

Apply it after a LoRA is attached or loaded: peft moves new adapter weights to the dtype of the
layer they wrap, so a LoRA attached to an already-cast layer would be rounded through float8 (its
initialisation, or the trained weights of a file); attached first, the LoRA keeps its dtype (float32
in training) and gets no casting hook. peft then casts a LoRA layer's input to the LoRA's dtype, as
without storage: diffusers turns that off for layers under casting (its ``peft_autocast_disable``
hook, meant for LoRA weights stored in the storage dtype), which outside autocast would feed bf16
inputs to float32 LoRA weights; :func:`store_weights` removes that hook. The output changes by the float8 rounding of the weights:
measured on tiny models by ``benchmarks/storage_effect.py`` (README "Will it fit?").
"""
from __future__ import annotations

import torch

from reangle.errors import InputError

STORAGE_DTYPES = {"fp8": torch.float8_e4m3fn}
PEFT_INPUT_HOOK = "peft_autocast_disable"  # diffusers.hooks.layerwise_casting._PEFT_AUTOCAST_DISABLE_HOOK


def check_storage_dtype(name: str | None, key: str) -> None:
    """One :class:`InputError` naming the config ``key`` when ``name`` is neither null nor a known storage dtype."""
    if name is not None and name not in STORAGE_DTYPES:
        raise InputError(f"unknown {key} {name!r}; use null (weights kept in their dtype) or one of "
                         f"{sorted(STORAGE_DTYPES)}")


def store_weights(model: torch.nn.Module, storage: str | None, compute_dtype: torch.dtype) -> torch.nn.Module:
    """``model`` (a diffusers ``ModelMixin``) with its layers stored in ``storage`` (``None``: unchanged) and
    computed in ``compute_dtype``; in place, returned."""
    check_storage_dtype(storage, "storage dtype")
    if storage is None:
        return model
    model.enable_layerwise_casting(storage_dtype=STORAGE_DTYPES[storage], compute_dtype=compute_dtype)
    for module in model.modules():  # peft's input cast to the LoRA dtype stays (module docstring)
        registry = getattr(module, "_diffusers_hook", None)
        if registry is not None and registry.get_hook(PEFT_INPUT_HOOK) is not None:
            registry.remove_hook(PEFT_INPUT_HOOK, recurse=False)
    return model


def compute_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype ``model`` computes in: diffusers' ``ModelMixin.dtype`` (the compute dtype under layerwise
    casting), else its first parameter's."""
    dtype = getattr(model, "dtype", None)
    return dtype if isinstance(dtype, torch.dtype) else next(model.parameters()).dtype
