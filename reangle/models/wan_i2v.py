"""Wan image-to-video as a :class:`~reangle.models.spec.ModelSpec` (stage II): Wan2.1-I2V,
Wan2.2-TI2V-5B and Wan2.2-I2V-A14B, told apart by their loaded configs
(:func:`~reangle.models.wan.wan_conditioning`, :func:`~reangle.models.wan.expert_boundary`).

Cached per view (``encode_video``), float32, latent frames first like CogVideoX's cache:

* ``video_mean``, ``video_logvar`` ``[F, z, h, w]``: the VAE posterior of the clip in [-1, 1];
* ``condition``: deterministic, so cached once. Wan2.1-I2V (``channels``): ``[F, 4 + z, h, w]``,
  4 first-frame mask channels and the normalised VAE mode of the first frame followed by black
  frames (:func:`~reangle.models.wan.wan_image_condition`). Wan2.2-TI2V (``first_latent``):
  ``[1, z, h, w]``, the normalised VAE mode of the first frame encoded alone
  (:func:`~reangle.models.wan.wan_first_latent`), as the pipeline's ``prepare_latents`` with
  ``expand_timesteps`` encodes it;
* ``image_tokens`` ``[T, D]`` (Wan2.1-I2V only): CLIP's penultimate hidden states of the first frame.

Per prompt: ``prompt_embeds`` ``[512, D]`` from UMT5, zero past the prompt's tokens.

Objective (rectified flow, as Wan trains it). A training step draws from its generator, in
this order: a sample ``z`` of the clip's posterior, normalised per channel to
``x0 = (z - latents_mean) / latents_std`` (the VAE config's statistics, as the pipeline
normalises); ``u ~ logit-normal(0, 1)`` per sample (the Wan report, arXiv 2503.20314, flow
matching paragraph: t "sampled from a logit-normal distribution", as SD3, arXiv 2403.03206,
Sec. 3.1);
the noise ``eps``. The noise level is ``u`` shifted by the model scheduler's ``flow_shift``
``s`` (3.0 for Wan2.1-480P, 5.0 for Wan2.2-TI2V-5B), ``sigma = s u / (1 + (s - 1) u)`` (SD3
Eq. 23, the same shift diffusers' flow schedulers and Wan's samplers apply), the input
``x_t = (1 - sigma) x0 + sigma eps`` at timestep ``1000 sigma``, and the network's output is
compared with the velocity ``eps - x0`` (diffusers' ``flow_prediction`` convention: its sampler
steps ``x + (sigma' - sigma) v``; the Wan report writes ``v = x1 - x0`` with ``x1`` the noise, and
DiffSynth-Studio's Wan trainer uses ``target = noise - sample``, its issue #1014). The weight is
1. CogVideoX's first-frame pixel noise and image dropout do not apply: Wan conditions on the
clean first frame.

Wan2.2-TI2V (``first_latent``) conditions inside the latents instead of beside them: latent frame
0 of ``x_t`` is replaced by the clean cached condition and its tokens get timestep 0, the others
``1000 sigma`` (per-token timesteps ``[B, seq_len]``) - exactly what diffusers'
``WanImageToVideoPipeline`` does at every sampling step with ``expand_timesteps=True``
(``(1 - first_frame_mask) * condition + first_frame_mask * latents`` and
``(first_frame_mask[0][0][:, ::2, ::2] * t).flatten()``), itself Wan2.2's ``wan/textimage2video.py``
(``i2v``: ``masks_like`` and ``temp_ts``). Wan2.2's training code is not released; the same
replacement at training time, with latent frame 0 left out of the loss, is DiffSynth-Studio's
``FlowMatchSFTLoss`` (``diffsynth/diffusion/loss.py``: ``latents[:, :, 0:1] = first_frame_latents``,
then ``noise_pred[:, :, 1:]`` against ``training_target[:, :, 1:]``). Here frame 0 is left out
through :attr:`~reangle.models.spec.DiffusionPair.trained` (False on latent frame 0), which the
loss ANDs with the visibility mask, so the prediction there gets no gradient.

Wan2.2-I2V-A14B (two experts, Wan2.1's ``channels`` condition without CLIP tokens) gets one LoRA
per expert, each trained on the timesteps its expert serves at sampling time: the step draws
sigma exactly as above, and the timestep ``1000 sigma`` picks the expert of each sample
(:func:`~reangle.models.wan.high_noise`: ``transformer`` at ``t >= boundary_ratio * 1000``,
else ``transformer_2``); only that expert runs, so only its LoRA gets a gradient (the other's
stays ``None`` and AdamW leaves it, moments included, untouched). With the logit-normal draw
and the scheduler's shift ``s`` the high-noise expert gets ``P(sigma >= r) = P(u >= r / (s -
(s - 1) r))`` of the samples (:func:`high_noise_share`). The trainer holds both as one module
(:class:`WanExperts`); the export writes the high-noise LoRA as the usual file and the
low-noise one as :data:`~reangle.models.lora.LORA_FILE_2`.
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
from reangle.models.storage import compute_dtype
from reangle.models.wan import (TEXT_LENGTH, WAN21_I2V_480P, WAN22_I2V_A14B, WAN22_TI2V_5B, ModelLoadError,
                                WanTinyConfig, encode_wan_image, encode_wan_prompts, expert_boundary,
                                first_latent_timesteps, high_noise, load_wan_components, model_parts,
                                normalize_latents, read_model_index, resolve_wan, wan_conditioning, wan_first_latent,
                                wan_image_condition, with_first_latent)


LOW_NOISE_PREFIX = "transformer_2."   # the low-noise expert's keys in a two-expert lora_state()


def shifted_sigmas(u: torch.Tensor, shift: float) -> torch.Tensor:
    """Noise levels ``s u / (1 + (s - 1) u)`` of uniform-or-not ``u`` in [0, 1] (SD3 Eq. 23)."""
    return shift * u / (1 + (shift - 1) * u)


def high_noise_share(boundary_ratio: float, shift: float) -> float:
    """The fraction of training steps whose sigma (logit-normal ``u``, shifted by ``shift``) is at least
    ``boundary_ratio``: ``P(u >= r / (s - (s - 1) r))`` = ``Phi(-logit(that))`` for a standard normal."""
    u = torch.tensor(boundary_ratio / (shift - (shift - 1) * boundary_ratio), dtype=torch.float64)
    return float(0.5 * torch.erfc(torch.logit(u) / 2 ** 0.5))


class WanExperts(torch.nn.Module):
    """The two experts of a Wan2.2-A14B as the one module the trainer holds: ``transformer`` (high
    noise) and ``transformer_2`` (low noise), each with its LoRA."""

    def __init__(self, transformer: torch.nn.Module, transformer_2: torch.nn.Module):
        super().__init__()
        self.transformer, self.transformer_2 = transformer, transformer_2


class WanI2V(PipelineSpec):
    """Wan image-to-video with a LoRA on its attention projections (see the module docstring)."""

    SPEC_ID = "wan-i2v/1"

    @classmethod
    def frame_grid(cls, model: Mapping[str, Any]) -> FrameGrid:
        """Wan's video sizes: ``1 + 4k`` frames (the causal VAE keeps the first frame alone); height
        and width multiples of the VAE's spatial factor times the 2 x 2 patch: 16 px for Wan2.1 and
        Wan2.2-I2V-A14B (the Wan2.1 VAE), 32 px for Wan2.2-TI2V-5B's 16x VAE; a local folder's
        ``vae/`` and ``transformer/config.json`` say which, the tiny model its
        ``model.wan_tiny.variant``. Reads no weights."""
        pretrained = str(model["pretrained"])
        if pretrained == "tiny":
            return FrameGrid(WanTinyConfig.from_mapping(model.get("wan_tiny")).size_multiple, 4)
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

    def _reset_models(self) -> None:
        super()._reset_models()
        self.transformer_2 = None
        self.net: torch.nn.Module | None = None

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

    def _read_model_index(self) -> dict:
        if "model_index" not in self._config_cache:
            self._config_cache["model_index"] = read_model_index(self.source, self.revision)
        return self._config_cache["model_index"]

    def boundary_ratio(self) -> float | None:
        """Where a two-expert model's low-noise ``transformer_2`` takes over (``None``: one transformer)."""
        return expert_boundary(self._read_model_index(), self.pretrained)

    def conditioning(self) -> str:
        """``channels`` (Wan2.1-I2V) or ``first_latent`` (Wan2.2-TI2V), from the transformer and VAE configs."""
        return wan_conditioning(self.component_config("transformer"), self.component_config("vae"))

    def takes_image_tokens(self) -> bool:
        """Whether the transformer takes CLIP image tokens (Wan2.1-I2V)."""
        return self.component_config("transformer").get("image_dim") is not None

    def check_supported(self) -> None:
        """A Wan2.1-I2V (channel condition and CLIP tokens), Wan2.2-TI2V (first-latent condition, one
        transformer) or Wan2.2-I2V-A14B (channel condition without CLIP tokens, two experts) layout."""
        two_experts = self.boundary_ratio() is not None
        if two_experts and self.conditioning() != "channels":
            raise ModelLoadError(f"{self.pretrained} is a two-expert Wan with the first-latent condition (e.g. "
                                 f"Wan2.2-TI2V-A14B), which stage II does not train; use {WAN22_I2V_A14B}")
        if self.conditioning() == "channels" and self.takes_image_tokens() == two_experts:
            what = "a two-expert model whose transformers take" if two_experts else "one transformer without"
            raise ModelLoadError(f"{self.pretrained} is {what} CLIP image tokens beside the Wan2.1-I2V-style channel "
                                 f"condition, a layout stage II does not know; use {WAN21_I2V_480P}, {WAN22_TI2V_5B} "
                                 f"or {WAN22_I2V_A14B}")

    def fingerprint(self, kind: str) -> str:
        video = ["vae", "image_encoder"] if self.takes_image_tokens() else ["vae"]
        return self._fingerprint(kind, {"video": video, "text": ["text_encoder"]}[kind])

    # --- caching --------------------------------------------------------------------------------
    def load_encoders(self, device: torch.device) -> None:
        self.check_supported()
        parts = [p for p in model_parts(self.component_config("transformer"))
                 if p not in ("transformer", "transformer_2", "scheduler")]
        self.encoders = self._load(parts, device)
        for part in ("text_encoder", "image_encoder", "vae"):
            if getattr(self.encoders, part) is not None:
                getattr(self.encoders, part).requires_grad_(False)

    def cached_video_tensors(self) -> tuple[str, ...]:
        return ("video_mean", "video_logvar", "condition") + (("image_tokens",) if self.takes_image_tokens() else ())

    @torch.no_grad()
    def encode_video(self, frames: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        enc = self._require_encoders()
        vae = enc.vae
        clip = (frames.to(vae.device, torch.float32) * 2 - 1).permute(1, 0, 2, 3).unsqueeze(0)  # [1, 3, N, H, W]
        dist = vae.encode(clip.to(vae.dtype)).latent_dist
        if self.conditioning() == "first_latent":
            condition = wan_first_latent(vae, clip[:, :, 0])
        else:
            condition = wan_image_condition(vae, clip[:, :, 0], frames.shape[0])
        out = {"video_mean": dist.mean[0].permute(1, 0, 2, 3).float().cpu(),
               "video_logvar": dist.logvar[0].permute(1, 0, 2, 3).float().cpu(),
               "condition": condition[0].permute(1, 0, 2, 3).float().cpu()}
        if self.takes_image_tokens():
            out["image_tokens"] = encode_wan_image(enc.image_processor, enc.image_encoder, frames[:1])[0].float().cpu()
        return out

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
        """The transformer with its LoRA; for two experts a :class:`WanExperts` of both, each with one."""
        if self.net is None:
            self.check_supported()
            two_experts = self.boundary_ratio() is not None
            parts = self._load(["transformer", "transformer_2", "scheduler"] if two_experts
                               else ["transformer", "scheduler"], device or "cpu")
            self.transformer, self.transformer_2, self.scheduler = parts.transformer, parts.transformer_2, \
                parts.scheduler
            if self.scheduler.config.get("prediction_type") != "flow_prediction":
                raise ModelLoadError(f"{self.pretrained} has a {self.scheduler.config.get('prediction_type')} "
                                     f"scheduler; stage II expects Wan's flow prediction")
            self._attach_lora()
            if two_experts:
                self._attach_lora(self.transformer_2)
            self.net = WanExperts(self.transformer, self.transformer_2) if two_experts else self.transformer
        return self.net

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
        dtype = compute_dtype(transformer) if not torch.is_autocast_enabled(device.type) else noisy.dtype
        trained = None
        if self.conditioning() == "first_latent":
            model_in = with_first_latent(noisy, batch["condition"], frame_dim=1).permute(0, 2, 1, 3, 4)
            frames, h, w = x0.shape[1], x0.shape[3], x0.shape[4]
            timestep = first_latent_timesteps(timestep, frames, h, w, tuple(transformer.config.patch_size[1:]))
            trained = torch.ones(b, frames, h, w, dtype=torch.bool, device=device)
            trained[:, 0] = False   # latent frame 0 is the given start frame, not a prediction
        else:
            model_in = torch.cat([noisy, batch["condition"]], dim=2).permute(0, 2, 1, 3, 4)  # [B, C', F, h, w]
        image = batch["image_tokens"].to(dtype) if self.takes_image_tokens() else None
        inputs = dict(hidden_states=model_in.to(dtype), timestep=timestep,
                      encoder_hidden_states=batch["prompt_embeds"].to(dtype), encoder_hidden_states_image=image)
        if self.transformer_2 is None:
            velocity = transformer(**inputs, return_dict=False)[0]
        else:
            high = high_noise(sigma.flatten() * sched.config.num_train_timesteps, self.boundary_ratio(),
                              sched.config.num_train_timesteps)
            velocity = self._expert_velocities(inputs, high)
        return DiffusionPair(prediction=velocity.float().permute(0, 2, 1, 3, 4), target=noise - x0,
                             weight=torch.ones(b, device=device), trained=trained)

    def _expert_velocities(self, inputs: dict[str, torch.Tensor | None], high: torch.Tensor) -> torch.Tensor:
        """Each sample's velocity from its expert (``high`` ``[B]`` bool: ``transformer``, else
        ``transformer_2``); an expert without samples does not run."""
        velocity = None
        for expert, rows in ((self.transformer, high), (self.transformer_2, ~high)):
            if not rows.any():
                continue
            out = expert(**{k: None if v is None else v[rows] for k, v in inputs.items()}, return_dict=False)[0]
            if velocity is None:
                velocity = out.new_zeros((high.shape[0], *out.shape[1:]))
            velocity = velocity.index_put((rows,), out)
        return velocity

    def lora_state(self) -> dict[str, torch.Tensor]:
        """The LoRA weights (peft keys); for two experts the low-noise expert's under ``transformer_2.``."""
        from reangle.models.lora import lora_state_dict

        state = super().lora_state()
        if self.transformer_2 is not None:
            state.update({f"{LOW_NOISE_PREFIX}{k}": v for k, v in lora_state_dict(self.transformer_2).items()})
        return state

    def save_lora(self, folder: str | Path, state: dict[str, torch.Tensor] | None = None) -> Path:
        """The LoRA file (for two experts: the high-noise one, and the low-noise one as ``LORA_FILE_2``)."""
        from reangle.models.lora import save_lora

        self._require_lora()
        state = self.lora_state() if state is None else state
        low = {k.removeprefix(LOW_NOISE_PREFIX): v for k, v in state.items() if k.startswith(LOW_NOISE_PREFIX)}
        high = {k: v for k, v in state.items() if not k.startswith(LOW_NOISE_PREFIX)}
        return save_lora(folder, high, self.lora_config, pipeline=self._lora_pipeline(), state_2=low or None)

    def _lora_pipeline(self) -> type:
        from diffusers import WanImageToVideoPipeline

        return WanImageToVideoPipeline
