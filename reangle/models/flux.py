"""FLUX.1-dev with its inpainting ControlNet, or FLUX.1-Fill, from a hub id, a local folder or a tiny config.

Public API::

    load_flux(pretrained, controlnet, *, tiny=None, cache_dir=..., dtype=..., device=...) -> FluxComponents
    load_flux_fill(pretrained, fill, *, tiny=None, ...) -> FluxFillPipeline  # FLUX parts + the Fill transformer
    load_fill_transformer(source, ...) -> FluxTransformer2DModel           # in_channels 384, out_channels 64
    fill_transformer_config() -> dict                 # black-forest-labs/FLUX.1-Fill-dev's transformer
    load_fast_decoder(source, ...) -> AutoencoderTiny  # FLUX latents, for scoring (taef1 or "tiny")
    InpaintControlNet                                 # FluxControlNetModel + mask channels (alimama Beta)
    FluxTinyConfig                                    # sizes of the tiny random FLUX
    beta_controlnet_config() -> dict                  # alimama-creative/FLUX.1-dev-Controlnet-Inpainting-Beta
    build_controlnet_on_meta(config) -> InpaintControlNet (no memory)

``pretrained`` is ``black-forest-labs/FLUX.1-dev`` (or any folder in its diffusers layout)
or ``"tiny"``; ``controlnet`` is the ControlNet's hub id or folder, or ``"tiny"`` (the
``controlnet/`` subfolder of the tiny FLUX folder). ``"tiny"`` writes a random model of
:class:`FluxTinyConfig` sizes into ``cache_dir/models/flux-tiny-<hash>`` once (atomically)
and then loads it like any local folder: a FLUX transformer, a 16-channel AutoencoderKL
with FLUX's shift/scale, a CLIP text encoder with a character-level BPE tokenizer, a T5
encoder with the small tokenizer of :mod:`reangle.models.cogvideox`, FLUX.1-dev's
scheduler config, and an :class:`InpaintControlNet` whose output layers are random (not
zero) so the control signal matters in tests. ``fill="tiny"`` is a random FLUX transformer of
the same sizes with the Fill input width, written once into ``cache_dir/models/flux-fill-tiny-<hash>/transformer``.

FLUX.1-Fill conditions by channel concatenation: the transformer's input per token is the packed
noisy latents (64), the packed masked-image latents (64) and the packed mask (256: the
full-resolution mask unshuffled 8 x 8 per latent pixel, then packed 2 x 2), 384 channels in,
64 out. The text encoders, VAE and scheduler are FLUX.1-dev's (FLUX.1-Fill-dev ships the same).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from diffusers import FluxControlNetModel
from diffusers.configuration_utils import register_to_config

from reangle.models.cogvideox import (DEFAULT_CACHE, TINY_CHARS, ModelLoadError, folder_or_hub_id,
                                      publish_folder_once, sizes_from_mapping, tiny_t5_tokenizer)
from reangle.utils import fingerprint, seeded

FLUX_HUB_ID = "black-forest-labs/FLUX.1-dev"
CONTROLNET_HUB_ID = "alimama-creative/FLUX.1-dev-Controlnet-Inpainting-Beta"
FILL_HUB_ID = "black-forest-labs/FLUX.1-Fill-dev"
LATENT_CHANNELS = 64             # FLUX's 16 VAE channels packed 2 x 2
FILL_MASK_CHANNELS = 8 * 8 * 4   # the pixel mask unshuffled 8 x 8, packed 2 x 2
FILL_IN_CHANNELS = 2 * LATENT_CHANNELS + FILL_MASK_CHANNELS  # 384
PIPELINE_PARTS = ("scheduler", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "transformer")
MASK_CHANNELS = 4   # the mask (1 channel) packed 2 x 2

# The scheduler of black-forest-labs/FLUX.1-dev (scheduler/scheduler_config.json).
SCHEDULER_CONFIG = {"base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 4096, "max_shift": 1.15,
                    "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True}


class InpaintControlNet(FluxControlNetModel):
    """FLUX ControlNet whose control input carries ``extra_condition_channels`` mask channels.

    The control signal (B, L, in_channels + extra) is the packed masked-image latents plus
    the packed mask; only ``controlnet_x_embedder`` is wider (and zero-initialised, as a
    fresh ControlNet's); the forward is diffusers'.
    """

    @register_to_config
    def __init__(self, patch_size: int = 1, in_channels: int = 64, num_layers: int = 19, num_single_layers: int = 38,
                 attention_head_dim: int = 128, num_attention_heads: int = 24, joint_attention_dim: int = 4096,
                 pooled_projection_dim: int = 768, guidance_embeds: bool = False,
                 axes_dims_rope: list[int] = [16, 56, 56], extra_condition_channels: int = MASK_CHANNELS,
                 num_mode: int | None = None, conditioning_embedding_channels: int | None = None):
        if conditioning_embedding_channels is not None:
            raise ValueError("an inpainting ControlNet takes packed latents as control input; "
                             "conditioning_embedding_channels (a pixel-space hint encoder) must be None")
        super().__init__(patch_size=patch_size, in_channels=in_channels, num_layers=num_layers,
                         num_single_layers=num_single_layers, attention_head_dim=attention_head_dim,
                         num_attention_heads=num_attention_heads, joint_attention_dim=joint_attention_dim,
                         pooled_projection_dim=pooled_projection_dim, guidance_embeds=guidance_embeds,
                         axes_dims_rope=list(axes_dims_rope), num_mode=num_mode)
        self.controlnet_x_embedder = torch.nn.Linear(in_channels + extra_condition_channels, self.inner_dim)
        torch.nn.init.zeros_(self.controlnet_x_embedder.weight)
        torch.nn.init.zeros_(self.controlnet_x_embedder.bias)

    @property
    def control_channels(self) -> int:
        """Width of the control signal: latent channels + mask channels (68 for FLUX)."""
        return self.config.in_channels + self.config.extra_condition_channels


def beta_controlnet_config() -> dict[str, Any]:
    """The config of alimama-creative/FLUX.1-dev-Controlnet-Inpainting-Beta (6 double blocks, no single)."""
    return {"patch_size": 1, "in_channels": 64, "num_layers": 6, "num_single_layers": 0, "attention_head_dim": 128,
            "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768,
            "guidance_embeds": True, "axes_dims_rope": [16, 56, 56], "extra_condition_channels": MASK_CHANNELS}


def build_controlnet_on_meta(config: Mapping[str, Any] | None = None) -> InpaintControlNet:
    """An :class:`InpaintControlNet` of ``config`` (default: the Beta's) on the meta device."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=True):
        return InpaintControlNet.from_config(dict(config or beta_controlnet_config()))


@dataclass
class FluxTinyConfig:
    """Sizes of the tiny random FLUX (rope axes must sum to ``attention_head_dim``)."""

    seed: int = 0
    num_layers: int = 1
    num_single_layers: int = 1
    controlnet_layers: int = 1
    num_attention_heads: int = 2
    attention_head_dim: int = 16
    axes_dims_rope: list[int] = field(default_factory=lambda: [4, 6, 6])
    text_dim: int = 32
    vae_channels: list[int] = field(default_factory=lambda: [8, 8, 16, 16])
    max_text_length: int = 32

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | "FluxTinyConfig" | None) -> "FluxTinyConfig":
        return sizes_from_mapping(cls, values)


def _tiny_clip_tokenizer(max_length: int = 77):
    """A character-level CLIP BPE tokenizer (no merges) over the tiny character set."""
    from transformers import CLIPTokenizer

    chars = sorted(set(TINY_CHARS.lower()) | set(TINY_CHARS))
    tokens = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[], model_max_length=max_length)


