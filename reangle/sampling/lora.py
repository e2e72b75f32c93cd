"""Loading an exported LoRA (diffusers format) into a bare CogVideoX transformer.

The same file ``CogVideoXImageToVideoPipeline.load_lora_weights`` reads: keys
``transformer.<module>.lora_A/B.weight`` in a safetensors file, with the adapter's
rank and alpha in the file's metadata when the exporter wrote them.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

ADAPTER = "reangle"


class LoraFileError(ValueError):
    """A LoRA file that is missing or does not fit the transformer."""


def load_lora(transformer: torch.nn.Module, path: str | os.PathLike, adapter_name: str = ADAPTER) -> None:
    """Attach the LoRA in ``path`` to ``transformer`` (peft) as ``adapter_name``, active at scale 1."""
    from diffusers.loaders.lora_pipeline import CogVideoXLoraLoaderMixin

    path = Path(path)
    if not path.is_file():
        raise LoraFileError(f"LoRA file not found: {path}; export it from a run (train.py) or fix --lora")
    try:
        state, metadata = CogVideoXLoraLoaderMixin.lora_state_dict(str(path), return_lora_metadata=True)
    except Exception as exc:
        raise LoraFileError(f"cannot read LoRA file {path}: {exc}") from exc
    if not any(k.startswith("transformer.") for k in state):
        raise LoraFileError(f"LoRA file {path} has no 'transformer.' keys; it is not a CogVideoX LoRA "
                            f"in diffusers format")
    CogVideoXLoraLoaderMixin.load_lora_into_transformer(state, transformer=transformer, adapter_name=adapter_name,
                                                        metadata=metadata)
