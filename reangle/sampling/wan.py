"""Wan image-to-video sampling from a start frame, one video per request (Wan2.1-I2V,
Wan2.2-TI2V-5B and the two-expert Wan2.2-I2V-A14B, told apart by the configs:
:func:`~reangle.models.wan.wan_conditioning`).

Numerically the path of diffusers' ``WanImageToVideoPipeline`` (``expand_timesteps`` for a
``first_latent`` model; ``transformer_2`` and ``boundary_ratio`` for two experts) with the same
components, inputs and generator, in phases like
:class:`~reangle.sampling.sampler.CogVideoXSampler`: text embeddings once per distinct prompt
(then the UMT5 encoder can go), the CLIP image tokens (Wan2.1-I2V) and the VAE condition of
every start frame, the denoising, then decoding. Wan2.2-TI2V's steps feed the latents with
frame 0 replaced by the start frame's latent and per-token timesteps (0 on frame 0), and frame
0 is replaced once more before decoding, as the pipeline does. A two-expert model denoises the
timesteps ``t >= boundary_ratio * 1000`` with ``transformer`` and guidance ``settings.guidance``,
the others with ``transformer_2`` and ``settings.guidance_2`` (``None``: the same), as the
pipeline's ``guidance_scale_2``; each expert's step is guided when its own scale is above 1
(the pipeline decides once, by ``guidance_scale``; the two agree unless only ``guidance_2`` is
above 1). Classifier-free guidance runs the conditional and the unconditional branch as two
calls, as the pipeline does (the negative branch keeps the image condition and image tokens).
The only random draw is each request's initial noise, from a CPU generator seeded with its
seed.
"""
from __future__ import annotations

import contextlib
from typing import Mapping, Sequence

import torch
from tqdm.auto import tqdm

from reangle.models.wan import (TEXT_LENGTH, encode_wan_image, encode_wan_prompts, first_latent_timesteps,
                                high_noise, latent_stats, wan_conditioning, wan_first_latent, wan_image_condition,
                                with_first_latent)
from reangle.sampling.sampler import SampleRequest, SamplingSettings, VideoSampler


