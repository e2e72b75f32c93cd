"""CogVideoX image-to-video sampling from a start frame, one video per request.

Numerically the path of diffusers' ``CogVideoXImageToVideoPipeline`` with the same
components, inputs and generator, reorganised for many views:

- text embeddings are computed once per distinct prompt (and once for the negative
  prompt) before any denoising, so the T5 encoder can be released first;
- the work runs in phases (encode start frames with the VAE, denoise with the
  transformer, decode with the VAE), so with CPU offload each model visits the
  accelerator once per call, not once per view;
- classifier-free guidance runs the unconditional and conditional branches as one
  batch of two.

Randomness per request comes from one CPU ``torch.Generator`` seeded with the
request's seed and drawn in the pipeline's order (the start frame's latent sample,
the initial noise, then the scheduler's step noise), so a video depends on its own
seed only, not on the other requests or the device.
"""
from __future__ import annotations

import contextlib
import inspect
import math
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import torch
from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler
from tqdm.auto import tqdm

from reangle.models.cogvideox_i2v import encode_scale, rotary_embedding, vae_factors
from reangle.models.storage import compute_dtype
from reangle.utils import empty_cuda_cache


SCHEDULERS = {"ddim": CogVideoXDDIMScheduler, "dpm": CogVideoXDPMScheduler}


def make_scheduler(kind: str, model_scheduler):
    """``model``: the model's own scheduler; ``ddim`` / ``dpm``: that CogVideoX scheduler built
    from the model scheduler's config (same betas, prediction type and spacing)."""
    if kind == "model":
        return model_scheduler
    if kind not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {kind!r}; use one of {['model', *SCHEDULERS]}")
    return SCHEDULERS[kind].from_config(model_scheduler.config)


@dataclass
class SampleRequest:
    """One video to make: ``image`` ``[3, H, W]`` in [0, 1] (H, W multiples of 8 x patch size),
    ``num_frames`` = 1 + 4k, the prompt, and the seed of its generator."""

    image: torch.Tensor
    prompt: str
    seed: int
    num_frames: int


@dataclass
class SamplingSettings:
    """Denoising settings shared by all requests (paper: 40 steps, guidance 6.0)."""

    steps: int = 40
    guidance: float = 6.0
    guidance_2: float | None = None  # Wan2.2-A14B: the low-noise expert's scale (None: ``guidance``)
    dynamic_guidance: bool = False   # CogVideoX's cosine ramp of the guidance scale over the steps
    lora_scale: float = 1.0          # multiplier of the LoRA update (ignored without a LoRA)
    negative_prompt: str = ""