def _tiny_transformer_dims(cfg: FluxTinyConfig) -> dict[str, Any]:
    """The tiny FLUX transformer's widths (shared by the transformer, the ControlNet and the Fill transformer)."""
    return dict(patch_size=1, in_channels=LATENT_CHANNELS, attention_head_dim=cfg.attention_head_dim,
                num_attention_heads=cfg.num_attention_heads, joint_attention_dim=cfg.text_dim,
                pooled_projection_dim=cfg.text_dim, guidance_embeds=True, axes_dims_rope=list(cfg.axes_dims_rope))


def _build_tiny(cfg: FluxTinyConfig):
    """Random tiny FLUX pipeline, ControlNet and AutoencoderTiny (16 latent channels, like taef1), not saved."""
    from diffusers import (AutoencoderKL, AutoencoderTiny, FlowMatchEulerDiscreteScheduler, FluxPipeline,
                           FluxTransformer2DModel)
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    if sum(cfg.axes_dims_rope) != cfg.attention_head_dim:
        raise ModelLoadError(f"tiny FLUX axes_dims_rope {cfg.axes_dims_rope} must sum to attention_head_dim "
                             f"{cfg.attention_head_dim}")
    tokenizer = _tiny_clip_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.text_dim, intermediate_size=2 * cfg.text_dim,
        num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=77, projection_dim=cfg.text_dim,
        bos_token_id=0, eos_token_id=1, pad_token_id=1))
    tokenizer_2 = tiny_t5_tokenizer(cfg.max_text_length)
    text_encoder_2 = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer_2), d_model=cfg.text_dim, d_kv=8, d_ff=2 * cfg.text_dim, num_layers=1,
        num_heads=max(1, cfg.text_dim // 8), relative_attention_num_buckets=8, relative_attention_max_distance=32))
    levels = len(cfg.vae_channels)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=tuple(cfg.vae_channels),
                        down_block_types=("DownEncoderBlock2D",) * levels,
                        up_block_types=("UpDecoderBlock2D",) * levels,
                        layers_per_block=1, norm_num_groups=min(4, min(cfg.vae_channels)), use_quant_conv=False,
                        use_post_quant_conv=False, shift_factor=0.1159, scaling_factor=0.3611)
    dims = _tiny_transformer_dims(cfg)
    transformer = FluxTransformer2DModel(num_layers=cfg.num_layers, num_single_layers=cfg.num_single_layers, **dims)
    controlnet = InpaintControlNet(num_layers=cfg.controlnet_layers, num_single_layers=0, **dims)
    for layer in [controlnet.controlnet_x_embedder, *controlnet.controlnet_blocks]:  # random, not zero
        torch.nn.init.normal_(layer.weight, std=0.05)
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG), vae=vae,
                        text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2,
                        tokenizer_2=tokenizer_2, transformer=transformer)
    fast_decoder = AutoencoderTiny(latent_channels=16, encoder_block_out_channels=(8,) * levels,
                                   decoder_block_out_channels=(8,) * levels, num_encoder_blocks=(1,) * levels,
                                   num_decoder_blocks=(1,) * levels)
    return pipe, controlnet, fast_decoder


