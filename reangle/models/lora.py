"""LoRA on a diffusers transformer through peft, and its export in diffusers format.

The adapter is named ``default``; its state dict keys are peft's
(``transformer_blocks.0.attn1.to_q.lora_A.weight``); :func:`save_lora` writes them as
``pytorch_lora_weights.safetensors`` with the ``transformer.`` prefix and the adapter
config as metadata, which the backbone pipeline's ``load_lora_weights`` reads
(``CogVideoXImageToVideoPipeline`` by default, ``WanImageToVideoPipeline`` for Wan). A two-expert
Wan2.2-A14B has a LoRA per expert: the high-noise one (``transformer``) in that file, the low-noise
one (``transformer_2``) in :data:`LORA_FILE_2` next to it, with the same ``transformer.`` keys, for
``load_lora_weights(folder, weight_name=LORA_FILE_2, load_into_transformer_2=True)``.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Sequence

import torch

from reangle.errors import InputError
from reangle.utils import clean_stale_staging, temporary_path, umask_safetensors

DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
LORA_FILE = "pytorch_lora_weights.safetensors"
LORA_FILE_2 = "pytorch_lora_weights_transformer_2.safetensors"   # the low-noise expert's (Wan2.2-A14B)


def add_lora(model: torch.nn.Module, rank: int = 128, alpha: float = 128, targets: Sequence[str] = DEFAULT_TARGETS,
             dropout: float = 0.0):
    """Freeze ``model`` and attach a LoRA of ``rank``/``alpha`` to the modules named ``targets``
    (suffixes of module names); LoRA weights are float32 and the only ones requiring grad.
    Returns the peft ``LoraConfig``."""
    from peft import LoraConfig

    if rank < 1:
        raise ValueError(f"LoRA rank must be at least 1, got {rank}")
    config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights=True, target_modules=list(targets),
                        lora_dropout=dropout)
    model.requires_grad_(False)
    try:
        model.add_adapter(config)
    except ValueError as exc:
        raise ValueError(f"cannot attach LoRA to target modules {list(targets)}: {exc}; "
                         f"fix lora.targets") from exc
    for param in model.parameters():
        if param.requires_grad:
            param.data = param.data.float()
    return config


def lora_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA weights of ``model`` (peft key names, detached CPU copies)."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(model).items()}


def save_lora(folder: str | Path, state: dict[str, torch.Tensor], config, pipeline: type | None = None,
              state_2: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``state`` (peft keys) and its ``LoraConfig`` into ``folder`` (replaced atomically) with
    ``pipeline.save_lora_weights`` (default ``CogVideoXImageToVideoPipeline``), for its
    ``load_lora_weights``; returns the weights file. ``state_2``: a second expert's LoRA (same config),
    written as :data:`LORA_FILE_2`. Non-finite weights are refused (:class:`LoraFileError`): nothing
    is written."""
    from diffusers import CogVideoXImageToVideoPipeline

    pipeline = pipeline or CogVideoXImageToVideoPipeline
    folder = Path(folder)
    files = {LORA_FILE: state, **({LORA_FILE_2: state_2} if state_2 is not None else {})}
    for name, weights in files.items():
        check_finite(weights, f"LoRA export to {folder / name}")
    clean_stale_staging(folder.parent)  # staging folders of killed exports
    staging = temporary_path(folder)
    shutil.rmtree(staging, ignore_errors=True)
    metadata = config.to_dict()
    metadata["target_modules"] = sorted(metadata["target_modules"])
    for name, weights in files.items():
        pipeline.save_lora_weights(staging, transformer_lora_layers=weights, weight_name=name,
                                   transformer_lora_adapter_metadata=metadata)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(umask_safetensors(staging), folder)
    return folder / LORA_FILE


class LoraFileError(InputError):
    """A LoRA file that is missing, not a LoRA of the backbone in diffusers format, or holds non-finite weights."""



def check_finite(state: dict[str, torch.Tensor], what: str) -> None:
    """One :class:`LoraFileError` when any weight of ``state`` is NaN or infinite."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise LoraFileError(f"{what}: {len(bad)} of {len(state)} LoRA weight tensors are not finite (e.g. {bad[0]}); "
                            f"the training diverged: use an earlier checkpoint's LoRA or train again with a lower "
                            f"train.lr")


def check_lora_fits(model: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """One sentence if a LoRA ``state`` (diffusers keys ``transformer.<module>.lora_A|B.weight``) targets
    a module ``model`` lacks, or one whose features differ (a LoRA of another model or size)."""
    modules = dict(model.named_modules())
    for key, weight in state.items():
        name, _, part = key.removeprefix("transformer.").rpartition(".lora_")
        if part not in ("A.weight", "B.weight"):
            continue
        module = modules.get(name)
        if module is None or not hasattr(module, "in_features"):
            raise LoraFileError(f"LoRA file {path} updates {name}, which the model does not have; sample with the "
                                f"model it was trained on (model.pretrained, model.tiny)")
        side, got, expected = ("input", weight.shape[1], module.in_features) if part == "A.weight" else \
            ("output", weight.shape[0], module.out_features)
        if got != expected:
            rank = weight.shape[0] if part == "A.weight" else weight.shape[1]
            raise LoraFileError(f"LoRA file {path} does not fit the model: its rank-{rank} update of {name} has "
                                f"{got} {side} features where the model has {expected}; sample with the model it "
                                f"was trained on (model.pretrained, model.tiny)")


def second_expert_lora(path: str | Path) -> Path:
    """The low-noise expert's LoRA file next to ``path`` (the high-noise one); one sentence if missing."""
    second = Path(path).with_name(LORA_FILE_2)
    if not second.is_file():
        raise LoraFileError(f"a two-expert Wan2.2 model needs the low-noise expert's LoRA {LORA_FILE_2} next to "
                            f"{path}; give the LoRA folder a run exported for this model")
    return second


def load_lora(model: torch.nn.Module, path: str | Path, adapter_name: str = "default",
              loader: type | None = None) -> None:
    """Attach the LoRA that :func:`save_lora` wrote (``path``: the weights file) to ``model`` as
    ``adapter_name``, active at scale 1 - as the pipeline's ``load_lora_weights`` does; ``loader``:
    the pipeline's LoRA loader mixin (default ``CogVideoXLoraLoaderMixin``)."""
    from diffusers.loaders.lora_pipeline import CogVideoXLoraLoaderMixin

    loader = loader or CogVideoXLoraLoaderMixin
    path = Path(path)
    if not path.is_file():
        raise LoraFileError(f"LoRA file not found: {path}; export it from a run (train.py) or fix --lora")
    try:
        state, metadata = loader.lora_state_dict(str(path), return_lora_metadata=True)
    except Exception as exc:
        raise LoraFileError(f"cannot read LoRA file {path}: {exc}") from exc
    if not any(k.startswith("transformer.") for k in state):
        raise LoraFileError(f"LoRA file {path} has no 'transformer.' keys; it is not a LoRA in diffusers format")
    check_finite(state, f"LoRA file {path}")
    check_lora_fits(model, state, path)
    loader.load_lora_into_transformer(state, transformer=model, adapter_name=adapter_name, metadata=metadata)