class VideoSampler:
    """What every backbone's sampler shares: where the models compute and the phases' offloading.

    ``device`` is where the models compute. With ``offload`` the models live on the CPU
    and each is moved to ``device`` for its phase only; otherwise they must already be
    on ``device``. The LoRA, when any, is already loaded into ``transformer`` (peft).
    """

    def __init__(self, transformer: torch.nn.Module, vae: torch.nn.Module, scheduler,
                 text_encoder: torch.nn.Module | None = None, tokenizer=None,
                 device: torch.device | str | None = None, offload: bool = False, progress: bool = True):
        self.transformer, self.vae, self.scheduler = transformer, vae, scheduler
        self.text_encoder, self.tokenizer = text_encoder, tokenizer
        self.device = torch.device(device) if device is not None else next(transformer.parameters()).device
        self.offload = offload
        self.progress = progress
        self.dtype = compute_dtype(transformer)  # layerwise casting (storage.py): the dtype it computes in
        self.size_multiple, self.temporal_factor = 1, 1  # set by each backbone's sampler
        self.two_experts = False                         # a second, low-noise transformer (Wan2.2-A14B)

    # -- models on the device -------------------------------------------------------
    @contextlib.contextmanager
    def _on_device(self, module: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """Eval mode (restored after); with offload also moved to the device and back."""
        was_training = module.training
        module.eval()
        if self.offload:
            module.to(self.device)
        try:
            yield module
        finally:
            if self.offload:
                module.to("cpu")
                empty_cuda_cache()
            module.train(was_training)

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str], batch_size: int = 8) -> dict[str, torch.Tensor]:
        """Text embeddings ``{prompt: [1, L, D]}`` (in :attr:`dtype`) of the distinct ``prompts``,
        ``batch_size`` at a time with the text encoder on the device (:meth:`_encode_text`)."""
        if self.text_encoder is None or self.tokenizer is None:
            raise RuntimeError("the text encoder was released or never given; pass precomputed embeddings "
                               "to sample() or build the sampler with text_encoder and tokenizer")
        unique = list(dict.fromkeys(prompts))
        out: dict[str, torch.Tensor] = {}
        with self._on_device(self.text_encoder) as encoder:
            for i in range(0, len(unique), batch_size):
                chunk = unique[i:i + batch_size]
                embeds = self._encode_text(encoder, chunk).to(self.dtype)
                out.update({p: e[None] for p, e in zip(chunk, embeds)})
        return out

    def _encode_text(self, encoder: torch.nn.Module, prompts: list[str]) -> torch.Tensor:
        """The backbone's text embeddings ``[len(prompts), L, D]`` of ``prompts`` with ``encoder`` (on the device)."""
        raise NotImplementedError

    def release_text_encoder(self) -> None:
        """Drop the sampler's references to the text encoder (the caller may still hold one)."""
        self.text_encoder = None
        empty_cuda_cache()

    def _check(self, requests: Sequence[SampleRequest], embeddings: Mapping[str, torch.Tensor],
               settings: SamplingSettings) -> None:
        multiple = self.size_multiple
        for r in requests:
            if r.image.ndim != 3 or r.image.shape[0] != 3:
                raise ValueError(f"start frame must be [3, H, W], got {tuple(r.image.shape)}")
            h, w = r.image.shape[-2:]
            if h % multiple or w % multiple:
                raise ValueError(f"frame size {h}x{w} is not a multiple of {multiple}; resize the video")
            if (r.num_frames - 1) % self.temporal_factor:
                raise ValueError(f"num_frames={r.num_frames} is not 1 + {self.temporal_factor}k; "
                                 f"use e.g. {1 + self.temporal_factor * ((r.num_frames - 1) // self.temporal_factor)}")
        missing = {r.prompt for r in requests} - set(embeddings)
        if max(settings.guidance, settings.guidance_2 or 0.0) > 1.0 and settings.negative_prompt not in embeddings:
            missing.add(settings.negative_prompt)
        if missing:
            raise KeyError(f"no text embedding for prompt(s) {sorted(missing)}; get them from encode_prompts()")
        if settings.steps < 1:
            raise ValueError(f"need at least one sampling step, got {settings.steps}")
        if settings.guidance_2 is not None and not self.two_experts:
            raise ValueError("sample.guidance_2 is the low-noise expert's guidance of a two-expert Wan2.2-A14B; "
                             "this model has one transformer: set sample.guidance_2=null")


