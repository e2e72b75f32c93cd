"""The seam between the trainer and a video backbone.

A :class:`ModelSpec` owns everything model-specific: loading its parts, turning a view of
Omega into cached tensors (latent distributions, text embeddings, latent mask), one
training forward pass (prediction, target, weight) and LoRA export. The data module and
the LightningModule only talk to this interface, so another backbone (or a test double)
plugs in without touching them.

Cached tensors are plain ``{name: tensor}`` dicts; :meth:`ModelSpec.fingerprint` names
everything they depend on, so a cache built for other weights or settings is never reused.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class DiffusionPair:
    """What one training forward gives the loss: ``[B, ...]`` prediction and target, ``[B]`` weight."""

    prediction: torch.Tensor
    target: torch.Tensor
    weight: torch.Tensor


class ModelSpec(ABC):
    """One backbone for stage II."""

    @abstractmethod
    def fingerprint(self, kind: str) -> str:
        """Identity of the weights and settings that cached tensors of ``kind`` ("video", "text") depend on."""

    @abstractmethod
    def load_encoders(self, device: torch.device) -> None:
        """Load the models that fill the caches (VAE, text encoder) onto ``device``."""

    @abstractmethod
    def unload_encoders(self) -> None:
        """Drop the cache-filling models to free memory."""

    @abstractmethod
    def cached_video_tensors(self) -> tuple[str, ...]:
        """Names of the tensors :meth:`encode_video` returns (the cache entry of a view)."""

    @abstractmethod
    def encode_video(self, frames: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """``[N, 3, H, W]`` frames in [0, 1] -> cached tensors of one view."""

    @abstractmethod
    def encode_prompt(self, prompt: str) -> dict[str, torch.Tensor]:
        """One prompt -> cached tensors."""

    @abstractmethod
    def latent_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """``[N, H, W]`` bool pixel mask -> bool mask on the prediction's grid without channels."""

    @abstractmethod
    def load_diffusion_model(self, device: torch.device | None = None) -> torch.nn.Module:
        """Load (once) and return the trained network with LoRA attached; only LoRA weights require grad."""

    def load_training_encoders(self, device: torch.device) -> None:
        """Load onto the training ``device`` whatever :meth:`training_pair` encodes with (default: nothing)."""

    def unload_training_encoders(self) -> None:
        """Drop what :meth:`load_training_encoders` loaded (training is over; default: nothing)."""

    @abstractmethod
    def training_pair(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> DiffusionPair:
        """Noise a batch of cached tensors and run the network once."""

    @abstractmethod
    def save_lora(self, folder: str | Path, state: dict[str, torch.Tensor] | None = None) -> Path:
        """Write the LoRA (``state``, or the network's current one) in the backbone's pipeline format."""