def materialize_tiny_flux(tiny: FluxTinyConfig | Mapping[str, Any] | None,
                          cache_dir: str | Path = DEFAULT_CACHE) -> Path:
    """Write the tiny FLUX (+ ``controlnet/``, ``fast_decoder/``) into ``cache_dir/models/flux-tiny-<hash>``
    unless it is there; returns the folder."""
    cfg = FluxTinyConfig.from_mapping(tiny)

    def write(staging: Path) -> None:
        with seeded(cfg.seed):
            pipe, controlnet, fast_decoder = _build_tiny(cfg)
        pipe.save_pretrained(staging, safe_serialization=True)
        controlnet.save_pretrained(staging / "controlnet", safe_serialization=True)
        fast_decoder.save_pretrained(staging / "fast_decoder", safe_serialization=True)
        (staging / "tiny_config.json").write_text(json.dumps(asdict(cfg), indent=1))

    key = fingerprint({"parts": [*PIPELINE_PARTS, "controlnet", "fast_decoder"], **asdict(cfg)})
    return publish_folder_once(Path(cache_dir) / "models" / f"flux-tiny-{key}", write)


def fill_transformer_config() -> dict[str, Any]:
    """The transformer config of black-forest-labs/FLUX.1-Fill-dev (FLUX.1-dev's, 384 channels in, 64 out)."""
    return {"patch_size": 1, "in_channels": FILL_IN_CHANNELS, "out_channels": LATENT_CHANNELS, "num_layers": 19,
            "num_single_layers": 38, "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 4096,
            "pooled_projection_dim": 768, "guidance_embeds": True, "axes_dims_rope": [16, 56, 56]}


