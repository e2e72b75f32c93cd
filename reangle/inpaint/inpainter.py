"""Inpainting models behind stage III's sampler.

An :class:`Inpainter` is a rectified-flow image model conditioned on a known image and a
mask, in diffusers' convention (``sigma`` 1 -> 0, model output ``u = noise - x0``, see
:mod:`reangle.inpaint.flow`). Images are ``[1, 3, H, W]`` in [0, 1], masks ``[1, 1, H, W]``
with 1 = visible (kept) and 0 = to inpaint; decoded images are ``[B, 3, H, W]`` in [-1, 1].
:class:`FluxControlNetInpainter` is FLUX.1-dev with the alimama inpainting ControlNet;
:class:`FluxFillInpainter` is FLUX.1-Fill, which takes the masked image and the mask
concatenated to its input channels. Both share FLUX's latents, schedule, text encoding and
decoding (:class:`_FluxInpainter`).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from reangle.utils import empty_cuda_cache


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
    """One view prepared for FLUX: the packed conditioning signal (1, L, C), prompt embeddings and ids.

    ``control`` is the ControlNet's control input (C = 68) or FLUX.1-Fill's extra input channels
    (C = 320); L is the packed latent token count.
    """

    height: int
    width: int
    control: Tensor
    prompt_embeds: Tensor
    pooled_prompt_embeds: Tensor
    text_ids: Tensor
    image_ids: Tensor


def _chunks(batch: Tensor, size: int) -> list[Tensor]:
    return list(batch.split(max(1, size)))


class _FluxInpainter(Inpainter):
    """What every FLUX inpainter shares: noise, schedule, chunked model calls, prompt encoding, decoding.

    ``pipe`` is a diffusers FLUX pipeline (its helpers pack latents, encode prompts and make
    position ids); ``guidance`` is the FLUX guidance embedding, without true classifier-free
    guidance. Batches go through the transformer and VAE ``max_batch`` at a time.
    ``fast_decoder``: an ``AutoencoderTiny`` with FLUX's 16-channel layout (taef1) for
    ``decode(fast=True)``; each decoder un-scales the latents with its own
    ``scaling_factor``/``shift_factor``, as the pipeline does with whichever VAE it holds.
    :meth:`encode_prompts` encodes the prompts up front and releases the text encoders (T5-XXL,
    CLIP); conditions then take their prompt embeddings from it.
    """

    def __init__(self, pipe, *, guidance: float, max_batch: int = 4, max_sequence_length: int = 512,
                 fast_decoder: torch.nn.Module | None = None):
        self.pipe, self.guidance = pipe, guidance
        self.max_batch, self.max_sequence_length = max_batch, max_sequence_length
        self.fast_decoder = fast_decoder
        self.scale = self.pipe.vae_scale_factor  # pixels per latent (8); packing halves it again
        self.prompts: dict[str, tuple[Tensor, Tensor, Tensor]] = {}  # prompt -> (embeds, pooled, text ids)

    def networks(self) -> list[torch.nn.Module]:
        """The networks of the search (all but the text encoders)."""
        return [m for m in (self.pipe.transformer, self.pipe.vae, self.fast_decoder) if m is not None]

    def to(self, device: torch.device | str) -> "_FluxInpainter":
        """:meth:`networks` moved to ``device``, but for group-offloaded ones (``inpaint.offload``: their hooks
        place each block)."""
        from reangle.models.offload import is_offloaded

        for net in self.networks():
            if not is_offloaded(net):
                net.to(device)
        return self

    @torch.no_grad()
    def encode_prompts(self, prompts, device: torch.device | str | None = None) -> None:
        """Encode each of ``prompts`` once with the text encoders, moved to ``device`` (default: the
        transformer's) for it, keep the embeddings there and release the text encoders (the pipeline's
        ``text_encoder`` and ``text_encoder_2`` become None): afterwards only these prompts can be conditioned on."""
        pipe = self.pipe
        device = torch.device(device) if device is not None else self.device
        for encoder in (pipe.text_encoder, pipe.text_encoder_2):
            encoder.to(device)
        for prompt in dict.fromkeys(prompts):
            self.prompts[prompt] = pipe.encode_prompt(prompt, prompt_2=None, device=device,
                                                      max_sequence_length=self.max_sequence_length)
        pipe.text_encoder = pipe.text_encoder_2 = None
        empty_cuda_cache()

    def _prompt(self, prompt: str) -> tuple[Tensor, Tensor, Tensor]:
        """(embeds, pooled, text ids) of ``prompt`` on the device: from :meth:`encode_prompts`, else encoded now."""
        pipe = self.pipe
        if prompt not in self.prompts:
            if pipe.text_encoder_2 is None:
                raise RuntimeError(f"prompt {prompt!r} was not among those encoded before the text encoders were "
                                   f"released; pass every view's prompt to encode_prompts()")
            return pipe.encode_prompt(prompt, prompt_2=None, device=self.device,
                                      max_sequence_length=self.max_sequence_length)
        return tuple(t.to(self.device) for t in self.prompts[prompt])

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

    def _encode_image(self, image_pm1: Tensor) -> Tensor:
        """Images (1, 3, H, W) in [-1, 1] -> FLUX latents (1, 16, H/8, W/8): the VAE's distribution mean,
        shifted and scaled like FLUX's latents (float32)."""
        vae = self.pipe.vae
        latents = vae.encode(image_pm1.to(self.device, vae.dtype)).latent_dist.mode()
        return (latents.float() - vae.config.shift_factor) * vae.config.scaling_factor

    def _condition(self, control: Tensor, prompt: str, height: int, width: int) -> FluxCondition:
        """``control`` (1, L, C) with the encoded ``prompt`` and the position ids of a ``height`` x ``width`` image."""
        pipe = self.pipe
        embeds, pooled, text_ids = self._prompt(prompt)
        h, w = height // self.scale, width // self.scale
        image_ids = pipe._prepare_latent_image_ids(1, h // 2, w // 2, self.device, self.dtype)
        return FluxCondition(height, width, control.to(self.device, self.dtype), embeds, pooled, text_ids, image_ids)

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

    def _inputs(self, latents: Tensor, sigma: float, c: FluxCondition, model: torch.nn.Module) -> dict[str, Any]:
        """``model``'s keyword inputs shared by every FLUX network, for a batch of latents (B, L, 64)."""
        b = latents.shape[0]
        guidance = torch.full((b,), self.guidance, device=self.device, dtype=torch.float32)
        return dict(timestep=torch.full((b,), sigma, device=self.device, dtype=self.dtype),
                    guidance=guidance if model.config.guidance_embeds else None,
                    encoder_hidden_states=c.prompt_embeds.expand(b, -1, -1),
                    pooled_projections=c.pooled_prompt_embeds.expand(b, -1), txt_ids=c.text_ids, img_ids=c.image_ids,
                    return_dict=False)

    @abstractmethod
    def _forward(self, latents: Tensor, sigma: float, c: FluxCondition) -> Tensor:
        """Model output (B, L, 64) float32 for one chunk of latents (B, L, 64)."""

    @torch.no_grad()
    def decode(self, latents: Tensor, condition: FluxCondition, fast: bool = False) -> Tensor:
        decoder = self.fast_decoder if fast and self.fast_decoder is not None else self.pipe.vae
        scaling, shift = decoder.config.scaling_factor, decoder.config.get("shift_factor", None) or 0.0
        spatial = self.pipe._unpack_latents(latents, condition.height, condition.width, self.scale)
        images = [decoder.decode((chunk / scaling + shift).to(decoder.dtype), return_dict=False)[0].float()
                  for chunk in _chunks(spatial, self.max_batch)]
        return torch.cat(images).clamp(-1, 1)


class FluxControlNetInpainter(_FluxInpainter):
    """FLUX.1-dev + the alimama inpainting ControlNet (Beta), one forward per evaluation.

    The control signal: the mask binarised (to inpaint = not visible), pixels to inpaint set
    to -1, the masked image VAE-encoded (distribution mean) and shifted/scaled like FLUX's
    latents, the mask resized to the latent grid (nearest) and inverted (1 = keep),
    concatenated (16 + 1 channels) and packed 2 x 2 (68 channels). The FLUX guidance
    embedding is ``guidance`` (3.5).
    """

    def __init__(self, components, *, conditioning_scale: float = 0.9, guidance: float = 3.5, max_batch: int = 4,
                 max_sequence_length: int = 512, fast_decoder: torch.nn.Module | None = None):
        super().__init__(components.pipeline, guidance=guidance, max_batch=max_batch,
                         max_sequence_length=max_sequence_length, fast_decoder=fast_decoder)
        self.controlnet, self.conditioning_scale = components.controlnet, conditioning_scale

    def networks(self) -> list[torch.nn.Module]:
        return [*super().networks(), self.controlnet]

    @torch.no_grad()
    def condition(self, image: Tensor, visible: Tensor, prompt: str) -> FluxCondition:
        _, _, height, width = image.shape
        self.check_size(height, width)
        to_inpaint = (visible < 0.5).to(self.device)
        latents = self._encode_image(torch.where(to_inpaint, -1.0, image.to(self.device) * 2 - 1))
        h, w = latents.shape[-2:]
        keep = 1 - F.interpolate(to_inpaint.float(), size=(h, w), mode="nearest")
        control = self.pipe._pack_latents(torch.cat([latents, keep], dim=1), 1, latents.shape[1] + 1, h, w)
        return self._condition(control, prompt, height, width)

    def _forward(self, latents: Tensor, sigma: float, c: FluxCondition) -> Tensor:
        hidden = latents.to(self.device, self.dtype)
        transformer = self.pipe.transformer
        blocks, single = self.controlnet(hidden_states=hidden, controlnet_cond=c.control.expand(len(hidden), -1, -1),
                                         conditioning_scale=self.conditioning_scale,
                                         **self._inputs(latents, sigma, c, self.controlnet))
        out = transformer(hidden_states=hidden, controlnet_block_samples=blocks, controlnet_single_block_samples=single,
                          **self._inputs(latents, sigma, c, transformer))[0]
        return out.float()


class FluxFillInpainter(_FluxInpainter):
    """FLUX.1-Fill: the masked image and the mask concatenated to the transformer's input channels.

    The conditioning (diffusers' ``FluxFillPipeline``): the mask binarised (1 = to inpaint =
    not visible), the image in [-1, 1] with pixels to inpaint set to 0, VAE-encoded (distribution
    mean, where the pipeline samples the posterior) and shifted/scaled, packed 2 x 2 (64
    channels); the full-resolution mask unshuffled 8 x 8 onto the latent grid and packed 2 x 2
    (256 channels). Each model call sees the noisy latents (64) followed by these 320 channels.
    The FLUX guidance embedding is ``guidance`` (30, the pipeline's default); no ControlNet.
    ``pipe``: a ``FluxFillPipeline`` (:func:`reangle.models.flux.load_flux_fill`).
    """

    def __init__(self, pipe, *, guidance: float = 30.0, max_batch: int = 4, max_sequence_length: int = 512,
                 fast_decoder: torch.nn.Module | None = None):
        super().__init__(pipe, guidance=guidance, max_batch=max_batch, max_sequence_length=max_sequence_length,
                         fast_decoder=fast_decoder)

    @torch.no_grad()
    def condition(self, image: Tensor, visible: Tensor, prompt: str) -> FluxCondition:
        _, _, height, width = image.shape
        self.check_size(height, width)
        to_inpaint = (visible < 0.5).to(self.device).float()
        latents = self._encode_image((image.to(self.device) * 2 - 1) * (1 - to_inpaint))
        h, w = latents.shape[-2:]
        mask = F.pixel_unshuffle(to_inpaint, self.scale)  # (1, 64, h, w): each latent pixel's 8 x 8 mask
        packed = [self.pipe._pack_latents(x, 1, x.shape[1], h, w) for x in (latents, mask)]
        return self._condition(torch.cat(packed, dim=2), prompt, height, width)

    def _forward(self, latents: Tensor, sigma: float, c: FluxCondition) -> Tensor:
        hidden = torch.cat([latents.to(self.device, self.dtype), c.control.expand(len(latents), -1, -1)], dim=2)
        transformer = self.pipe.transformer
        return transformer(hidden_states=hidden, **self._inputs(latents, sigma, c, transformer))[0].float()
