"""CogVideoX image-to-video as a :class:`~reangle.models.spec.ModelSpec` (stage II).

Cached per view (``encode_video``), float32:

* ``video_mean``, ``video_logvar`` ``[F, 16, h, w]``: the VAE posterior of the clip in [-1, 1];
* ``image_condition="per_step"`` (default, the released code): ``first_frame_pm1``
  ``[3, 1, H, W]``, the clip's first frame in [-1, 1]. Each training step adds Gaussian pixel
  noise of a new sigma = exp(N(image_noise_mean, image_noise_std)) per sample and encodes it
  with the VAE, which then stays loaded on the training device
  (:meth:`CogVideoXI2V.load_training_encoders`; about 0.4 GB of bf16 weights for
  CogVideoX-5b-I2V plus the activations of encoding one frame);
* ``image_condition="cached"``: ``image_mean``, ``image_logvar`` ``[1, 16, h, w]``, the VAE
  posterior of the noised first frame, with sigma drawn once per view (every visit to a
  view sees the same noisy image; no VAE during training).

Per prompt (``encode_prompt``): ``prompt_embeds`` ``[L, D]`` from T5, padded to the
transformer's ``max_text_seq_length``.

A training step draws, from its generator and in this order: a sample of the clip's
posterior; the image latent (per step: sigma ``[B]``, the pixel noise, then a sample of the
posterior of the encoded noisy frame; cached: a sample of the cached posterior); the image
dropout; the timestep; the noise. Both latents are scaled by the VAE's ``scaling_factor``
(or divided, for VAEs with ``invert_scale_latents``); the image latent is zeroed with
probability ``image_dropout``, padded with zero frames to the clip length and concatenated
on channels with the noised clip latents; the transformer predicts the velocity ``v``, the
prediction is ``x0_hat = sqrt(a) z_t - sqrt(1 - a) v`` and the weight ``1 / (1 - a)`` with
``a = alphas_cumprod[t]``, ``t`` uniform over the training steps.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from reangle.data.latent_mask import latent_mask
from reangle.errors import InputError
from reangle.models.cogvideox import DEFAULT_CACHE, HUB_ID, TinyConfig, frame_grid, load_components, resolve_pretrained
from reangle.models.lora import DEFAULT_TARGETS
from reangle.models.spec import DiffusionPair, FrameGrid, PipelineSpec
from reangle.models.storage import compute_dtype
from reangle.training.loss import x0_from_velocity

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
IMAGE_CONDITIONS = ("per_step", "cached")


def _dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"unknown weight dtype {name!r}; use one of {sorted(DTYPES)}")
    return DTYPES[name]


def vae_factors(vae_config: Mapping[str, Any]) -> tuple[int, int]:
    """(spatial, temporal) compression of a CogVideoX VAE (8 and 4 for the released ones)."""
    return 2 ** (len(vae_config["block_out_channels"]) - 1), int(vae_config["temporal_compression_ratio"])


def encode_scale(vae_config: Mapping[str, Any]) -> float:
    """Factor applied to sampled VAE latents: ``scaling_factor``, or its inverse for VAEs
    with ``invert_scale_latents``."""
    factor = float(vae_config["scaling_factor"])
    return 1.0 / factor if vae_config.get("invert_scale_latents") else factor


def rotary_embedding(config: Mapping[str, Any], frames: int, height: int, width: int,
                     device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """CogVideoX 1.0 3D RoPE ``(cos, sin)`` for a latent grid of ``frames x height x width``
    (``None`` when the transformer has no rotary embeddings)."""
    from diffusers.models.embeddings import get_3d_rotary_pos_embed
    from diffusers.pipelines.cogvideo.pipeline_cogvideox_image2video import get_resize_crop_region_for_grid

    if not config["use_rotary_positional_embeddings"]:
        return None
    if config.get("patch_size_t"):
        raise NotImplementedError("CogVideoX 1.5 (patch_size_t) transformers are not supported yet")
    p = config["patch_size"]
    grid = (height // p, width // p)
    crops = get_resize_crop_region_for_grid(grid, config["sample_width"] // p, config["sample_height"] // p)
    return get_3d_rotary_pos_embed(embed_dim=config["attention_head_dim"], crops_coords=crops, grid_size=grid,
                                   temporal_size=frames, device=device)


class CogVideoXI2V(PipelineSpec):
    """CogVideoX image-to-video with a LoRA on its attention projections."""
    SPEC_ID = "cogvideox-i2v/1"

    @classmethod
    def frame_grid(cls, model: Mapping[str, Any]) -> FrameGrid:
        """:func:`reangle.models.cogvideox.frame_grid` of ``model.pretrained`` (and ``model.tiny``)."""
        return frame_grid(str(model["pretrained"]), model.get("tiny"))

    def __init__(self, pretrained: str = HUB_ID, *, tiny: Mapping[str, Any] | None = None, revision: str | None = None,
                 cache_dir: str = DEFAULT_CACHE, weights_dtype: str = "bf16", lora_rank: int = 128,
                 lora_alpha: float = 128, lora_targets: Sequence[str] = DEFAULT_TARGETS, lora_dropout: float = 0.0,
                 gradient_checkpointing: bool = True, image_noise_mean: float = -3.0, image_noise_std: float = 0.5,
                 image_dropout: float = 0.05, image_condition: str = "per_step"):
        if not 0.0 <= image_dropout <= 1.0:
            raise InputError(f"train.image_dropout must lie in [0, 1], got {image_dropout}")
        if image_condition not in IMAGE_CONDITIONS:
            raise InputError(f"unknown train.image_condition {image_condition!r}; use one of {IMAGE_CONDITIONS}")
        self.image_condition = image_condition
        self.pretrained, self.revision, self.cache_dir = pretrained, revision, cache_dir
        self.tiny = TinyConfig.from_mapping(tiny) if pretrained == "tiny" else None
        self.weights_dtype = _dtype(weights_dtype)
        self.lora = dict(rank=lora_rank, alpha=lora_alpha, targets=list(lora_targets), dropout=lora_dropout)
        self.gradient_checkpointing = gradient_checkpointing
        self.image_noise = (image_noise_mean, image_noise_std)
        self.image_dropout = image_dropout
        self.source = resolve_pretrained(pretrained, tiny=self.tiny, cache_dir=cache_dir)
        self.image_vae = None
        self._reset_models()

    # --- identity -----------------------------------------------------------------------------
    def _read_config(self, part: str, **kwargs) -> dict:
        from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel
        from transformers import T5Config

        if part == "text_encoder":
            return T5Config.from_pretrained(self.source, **kwargs).to_dict()
        cls = {"vae": AutoencoderKLCogVideoX, "transformer": CogVideoXTransformer3DModel}[part]
        return dict(cls.load_config(self.source, **kwargs))

    def fingerprint(self, kind: str) -> str:
        parts = {"video": ["vae"], "text": ["text_encoder", "transformer"]}[kind]
        extra = {"image_condition": self.image_condition,
                 **({"image_noise": self.image_noise} if self.image_condition == "cached" else {})} \
            if kind == "video" else {}
        return self._fingerprint(kind, parts, extra)

    @property
    def max_text_length(self) -> int:
        return int(self.component_config("transformer")["max_text_seq_length"])

    # --- caching --------------------------------------------------------------------------------
    def load_encoders(self, device: torch.device) -> None:
        # the VAE runs in float32 unless the weights are bf16 (CogVideoX's VAE is fine in bf16)
        self.encoders = load_components(self.pretrained, ["tokenizer", "text_encoder", "vae"], tiny=self.tiny,
                                        cache_dir=self.cache_dir, revision=self.revision,
                                        dtype=self.weights_dtype, device=device)
        self.encoders.vae.requires_grad_(False)
        self.encoders.text_encoder.requires_grad_(False)

    def cached_video_tensors(self) -> tuple[str, ...]:
        image = ("first_frame_pm1",) if self.image_condition == "per_step" else ("image_mean", "image_logvar")
        return ("video_mean", "video_logvar", *image)

    def _noisy_image_posterior(self, vae, first_pm1: torch.Tensor,
                               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """VAE posterior ``(mean, logvar)`` ``[B, 1, C, h, w]`` (float32) of first frames
        ``[B, 3, 1, H, W]`` in [-1, 1] plus Gaussian noise of sigma = exp(N(mu, std)) per frame."""
        b, device = first_pm1.shape[0], first_pm1.device
        mu, std = self.image_noise
        sigma = torch.exp(mu + std * torch.randn(b, generator=generator, device=generator.device)).to(device)
        noise = torch.randn(first_pm1.shape, generator=generator, device=generator.device).to(device)
        noisy = first_pm1 + sigma.view(b, 1, 1, 1, 1) * noise
        dist = vae.encode(noisy.to(vae.dtype)).latent_dist
        return dist.mean.permute(0, 2, 1, 3, 4).float(), dist.logvar.permute(0, 2, 1, 3, 4).float()

    @torch.no_grad()
    def encode_video(self, frames: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        vae = self._require_encoders().vae
        device, dtype = vae.device, vae.dtype
        clip = (frames.to(device, torch.float32) * 2 - 1).permute(1, 0, 2, 3).unsqueeze(0)  # [1, 3, N, H, W]
        dist = vae.encode(clip.to(dtype)).latent_dist
        mean, logvar = dist.mean[0].permute(1, 0, 2, 3), dist.logvar[0].permute(1, 0, 2, 3)  # [F, C, h, w]
        out = {"video_mean": mean.float().cpu(), "video_logvar": logvar.float().cpu()}
        first = clip[:, :, :1]
        if self.image_condition == "per_step":
            return {**out, "first_frame_pm1": first[0].cpu()}
        image_mean, image_logvar = self._noisy_image_posterior(vae, first, generator)
        return {**out, "image_mean": image_mean[0].cpu(), "image_logvar": image_logvar[0].cpu()}

    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> dict[str, torch.Tensor]:
        enc = self._require_encoders()
        ids = enc.tokenizer(prompt, padding="max_length", max_length=self.max_text_length, truncation=True,
                            add_special_tokens=True, return_tensors="pt").input_ids
        embeds = enc.text_encoder(ids.to(enc.text_encoder.device))[0][0]
        return {"prompt_embeds": embeds.float().cpu()}

    def latent_mask(self, mask: torch.Tensor) -> torch.Tensor:
        spatial, temporal = vae_factors(self.component_config("vae"))
        return latent_mask(mask, spatial=spatial, temporal=temporal)

    # --- training -------------------------------------------------------------------------------
    def load_diffusion_model(self, device: torch.device | None = None) -> torch.nn.Module:
        if self.transformer is None:
            parts = load_components(self.pretrained, ["transformer", "scheduler"], tiny=self.tiny,
                                    cache_dir=self.cache_dir, revision=self.revision, dtype=self.weights_dtype,
                                    device=device or "cpu")
            self.transformer, self.scheduler = parts.transformer, parts.scheduler
            if self.scheduler.config.prediction_type != "v_prediction":
                raise ValueError(f"{self.pretrained} has a {self.scheduler.config.prediction_type} scheduler; "
                                 f"stage II expects CogVideoX's v-prediction")
            self._attach_lora()
        return self.transformer

    def load_training_encoders(self, device: torch.device) -> None:
        """Per-step image condition: the VAE (frozen, ``weights_dtype``) on the training ``device``."""
        if self.image_condition != "per_step":
            return
        if self.image_vae is None:
            self.image_vae = load_components(self.pretrained, ["vae"], tiny=self.tiny, cache_dir=self.cache_dir,
                                             revision=self.revision, dtype=self.weights_dtype, device=device).vae
            self.image_vae.requires_grad_(False)
        self.image_vae.to(device)

    def unload_training_encoders(self) -> None:
        self.image_vae = None

    def _image_latents(self, batch: dict[str, torch.Tensor], generator: torch.Generator, sample) -> torch.Tensor:
        """``[B, 1, C, h, w]``: a sample of the image latent (see the module docstring)."""
        if self.image_condition == "cached":
            return sample(batch["image_mean"], batch["image_logvar"])
        if self.image_vae is None:
            raise RuntimeError("the per-step image condition needs the VAE; call load_training_encoders(device) first")
        with torch.no_grad():
            mean, logvar = self._noisy_image_posterior(self.image_vae, batch["first_frame_pm1"], generator)
        return sample(mean, logvar)

    def training_pair(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> DiffusionPair:
        transformer, sched = self.transformer, self.scheduler
        if transformer is None:
            raise RuntimeError("the diffusion model is not loaded; call load_diffusion_model() first")
        device = batch["video_mean"].device

        def sample(mean, logvar):
            eps = torch.randn(mean.shape, generator=generator, device=device)
            return (mean + torch.exp(0.5 * logvar.clamp(-30, 20)) * eps) * encode_scale(self.component_config("vae"))

        latents = sample(batch["video_mean"], batch["video_logvar"])          # [B, F, C, h, w]
        image = self._image_latents(batch, generator, sample)                 # [B, 1, C, h, w]
        b, f = latents.shape[:2]
        keep = torch.rand(b, generator=generator, device=device) >= self.image_dropout
        image = image * keep.view(b, 1, 1, 1, 1).to(image.dtype)
        image = torch.cat([image, image.new_zeros(b, f - 1, *image.shape[2:])], dim=1)
        t = torch.randint(0, sched.config.num_train_timesteps, (b,), generator=generator, device=device)
        noise = torch.randn(latents.shape, generator=generator, device=device)
        noisy = sched.add_noise(latents, noise, t)
        config = transformer.config
        rope = rotary_embedding(config, f, latents.shape[-2], latents.shape[-1], device)
        ofs = None if config.ofs_embed_dim is None else latents.new_full((b,), 2.0)
        dtype = compute_dtype(transformer) if not torch.is_autocast_enabled(device.type) else noisy.dtype
        velocity = transformer(hidden_states=torch.cat([noisy, image], dim=2).to(dtype),
                               encoder_hidden_states=batch["prompt_embeds"].to(dtype), timestep=t, ofs=ofs,
                               image_rotary_emb=rope, return_dict=False)[0]
        a = sched.alphas_cumprod.to(device)[t].float()
        return DiffusionPair(prediction=x0_from_velocity(velocity.float(), noisy, a), target=latents,
                             weight=1.0 / (1.0 - a))

    def _lora_pipeline(self) -> type:
        from diffusers import CogVideoXImageToVideoPipeline

        return CogVideoXImageToVideoPipeline