def materialize_tiny_fill(tiny: FluxTinyConfig | Mapping[str, Any] | None,
                          cache_dir: str | Path = DEFAULT_CACHE) -> Path:
    """Write a random Fill transformer of the tiny FLUX's sizes into
    ``cache_dir/models/flux-fill-tiny-<hash>/transformer`` unless it is there; returns the folder."""
    from diffusers import FluxTransformer2DModel

    cfg = FluxTinyConfig.from_mapping(tiny)

    def write(staging: Path) -> None:
        dims = _tiny_transformer_dims(cfg) | {"in_channels": FILL_IN_CHANNELS, "out_channels": LATENT_CHANNELS}
        with seeded(cfg.seed):
            transformer = FluxTransformer2DModel(num_layers=cfg.num_layers, num_single_layers=cfg.num_single_layers,
                                                 **dims)
        transformer.save_pretrained(staging / "transformer", safe_serialization=True)
        (staging / "tiny_config.json").write_text(json.dumps(asdict(cfg), indent=1))

    key = fingerprint({"parts": ["fill_transformer"], **asdict(cfg)})
    return publish_folder_once(Path(cache_dir) / "models" / f"flux-fill-tiny-{key}", write)


@dataclass
class FluxComponents:
    """The loaded FLUX parts, the ControlNet, and where they came from."""

    source: str
    controlnet_source: str
    pipeline: Any          # a diffusers FluxPipeline (text encoders, VAE, transformer, scheduler)
    controlnet: InpaintControlNet


def load_controlnet(source: str, subfolder: str | None = None, *, dtype: torch.dtype = torch.float32,
                    device: str | torch.device = "cpu") -> InpaintControlNet:
    """An :class:`InpaintControlNet` from a folder or hub id; one clear error when its input width is not 64 + 4."""
    kwargs: dict[str, Any] = {"dtype": dtype}
    if subfolder:
        kwargs["subfolder"] = subfolder
    try:
        model = InpaintControlNet.from_pretrained(source, **kwargs)
    except (OSError, ValueError, RuntimeError) as exc:
        if "controlnet_x_embedder" in str(exc):
            raise ModelLoadError(
                f"the ControlNet at {source!r} is not an inpainting ControlNet: its controlnet_x_embedder input width "
                f"does not match {InpaintControlNet.__name__}'s latent + mask channels (64 + 4 for FLUX); use "
                f"{CONTROLNET_HUB_ID} or a checkpoint of the same layout") from None
        raise ModelLoadError(f"cannot load the inpainting ControlNet from {source!r}: {exc}") from exc
    return model.to(device).eval()


def load_fast_decoder(source: str, *, tiny: FluxTinyConfig | Mapping[str, Any] | None = None,
                      cache_dir: str | Path = DEFAULT_CACHE, dtype: torch.dtype = torch.float32,
                      device: str | torch.device = "cpu"):
    """An ``AutoencoderTiny`` with FLUX's latent layout (e.g. ``madebyollin/taef1``), a folder, or ``"tiny"``."""
    from diffusers import AutoencoderTiny

    if source == "tiny":
        root, kwargs = str(materialize_tiny_flux(tiny, cache_dir)), {"subfolder": "fast_decoder"}
    else:
        root, kwargs = folder_or_hub_id(source, "madebyollin/taef1", "inpaint.fast_decoder"), {}
    try:
        model = AutoencoderTiny.from_pretrained(root, dtype=dtype, **kwargs)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot load the fast decoder from {source!r}: {exc}") from exc
    if model.config.latent_channels != 16:
        raise ModelLoadError(f"the fast decoder {source!r} has {model.config.latent_channels} latent channels; FLUX "
                             f"needs 16 (use madebyollin/taef1)")
    return model.to(device).eval()


