"""Inpainting models behind stage III's sampler.

An :class:`Inpainter` is a rectified-flow image model conditioned on a known image and a
mask, in diffusers' convention (``sigma`` 1 -> 0, model output ``u = noise - x0``, see
:mod:`reangle.inpaint.flow`). Images are ``[1, 3, H, W]`` in [0, 1], masks ``[1, 1, H, W]``
with 1 = visible (kept) and 0 = to inpaint; decoded images are ``[B, 3, H, W]`` in [-1, 1].
:class:`FluxControlNetInpainter` is FLUX.1-dev with the alimama inpainting ControlNet; a
channel-concatenating model (FLUX.1-Fill) would be a second implementation of the seam.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


class Inpainter(ABC):
    """One inpainting model: conditions, noise, noise levels, model output and decoding."""

    @abstractmethod
    def condition(self, image: Tensor, visible: Tensor, prompt: str) -> Any:
        """Everything the model needs about one view (image, mask, prompt) at the image's size."""

    @abstractmethod
    def initial_noise(self, condition: Any, generator: torch.Generator) -> Tensor:
        """Standard normal latents (1, ...) for ``condition``'s size."""

    @abstractmethod
    def sigmas(self, steps: int, condition: Any) -> list[float]:
        """``steps + 1`` noise levels from 1 to 0."""

    @abstractmethod
    def velocity(self, latents: Tensor, sigma: float, condition: Any) -> Tensor:
        """Model output ``u`` (B, ...) at latents (B, ...) (float32 in and out)."""

    @abstractmethod
    def decode(self, latents: Tensor, condition: Any, fast: bool = False) -> Tensor:
        """Latents (B, ...) -> images (B, 3, H, W) in [-1, 1]; ``fast``: the cheap decoder for scoring."""


@dataclass
class FluxCondition:
    """One view prepared for FLUX: the packed control signal (1, L, 68), prompt embeddings and ids."""

    height: int
    width: int
    control: Tensor
    prompt_embeds: Tensor
    pooled_prompt_embeds: Tensor
    text_ids: Tensor
    image_ids: Tensor


def _chunks(batch: Tensor, size: int) -> list[Tensor]:
    return list(batch.split(max(1, size)))


