"""Wan2.1 image-to-video as a :class:`~reangle.models.spec.ModelSpec` (stage II).

Cached per view (``encode_video``), float32, latent frames first like CogVideoX's cache:

* ``video_mean``, ``video_logvar`` ``[F, 16, h, w]``: the VAE posterior of the clip in [-1, 1];
* ``condition`` ``[F, 20, h, w]``: Wan2.1-I2V's image condition (4 first-frame mask channels and
  the normalised VAE mode of the first frame followed by black frames,
  :func:`~reangle.models.wan.wan_image_condition`) - deterministic, so cached once;
* ``image_tokens`` ``[T, D]``: CLIP's penultimate hidden states of the first frame.

Per prompt: ``prompt_embeds`` ``[512, D]`` from UMT5, zero past the prompt's tokens.

Objective (rectified flow, as Wan trains it). A training step draws from its generator, in
this order: a sample ``z`` of the clip's posterior, normalised per channel to
``x0 = (z - latents_mean) / latents_std`` (the VAE config's statistics, as the pipeline
normalises); ``u ~ logit-normal(0, 1)`` per sample (the Wan report, arXiv 2503.20314, flow
matching paragraph: t "sampled from a logit-normal distribution", as SD3, arXiv 2403.03206,
Sec. 3.1);
the noise ``eps``. The noise level is ``u`` shifted by the model scheduler's ``flow_shift``
``s`` (3.0 for Wan2.1-480P), ``sigma = s u / (1 + (s - 1) u)`` (SD3 Eq. 23, the same shift
diffusers' flow schedulers and Wan's samplers apply), the input ``x_t = (1 - sigma) x0 +
sigma eps`` at timestep ``1000 sigma``, and the network's output is compared with the
velocity ``eps - x0`` (diffusers' ``flow_prediction`` convention: its sampler steps
``x + (sigma' - sigma) v``; the Wan report writes ``v = x1 - x0`` with ``x1`` the noise, and
DiffSynth-Studio's Wan trainer uses ``target = noise - sample``, its issue #1014). The weight is 1. CogVideoX's first-frame pixel noise and image dropout do
not apply: Wan2.1-I2V conditions on the clean first frame.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from reangle.data.latent_mask import latent_mask
from reangle.models.cogvideox import DEFAULT_CACHE
from reangle.models.cogvideox_i2v import _dtype
from reangle.models.lora import DEFAULT_TARGETS
from reangle.models.spec import DiffusionPair, FrameGrid, PipelineSpec
from reangle.models.wan import (TEXT_LENGTH, WAN21_I2V_480P, WAN22_TI2V_5B, ModelLoadError, WanTinyConfig, encode_wan_image,
                                encode_wan_prompts, load_wan_components, normalize_latents, resolve_wan,
                                wan_image_condition)


def shifted_sigmas(u: torch.Tensor, shift: float) -> torch.Tensor:
    """Noise levels ``s u / (1 + (s - 1) u)`` of uniform-or-not ``u`` in [0, 1] (SD3 Eq. 23)."""
    return shift * u / (1 + (shift - 1) * u)


class WanI2V(PipelineSpec):
    """Wan2.1 image-to-video with a LoRA on its attention projections (see the module docstring)."""

    SPEC_ID = "wan-i2v/1"

    @classmethod
    def frame_grid(cls, model: Mapping[str, Any]) -> FrameGrid:
        """Wan's video sizes: ``1 + 4k`` frames (the causal VAE keeps the first frame alone); height
        and width multiples of the VAE's spatial factor times the 2 x 2 patch: 16 px for Wan2.1 (and
        the tiny model), 32 px for Wan2.2-TI2V-5B's 16x VAE; a local folder's ``vae/`` and
        ``transformer/config.json`` say which. Reads no weights."""
        pretrained = str(model["pretrained"])
        folder = Path(pretrained).expanduser()
        files = [folder / "vae" / "config.json", folder / "transformer" / "config.json"]
        if all(f.is_file() for f in files):
            vae, transformer = (json.loads(f.read_text()) for f in files)
            return FrameGrid(int(vae.get("scale_factor_spatial", 8)) * int(transformer.get("patch_size", [1, 2, 2])[-1]),
                             int(vae.get("scale_factor_temporal", 4)))
        return FrameGrid(32 if pretrained == WAN22_TI2V_5B else 16, 4)

    def __init__(self, pretrained: str = WAN21_I2V_480P, *, tiny: Mapping[str, Any] | None = None,
                 revision: str | None = None, cache_dir: str = DEFAULT_CACHE, weights_dtype: str = "bf16",
                 lora_rank: int = 128, lora_alpha: float = 128, lora_targets: Sequence[str] = DEFAULT_TARGETS,
                 lora_dropout: float = 0.0, gradient_checkpointing: bool = True):
        self.pretrained, self.revision, self.cache_dir = pretrained, revision, cache_dir
        self.tiny = WanTinyConfig.from_mapping(tiny) if pretrained == "tiny" else None
        self.weights_dtype = _dtype(weights_dtype)
        self.lora = dict(rank=lora_rank, alpha=lora_alpha, targets=list(lora_targets), dropout=lora_dropout)
        self.gradient_checkpointing = gradient_checkpointing
        self.source = resolve_wan(pretrained, tiny=self.tiny, cache_dir=cache_dir)
        self._reset_models()

    def _load(self, parts: Sequence[str], device):
        return load_wan_components(self.pretrained, parts, tiny=self.tiny, cache_dir=self.cache_dir,
                                   revision=self.revision, dtype=self.weights_dtype, device=device)

    # --- identity -----------------------------------------------------------------------------
    def _read_config(self, part: str, **kwargs) -> dict:
        from diffusers import AutoencoderKLWan, WanTransformer3DModel
        from transformers import AutoConfig

        if part in ("text_encoder", "image_encoder"):
            return AutoConfig.from_pretrained(self.source, **kwargs).to_dict()
        cls = {"vae": AutoencoderKLWan, "transformer": WanTransformer3DModel}[part]
        return dict(cls.load_config(self.source, **kwargs))

    def check_supported(self) -> None:
        """Wan2.1-I2V layout only: channel-concatenated condition and CLIP image tokens."""
        t, z = self.component_config("transformer"), int(self.component_config("vae")["z_dim"])
        if t.get("image_dim") is None or t["in_channels"] != 2 * z + 4:
            raise ModelLoadError(f"{self.pretrained} is not a Wan2.1-I2V-style model (transformer in_channels "
                                 f"{t['in_channels']}, image_dim {t.get('image_dim')}); the Wan family supports "
                                 f"Wan2.1 image-to-video checkpoints such as {WAN21_I2V_480P}")

    def fingerprint(self, kind: str) -> str:
        return self._fingerprint(kind, {"video": ["vae", "image_encoder"], "text": ["text_encoder"]}[kind])

    # --- caching --------------------------------------------------------------------------------
    def load_encoders(self, device: torch.device) -> None:
        self.check_supported()
        self.encoders = self._load(["tokenizer", "text_encoder", "image_processor", "image_encoder", "vae"], device)
        for part in ("text_encoder", "image_encoder", "vae"):
            getattr(self.encoders, part).requires_grad_(False)

    def cached_video_tensors(self) -> tuple[str, ...]:
        return ("video_mean", "video_logvar", "condition", "image_tokens")

    @torch.no_grad()
    def encode_video(self, frames: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        enc = self._require_encoders()
        vae = enc.vae
        clip = (frames.to(vae.device, torch.float32) * 2 - 1).permute(1, 0, 2, 3).unsqueeze(0)  # [1, 3, N, H, W]
        dist = vae.encode(clip.to(vae.dtype)).latent_dist
        condition = wan_image_condition(vae, clip[:, :, 0], frames.shape[0])[0].permute(1, 0, 2, 3)
        tokens = encode_wan_image(enc.image_processor, enc.image_encoder, frames[:1])[0]
        return {"video_mean": dist.mean[0].permute(1, 0, 2, 3).float().cpu(),
                "video_logvar": dist.logvar[0].permute(1, 0, 2, 3).float().cpu(),
                "condition": condition.float().cpu(), "image_tokens": tokens.float().cpu()}

    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> dict[str, torch.Tensor]:
        enc = self._require_encoders()
        embeds = encode_wan_prompts(enc.tokenizer, enc.text_encoder, [prompt], enc.text_encoder.device, TEXT_LENGTH)
        return {"prompt_embeds": embeds[0].float().cpu()}

    def latent_mask(self, mask: torch.Tensor) -> torch.Tensor:
        vae = self.component_config("vae")
        return latent_mask(mask, spatial=int(vae["scale_factor_spatial"]), temporal=int(vae["scale_factor_temporal"]))

    # --- training -------------------------------------------------------------------------------
    def load_diffusion_model(self, device: torch.device | None = None) -> torch.nn.Module:
        if self.transformer is None:
            self.check_supported()
            parts = self._load(["transformer", "scheduler"], device or "cpu")
            self.transformer, self.scheduler = parts.transformer, parts.scheduler
            if self.scheduler.config.get("prediction_type") != "flow_prediction":
                raise ModelLoadError(f"{self.pretrained} has a {self.scheduler.config.get('prediction_type')} "
                                     f"scheduler; stage II expects Wan's flow prediction")
            self._attach_lora()
        return self.transformer

    def training_pair(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> DiffusionPair:
        transformer, sched = self.transformer, self.scheduler
        if transformer is None:
            raise RuntimeError("the diffusion model is not loaded; call load_diffusion_model() first")
        device = batch["video_mean"].device
        mean, logvar = batch["video_mean"], batch["video_logvar"]                    # [B, F, C, h, w]
        eps = torch.randn(mean.shape, generator=generator, device=device)
        x0 = normalize_latents(mean + torch.exp(0.5 * logvar.clamp(-30, 20)) * eps, self.component_config("vae"),
                               channel_dim=2)
        b = x0.shape[0]
        u = torch.sigmoid(torch.randn(b, generator=generator, device=device))
        sigma = shifted_sigmas(u, float(sched.config.get("flow_shift") or 1.0)).view(b, 1, 1, 1, 1)
        noise = torch.randn(x0.shape, generator=generator, device=device)
        noisy = (1 - sigma) * x0 + sigma * noise
        timestep = sigma.flatten() * sched.config.num_train_timesteps
        dtype = next(transformer.parameters()).dtype if not torch.is_autocast_enabled(device.type) else noisy.dtype
        model_in = torch.cat([noisy, batch["condition"]], dim=2).permute(0, 2, 1, 3, 4)  # [B, C', F, h, w]
        velocity = transformer(hidden_states=model_in.to(dtype), timestep=timestep,
                               encoder_hidden_states=batch["prompt_embeds"].to(dtype),
                               encoder_hidden_states_image=batch["image_tokens"].to(dtype), return_dict=False)[0]
        return DiffusionPair(prediction=velocity.float().permute(0, 2, 1, 3, 4), target=noise - x0,
                             weight=torch.ones(b, device=device))

    def _lora_pipeline(self) -> type:
        from diffusers import WanImageToVideoPipeline

        return WanImageToVideoPipeline