class WanSampler(VideoSampler):
    """Samples Wan image-to-video videos; ``image_processor``/``image_encoder``: the CLIP pair of a
    Wan2.1-I2V model (``None`` for Wan2.2 models, which have none); ``transformer_2`` and
    ``boundary_ratio``: the low-noise expert of a two-expert Wan2.2-A14B and where it takes over."""

    def __init__(self, transformer: torch.nn.Module, vae: torch.nn.Module, scheduler,
                 text_encoder: torch.nn.Module | None = None, tokenizer=None, *, image_processor=None,
                 image_encoder: torch.nn.Module | None = None, transformer_2: torch.nn.Module | None = None,
                 boundary_ratio: float | None = None, device: torch.device | str | None = None,
                 offload: bool = False, progress: bool = True, max_text_length: int = TEXT_LENGTH):
        super().__init__(transformer, vae, scheduler, text_encoder, tokenizer, device, offload, progress)
        if (transformer_2 is None) != (boundary_ratio is None):
            raise ValueError("a two-expert Wan needs both transformer_2 and boundary_ratio")
        self.transformer_2, self.boundary_ratio = transformer_2, boundary_ratio
        self.two_experts = transformer_2 is not None
        self.conditioning = wan_conditioning(transformer.config, vae.config)
        if transformer.config.image_dim is not None and image_encoder is None:
            raise ValueError("this Wan transformer takes CLIP image tokens (image_dim); give its image_encoder and "
                             "image_processor")
        self.image_processor, self.image_encoder = image_processor, image_encoder
        self.max_text_length = max_text_length
        self.temporal_factor = int(vae.config.scale_factor_temporal)
        self.spatial_factor = int(vae.config.scale_factor_spatial)
        self.size_multiple = self.spatial_factor * int(transformer.config.patch_size[1])

    def _encode_text(self, encoder: torch.nn.Module, prompts: list[str]) -> torch.Tensor:
        """UMT5 embeddings ``[B, L, D]`` (L = the text length), zero past each prompt's tokens."""
        return encode_wan_prompts(self.tokenizer, encoder, prompts, self.device, self.max_text_length)

    @torch.no_grad()
    def sample(self, requests: Sequence[SampleRequest], embeddings: Mapping[str, torch.Tensor],
               settings: SamplingSettings) -> list[torch.Tensor]:
        """One video ``[num_frames, 3, H, W]`` in [0, 1] (float32, CPU) per request."""
        self._check(requests, embeddings, settings)
        if settings.dynamic_guidance:
            raise ValueError("dynamic guidance is CogVideoX's; set sample.dynamic_guidance=false for Wan")
        tokens: list[torch.Tensor | None] = [None] * len(requests)
        if self.transformer.config.image_dim is not None:
            with self._on_device(self.image_encoder) as encoder:
                tokens = [encode_wan_image(self.image_processor, encoder, r.image[None]).to(self.dtype)
                          for r in requests]
        with self._on_device(self.vae):
            conditions = [self._condition(r) for r in requests]
        with self._on_device(self.transformer), self._on_experts():
            latents = [self._denoise(r, c, tok, embeddings, settings, i, len(requests))
                       for i, (r, c, tok) in enumerate(zip(requests, conditions, tokens))]
        with self._on_device(self.vae):
            return [self._decode(z) for z in latents]

    def _on_experts(self):
        """The low-noise expert on the device too (with offload both experts are there while denoising)."""
        return self._on_device(self.transformer_2) if self.two_experts else contextlib.nullcontext()

    def _expert(self, t: torch.Tensor, settings: SamplingSettings) -> tuple[torch.nn.Module, float]:
        """The transformer and guidance scale of timestep ``t`` (the pipeline's switch at the boundary)."""
        if not self.two_experts or high_noise(t, self.boundary_ratio, self.scheduler.config.num_train_timesteps):
            return self.transformer, settings.guidance
        return self.transformer_2, settings.guidance if settings.guidance_2 is None else settings.guidance_2

    def _condition(self, request: SampleRequest) -> torch.Tensor:
        """The VAE condition of one start frame (``[1, 4 + C, F, h, w]``, or ``[1, C, 1, h, w]``)."""
        image = request.image.to(self.device)[None].float() * 2 - 1
        if self.conditioning == "first_latent":
            return wan_first_latent(self.vae, image)
        return wan_image_condition(self.vae, image, request.num_frames)

    def _denoise(self, request: SampleRequest, condition: torch.Tensor, image_tokens: torch.Tensor | None,
                 embeddings: Mapping[str, torch.Tensor], settings: SamplingSettings,
                 index: int, total: int) -> torch.Tensor:
        """Latents ``[1, C, F, h, w]`` (float32) after ``settings.steps`` steps."""
        sched = self.scheduler
        text = embeddings[request.prompt].to(self.device, self.dtype)
        negative = embeddings.get(settings.negative_prompt)
        negative = negative.to(self.device, self.dtype) if negative is not None else None
        sched.set_timesteps(settings.steps, device=self.device)
        generator = torch.Generator("cpu").manual_seed(int(request.seed))
        frames = (request.num_frames - 1) // self.temporal_factor + 1
        h, w = request.image.shape[-2] // self.spatial_factor, request.image.shape[-1] // self.spatial_factor
        latents = torch.randn((1, int(self.vae.config.z_dim), frames, h, w), generator=generator,
                              dtype=torch.float32).to(self.device)
        condition = condition.to(self.device, torch.float32)
        image_tokens = image_tokens.to(self.device) if image_tokens is not None else None
        first_latent = self.conditioning == "first_latent"
        patch = tuple(self.transformer.config.patch_size[1:])
        lora = {"scale": settings.lora_scale} if settings.lora_scale != 1.0 else None
        bar = tqdm(sched.timesteps, desc=f"sampling {index + 1}/{total}", disable=not self.progress, leave=False)
        for t in bar:
            transformer, guidance = self._expert(t, settings)
            if first_latent:
                model_in = with_first_latent(latents, condition).to(self.dtype)
                timestep = first_latent_timesteps(t, frames, h, w, patch)
            else:
                model_in = torch.cat([latents, condition], dim=1).to(self.dtype)
                timestep = t.expand(1)

            def velocity(context: torch.Tensor) -> torch.Tensor:
                return transformer(hidden_states=model_in, timestep=timestep, encoder_hidden_states=context,
                                   encoder_hidden_states_image=image_tokens, attention_kwargs=lora,
                                   return_dict=False)[0]

            pred = velocity(text)
            if guidance > 1.0:
                uncond = velocity(negative)
                pred = uncond + guidance * (pred - uncond)
            latents = sched.step(pred, t, latents, return_dict=False)[0]
        return with_first_latent(latents, condition) if first_latent else latents

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        """``[num_frames, 3, H, W]`` float32 in [0, 1] on the CPU."""
        latents = latents.to(self.device, self.vae.dtype)
        mean, std = latent_stats(self.vae.config, latents, channel_dim=1)
        video_pm1 = self.vae.decode(latents / (1.0 / std) + mean).sample  # [1, 3, N, H, W]
        return (video_pm1[0].permute(1, 0, 2, 3).float() / 2 + 0.5).clamp(0, 1).cpu()