def load_flux(pretrained: str = FLUX_HUB_ID, controlnet: str = CONTROLNET_HUB_ID, *,
              tiny: FluxTinyConfig | Mapping[str, Any] | None = None, cache_dir: str | Path = DEFAULT_CACHE,
              dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu") -> FluxComponents:
    """FLUX (``pretrained``: hub id, folder or ``"tiny"``) and its inpainting ``controlnet`` (same choices)."""
    from diffusers import FluxPipeline

    tiny_root = None
    if "tiny" in (pretrained, controlnet):
        tiny_root = str(materialize_tiny_flux(tiny, cache_dir))
    root = tiny_root if pretrained == "tiny" else folder_or_hub_id(pretrained, FLUX_HUB_ID, "inpaint.model")
    if controlnet == "tiny":
        control_root, subfolder = tiny_root, "controlnet"
    else:
        control_root, subfolder = folder_or_hub_id(controlnet, CONTROLNET_HUB_ID, "inpaint.controlnet"), None
    _check_pipeline_folder(root, PIPELINE_PARTS)
    net = load_controlnet(control_root, subfolder, dtype=dtype, device=device)
    pipe = _load_pipeline(FluxPipeline, root, dtype, device)
    return FluxComponents(source=root, controlnet_source=str(control_root), pipeline=pipe, controlnet=net)


def _check_pipeline_folder(root: str, parts: tuple[str, ...]) -> None:
    """One clear error when the local folder ``root`` lacks one of ``parts`` (hub ids are not checked)."""
    if Path(root).is_dir():
        absent = [p for p in parts if not (Path(root) / p).is_dir()]
        if absent:
            raise ModelLoadError(f"FLUX folder {root} has no subfolder(s) {absent}; it must hold the diffusers layout "
                                 f"of FLUX.1-dev (model_index.json, {', '.join(parts)})")


def _load_pipeline(pipeline_class, root: str, dtype: torch.dtype, device: str | torch.device, **parts):
    """``pipeline_class`` from ``root`` (``parts``: components given instead of loaded), in eval mode on ``device``."""
    try:
        pipe = pipeline_class.from_pretrained(root, dtype=dtype, **parts)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load FLUX from {root}: {exc}") from exc
    pipe.to(device)
    for part in (pipe.text_encoder, pipe.text_encoder_2, pipe.vae, pipe.transformer):
        part.eval()
    return pipe


def load_fill_transformer(source: str, *, tiny: FluxTinyConfig | Mapping[str, Any] | None = None,
                          cache_dir: str | Path = DEFAULT_CACHE, dtype: torch.dtype = torch.float32,
                          device: str | torch.device = "cpu"):
    """The FLUX.1-Fill transformer (``transformer/`` of a hub id or folder in FLUX.1-Fill-dev's layout, or
    ``"tiny"``); one clear error, before its weights load, when its input/output widths are not 384/64."""
    from diffusers import FluxTransformer2DModel

    if source == "tiny":
        root = str(materialize_tiny_fill(tiny, cache_dir))
    else:
        root = folder_or_hub_id(source, FILL_HUB_ID, "inpaint.fill_model")
    try:
        config = FluxTransformer2DModel.load_config(root, subfolder="transformer")
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load the FLUX.1-Fill transformer from {source!r}: {exc}") from exc
    widths = (config["in_channels"], config.get("out_channels") or config["in_channels"])
    if widths != (FILL_IN_CHANNELS, LATENT_CHANNELS):
        raise ModelLoadError(
            f"the transformer at {source!r} takes {widths[0]} input and gives {widths[1]} output channels, but a "
            f"FLUX.1-Fill transformer takes {FILL_IN_CHANNELS} (noisy latents {LATENT_CHANNELS} + masked image "
            f"{LATENT_CHANNELS} + mask {FILL_MASK_CHANNELS}) and gives {LATENT_CHANNELS}; set inpaint.fill_model to "
            f"{FILL_HUB_ID} or a folder of the same layout")
    try:
        model = FluxTransformer2DModel.from_pretrained(root, subfolder="transformer", dtype=dtype)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot load the FLUX.1-Fill transformer from {source!r}: {exc}") from exc
    return model.to(device).eval()


def load_flux_fill(pretrained: str = FLUX_HUB_ID, fill: str = FILL_HUB_ID, *,
                   tiny: FluxTinyConfig | Mapping[str, Any] | None = None, cache_dir: str | Path = DEFAULT_CACHE,
                   dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu"):
    """A ``FluxFillPipeline``: text encoders, VAE and scheduler of ``pretrained`` (FLUX.1-dev or FLUX.1-Fill-dev:
    hub id, folder or ``"tiny"``) and the Fill transformer of ``fill`` (hub id, folder or ``"tiny"``)."""
    from diffusers import FluxFillPipeline

    if pretrained == "tiny":
        root = str(materialize_tiny_flux(tiny, cache_dir))
    else:
        root = folder_or_hub_id(pretrained, FLUX_HUB_ID, "inpaint.model")
    _check_pipeline_folder(root, tuple(p for p in PIPELINE_PARTS if p != "transformer"))
    transformer = load_fill_transformer(fill, tiny=tiny, cache_dir=cache_dir, dtype=dtype, device=device)
    return _load_pipeline(FluxFillPipeline, root, dtype, device, transformer=transformer)
