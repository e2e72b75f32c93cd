"""Backbone families (``model.family``): their stage II spec and their sampler.

``cogvideox``: CogVideoX image-to-video (:mod:`reangle.models.cogvideox_i2v`);
``wan``: Wan image-to-video, Wan2.1-I2V, Wan2.2-TI2V-5B and the two-expert Wan2.2-I2V-A14B
(:mod:`reangle.models.wan_i2v`). The frame
counts and sizes each takes are its spec's ``frame_grid``, checked when the config is loaded.
"""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from reangle.config import ConfigError

FAMILIES = ("cogvideox", "wan")


def check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ConfigError(f"unknown model.family {family!r}; use one of {FAMILIES}")


def _plain(node):
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def build_spec(cfg: DictConfig):
    """The stage II :class:`~reangle.models.spec.ModelSpec` of ``cfg.model.family``."""
    m, t, lora = cfg.model, cfg.train, cfg.lora
    common = dict(revision=m.revision, cache_dir=cfg.run.cache_dir, weights_dtype=m.weights_dtype,
                  lora_rank=lora.rank, lora_alpha=lora.alpha, lora_targets=list(lora.targets), lora_dropout=lora.dropout,
                  gradient_checkpointing=t.gradient_checkpointing)
    if m.family == "wan":
        from reangle.models.wan_i2v import WanI2V

        spec = WanI2V(m.pretrained, tiny=_plain(m.wan_tiny), **common)
    else:
        from reangle.models.cogvideox_i2v import CogVideoXI2V

        spec = CogVideoXI2V(m.pretrained, tiny=_plain(m.tiny), image_noise_mean=t.image_noise_mean,
                            image_noise_std=t.image_noise_std, image_dropout=t.image_dropout,
                            image_condition=t.image_condition, **common)
    spec.storage_dtype = m.storage_dtype
    return spec


def spec_sampler(spec, scheduler_kind: str, device: torch.device, progress: bool = True):
    """A sampler over a spec's live transformer(s) (with their LoRA) and its loaded encoders."""
    from reangle.models.wan_i2v import WanI2V
    from reangle.sampling.sampler import CogVideoXSampler, make_scheduler

    enc = spec.encoders
    if isinstance(spec, WanI2V):
        return _wan_sampler(spec.transformer, spec.transformer_2, spec.boundary_ratio(), enc, spec.scheduler,
                            scheduler_kind, device, offload=False, progress=progress)
    return CogVideoXSampler(spec.transformer, enc.vae, make_scheduler(scheduler_kind, spec.scheduler),
                            enc.text_encoder, enc.tokenizer, device=device, progress=progress)


def _wan_sampler(transformer, transformer_2, boundary_ratio, parts, scheduler, scheduler_kind: str, device,
                 offload: bool, progress: bool):
    from reangle.sampling.wan import WanSampler

    if scheduler_kind != "model":
        raise ConfigError(f"sample.scheduler={scheduler_kind!r} is CogVideoX's; Wan samples with its own "
                          f"scheduler (sample.scheduler=model)")
    return WanSampler(transformer, parts.vae, scheduler, parts.text_encoder, parts.tokenizer,
                      image_processor=parts.image_processor, image_encoder=parts.image_encoder,
                      transformer_2=transformer_2, boundary_ratio=boundary_ratio, device=device, offload=offload,
                      progress=progress)


def load_sampler(cfg: DictConfig, lora: str | Path | None, device: torch.device, offload: bool, vae_tiling: bool,
                 scheduler_kind: str, progress: bool = True):
    """The sampler of ``cfg.model`` (all parts loaded) with ``lora`` attached (``None``: the base model; a
    two-expert Wan2.2-A14B also loads the low-noise expert's LoRA file next to it); the config's frame
    size was checked when it was loaded (``ModelSpec.frame_grid``)."""
    from reangle.models.cogvideox_i2v import DTYPES
    from reangle.models.lora import load_lora, second_expert_lora
    from reangle.models.storage import store_weights

    m = cfg.model
    where = "cpu" if offload else device
    if m.family == "wan":
        from diffusers.loaders.lora_pipeline import WanLoraLoaderMixin

        from reangle.models.wan import load_wan_components

        parts = load_wan_components(m.pretrained, None, tiny=_plain(m.wan_tiny), cache_dir=cfg.run.cache_dir,
                                    revision=m.revision, dtype=DTYPES[m.weights_dtype], device=where)
        if lora is not None:
            load_lora(parts.transformer, lora, loader=WanLoraLoaderMixin)
            if parts.transformer_2 is not None:
                load_lora(parts.transformer_2, second_expert_lora(lora), loader=WanLoraLoaderMixin)
        for expert in (parts.transformer, parts.transformer_2):  # after the LoRA (storage.py)
            if expert is not None:
                store_weights(expert, m.storage_dtype, DTYPES[m.weights_dtype])
        if vae_tiling:
            parts.vae.enable_tiling()
        return _wan_sampler(parts.transformer, parts.transformer_2, parts.boundary_ratio, parts, parts.scheduler,
                            scheduler_kind, device, offload, progress)
    from reangle.models.cogvideox import COMPONENTS, load_components
    from reangle.sampling.sampler import CogVideoXSampler, make_scheduler

    parts = load_components(m.pretrained, COMPONENTS, tiny=_plain(m.tiny), cache_dir=cfg.run.cache_dir,
                            revision=m.revision, dtype=DTYPES[m.weights_dtype], device=where)
    if lora is not None:
        load_lora(parts.transformer, lora)
    store_weights(parts.transformer, m.storage_dtype, DTYPES[m.weights_dtype])
    if vae_tiling:
        parts.vae.enable_tiling()
    return CogVideoXSampler(parts.transformer, parts.vae, make_scheduler(scheduler_kind, parts.scheduler),
                            parts.text_encoder, parts.tokenizer, device=device, offload=offload, progress=progress)