class FluxControlNetInpainter(Inpainter):
    """FLUX.1-dev + the alimama inpainting ControlNet (Beta), one forward per evaluation.

    The control signal: the mask binarised (to inpaint = not visible), pixels to inpaint set
    to -1, the masked image VAE-encoded (distribution mean) and shifted/scaled like FLUX's
    latents, the mask resized to the latent grid (nearest) and inverted (1 = keep),
    concatenated (16 + 1 channels) and packed 2 x 2 (68 channels). The FLUX guidance
    embedding is ``guidance`` (3.5), without true classifier-free guidance. Batches go
    through the transformer and VAE ``max_batch`` at a time. ``fast_decoder``: an
    ``AutoencoderTiny`` with FLUX's 16-channel layout (taef1) for ``decode(fast=True)``; each
    decoder un-scales the latents with its own ``scaling_factor``/``shift_factor``, as the
    pipeline does with whichever VAE it holds.
    """

    def __init__(self, components, *, conditioning_scale: float = 0.9, guidance: float = 3.5, max_batch: int = 4,
                 max_sequence_length: int = 512, fast_decoder: torch.nn.Module | None = None):
        self.pipe, self.controlnet = components.pipeline, components.controlnet
        self.conditioning_scale, self.guidance = conditioning_scale, guidance
        self.max_batch, self.max_sequence_length = max_batch, max_sequence_length
        self.fast_decoder = fast_decoder
        self.scale = self.pipe.vae_scale_factor  # pixels per latent (8); packing halves it again

    @property
    def device(self) -> torch.device:
        return self.pipe.transformer.device

    @property
    def dtype(self) -> torch.dtype:
        return self.pipe.transformer.dtype

    def check_size(self, height: int, width: int) -> None:
        step = 2 * self.scale
        if height % step or width % step:
            raise ValueError(f"inpainting size {height}x{width} must be a multiple of {step} on both sides")

    @torch.no_grad()
    def condition(self, image: Tensor, visible: Tensor, prompt: str) -> FluxCondition:
        pipe, vae = self.pipe, self.pipe.vae
        _, _, height, width = image.shape
        self.check_size(height, width)
        to_inpaint = (visible < 0.5).to(self.device)
        masked = torch.where(to_inpaint, -1.0, image.to(self.device) * 2 - 1)
        latents = vae.encode(masked.to(vae.dtype)).latent_dist.mode()
        latents = (latents.float() - vae.config.shift_factor) * vae.config.scaling_factor
        h, w = latents.shape[-2:]
        keep = 1 - F.interpolate(to_inpaint.float(), size=(h, w), mode="nearest")
        control = pipe._pack_latents(torch.cat([latents, keep], dim=1), 1, latents.shape[1] + 1, h, w)
        embeds, pooled, text_ids = pipe.encode_prompt(prompt, prompt_2=None, device=self.device,
                                                      max_sequence_length=self.max_sequence_length)
        image_ids = pipe._prepare_latent_image_ids(1, h // 2, w // 2, self.device, self.dtype)
        return FluxCondition(height, width, control.to(self.dtype), embeds, pooled, text_ids, image_ids)

    def initial_noise(self, condition: FluxCondition, generator: torch.Generator) -> Tensor:
        h, w = condition.height // self.scale, condition.width // self.scale
        noise = torch.randn((1, 16, h, w), generator=generator, dtype=torch.float32)
        return self.pipe._pack_latents(noise, 1, 16, h, w).to(self.device)

    def sigmas(self, steps: int, condition: FluxCondition) -> list[float]:
        """FLUX's schedule: linear sigmas shifted by mu of the token count (1.15 at 1024^2), then 0."""
        from diffusers import FlowMatchEulerDiscreteScheduler
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        scheduler = FlowMatchEulerDiscreteScheduler.from_config(self.pipe.scheduler.config)
        cfg = scheduler.config
        mu = calculate_shift(condition.control.shape[1], cfg.get("base_image_seq_len", 256),
                             cfg.get("max_image_seq_len", 4096), cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu, device="cpu")
        return scheduler.sigmas.tolist()

    @torch.no_grad()
    def velocity(self, latents: Tensor, sigma: float, condition: FluxCondition) -> Tensor:
        outputs = [self._forward(chunk, sigma, condition) for chunk in _chunks(latents, self.max_batch)]
        return torch.cat(outputs)

    def _forward(self, latents: Tensor, sigma: float, c: FluxCondition) -> Tensor:
        b = latents.shape[0]
        hidden = latents.to(self.device, self.dtype)
        timestep = torch.full((b,), sigma, device=self.device, dtype=self.dtype)
        guidance = torch.full((b,), self.guidance, device=self.device, dtype=torch.float32)
        text = dict(encoder_hidden_states=c.prompt_embeds.expand(b, -1, -1),
                    pooled_projections=c.pooled_prompt_embeds.expand(b, -1), txt_ids=c.text_ids, img_ids=c.image_ids)
        blocks, single = self.controlnet(
            hidden_states=hidden, controlnet_cond=c.control.expand(b, -1, -1),
            conditioning_scale=self.conditioning_scale, timestep=timestep,
            guidance=guidance if self.controlnet.config.guidance_embeds else None, return_dict=False, **text)
        out = self.pipe.transformer(
            hidden_states=hidden, timestep=timestep,
            guidance=guidance if self.pipe.transformer.config.guidance_embeds else None,
            controlnet_block_samples=blocks, controlnet_single_block_samples=single, return_dict=False, **text)[0]
        return out.float()

    @torch.no_grad()
    def decode(self, latents: Tensor, condition: FluxCondition, fast: bool = False) -> Tensor:
        decoder = self.fast_decoder if fast and self.fast_decoder is not None else self.pipe.vae
        scaling, shift = decoder.config.scaling_factor, decoder.config.get("shift_factor", None) or 0.0
        spatial = self.pipe._unpack_latents(latents, condition.height, condition.width, self.scale)
        images = [decoder.decode((chunk / scaling + shift).to(decoder.dtype), return_dict=False)[0].float()
                  for chunk in _chunks(spatial, self.max_batch)]
        return torch.cat(images).clamp(-1, 1)