class CogVideoXSampler(VideoSampler):
    """Samples CogVideoX I2V videos; see the module docstring and :class:`VideoSampler`."""

    def __init__(self, transformer: torch.nn.Module, vae: torch.nn.Module, scheduler,
                 text_encoder: torch.nn.Module | None = None, tokenizer=None,
                 device: torch.device | str | None = None, offload: bool = False, progress: bool = True):
        super().__init__(transformer, vae, scheduler, text_encoder, tokenizer, device, offload, progress)
        cfg = transformer.config
        if cfg.patch_size_t is not None:
            raise ValueError("CogVideoX 1.5 transformers (patch_size_t) are not supported; use a CogVideoX 1.0 I2V model")
        self.max_text_len = cfg.max_text_seq_length
        self.spatial_factor, self.temporal_factor = vae_factors(vae.config)
        self.size_multiple = self.spatial_factor * cfg.patch_size
        self.encode_scale = encode_scale(vae.config)
        self.latent_scale = vae.config.scaling_factor

    # -- text --------------------------------------------------------------------
    def _encode_text(self, encoder: torch.nn.Module, prompts: list[str]) -> torch.Tensor:
        """T5 embeddings ``[B, L, D]`` (L = max_text_seq_length) of the padded prompts."""
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.max_text_len, truncation=True,
                             add_special_tokens=True, return_tensors="pt").input_ids
        return encoder(ids.to(self.device))[0]

    @torch.no_grad()
    def sample(self, requests: Sequence[SampleRequest], embeddings: Mapping[str, torch.Tensor],
               settings: SamplingSettings) -> list[torch.Tensor]:
        """One video ``[num_frames, 3, H, W]`` in [0, 1] (float32, CPU) per request."""
        self._check(requests, embeddings, settings)
        generators = [torch.Generator("cpu").manual_seed(int(r.seed)) for r in requests]
        with self._on_device(self.vae):
            conditions = [self._image_latents(r, g) for r, g in zip(requests, generators)]
        with self._on_device(self.transformer):
            latents = [self._denoise(r, c, g, embeddings, settings, i, len(requests))
                       for i, (r, c, g) in enumerate(zip(requests, conditions, generators))]
        with self._on_device(self.vae):
            return [self._decode(z) for z in latents]

    def _image_latents(self, request: SampleRequest, generator: torch.Generator) -> torch.Tensor:
        """Start-frame condition ``[1, F, C, h, w]``: scaled VAE latent of the frame, zeros after it."""
        image_pm1 = request.image.to(self.device, self.vae.dtype)[None, :, None] * 2.0 - 1.0
        latent = self.vae.encode(image_pm1).latent_dist.sample(generator).to(self.dtype).permute(0, 2, 1, 3, 4)
        latent = latent * self.encode_scale
        frames = (request.num_frames - 1) // self.temporal_factor + 1
        return torch.cat([latent, latent.new_zeros((1, frames - 1) + latent.shape[2:])], dim=1)

    def _step_kwargs(self, generator: torch.Generator) -> dict:
        accepted = set(inspect.signature(self.scheduler.step).parameters)
        return {k: v for k, v in (("eta", 0.0), ("generator", generator)) if k in accepted}

    def _denoise(self, request: SampleRequest, image_latents: torch.Tensor, generator: torch.Generator,
                 embeddings: Mapping[str, torch.Tensor], settings: SamplingSettings,
                 index: int, total: int) -> torch.Tensor:
        """Latents ``[1, F, C, h, w]`` after ``settings.steps`` guided steps."""
        sched, cfg = self.scheduler, self.transformer.config
        guided = settings.guidance > 1.0
        text = embeddings[request.prompt].to(self.device, self.dtype)
        if guided:
            text = torch.cat([embeddings[settings.negative_prompt].to(self.device, self.dtype), text])
        sched.set_timesteps(settings.steps, device=self.device)
        timesteps = sched.timesteps
        frames = image_latents.shape[1]
        h, w = request.image.shape[-2:]
        shape = (1, frames, cfg.in_channels // 2, h // self.spatial_factor, w // self.spatial_factor)
        latents = torch.randn(shape, generator=generator, dtype=self.dtype).to(self.device) * sched.init_noise_sigma
        condition = torch.cat([image_latents] * 2) if guided else image_latents
        rotary = rotary_embedding(cfg, frames, shape[-2], shape[-1], self.device)
        ofs = None if cfg.ofs_embed_dim is None else latents.new_full((1,), 2.0)
        lora = {"scale": settings.lora_scale} if settings.lora_scale != 1.0 else None
        dpm = isinstance(sched, CogVideoXDPMScheduler)
        step_kwargs = self._step_kwargs(generator)
        previous_x0 = None
        bar = tqdm(timesteps, desc=f"sampling {index + 1}/{total}", disable=not self.progress, leave=False)
        for i, t in enumerate(bar):
            model_in = sched.scale_model_input(torch.cat([latents] * 2) if guided else latents, t)
            model_in = torch.cat([model_in, condition], dim=2)
            pred = self.transformer(hidden_states=model_in, encoder_hidden_states=text,
                                    timestep=t.expand(model_in.shape[0]), ofs=ofs, image_rotary_emb=rotary,
                                    attention_kwargs=lora, return_dict=False)[0].float()
            if guided:
                scale = settings.guidance
                if settings.dynamic_guidance:
                    scale = 1 + scale * (1 - math.cos(math.pi * ((settings.steps - t.item()) / settings.steps) ** 5.0)) / 2
                uncond, cond = pred.chunk(2)
                pred = uncond + scale * (cond - uncond)
            if dpm:
                latents, previous_x0 = sched.step(pred, previous_x0, t, timesteps[i - 1] if i > 0 else None,
                                                  latents, **step_kwargs, return_dict=False)
            else:
                latents = sched.step(pred, t, latents, **step_kwargs, return_dict=False)[0]
            latents = latents.to(self.dtype)
        return latents

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        """``[num_frames, 3, H, W]`` float32 in [0, 1] on the CPU."""
        latents = latents.permute(0, 2, 1, 3, 4) * (1 / self.latent_scale)
        video_pm1 = self.vae.decode(latents.to(self.vae.dtype)).sample  # [1, 3, N, H, W]
        return (video_pm1[0].permute(1, 0, 2, 3).float() / 2 + 0.5).clamp(0, 1).cpu()
