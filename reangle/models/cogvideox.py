"""Loading CogVideoX image-to-video components from a hub id, a local folder or a tiny config.

Public API::

    load_components(pretrained, parts=COMPONENTS, *, tiny=None, cache_dir=..., revision=None,
                    dtype=torch.float32, device="cpu") -> CogVideoXComponents
    resolve_pretrained(pretrained, *, tiny=None, cache_dir=...) -> str   # folder or hub id
    TinyConfig                                    # sizes of the tiny random model
    CogVideoXComponents.pipeline() -> CogVideoXImageToVideoPipeline
    full_size_transformer_config() -> dict        # CogVideoX-5b-I2V transformer, as on the hub
    build_transformer_on_meta(config) -> CogVideoXTransformer3DModel (no memory)
    layout(module) -> {key: shape}                # key names and shapes of a state dict

``pretrained`` is one of: a hub id (``THUDM/CogVideoX-5b-I2V``), a local folder in the
diffusers layout (``model_index.json`` and one subfolder per component), or ``"tiny"``.
All three go through the same ``from_pretrained`` calls: ``"tiny"`` first writes a
random model of :class:`TinyConfig` sizes into ``cache_dir/models/tiny-<hash>`` (once,
atomically) and is then loaded from there like any local folder. The tiny model has the
5b-I2V structure (32 input channels, rotary + learned positional embeddings, no ofs
embedding, v-prediction DDIM scheduler) at toy widths, and a small Unigram T5 tokenizer
built from a fixed word list, so nothing is ever downloaded for it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch

from reangle.errors import InputError
from reangle.models.spec import FrameGrid
from reangle.utils import fingerprint, seeded, temporary_path, umask_safetensors

COMPONENTS = ("tokenizer", "text_encoder", "vae", "transformer", "scheduler")
HUB_ID = "THUDM/CogVideoX-5b-I2V"
DEFAULT_CACHE = ".cache/reangle"

_HUB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# The scheduler of THUDM/CogVideoX-5b-I2V (scheduler/scheduler_config.json).
SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "clip_sample": False, "set_alpha_to_one": True,
    "steps_offset": 0, "prediction_type": "v_prediction", "timestep_spacing": "trailing",
    "rescale_betas_zero_snr": True, "snr_shift_scale": 1.0,
}

# Words the tiny tokenizer knows whole; anything else falls back to single characters.
TINY_WORDS = ("a an the of on in at to and with camera movement orbit left right up down zoom "
               "dolly out scene video ball cube sphere box red green blue white black floor "
               "wall sky moving rolling static view").split()
TINY_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789,.;:!?'\"-_()<>/"


class ModelLoadError(InputError):
    """A model source that cannot be loaded as asked."""


def sizes_from_mapping(cls, values):
    """An instance of the dataclass ``cls`` from an instance, a mapping of field values, or None (the defaults)."""
    if isinstance(values, cls):
        return values
    values = dict(values or {})
    unknown = sorted(set(values) - {f.name for f in fields(cls)})
    if unknown:
        raise ModelLoadError(f"unknown tiny model setting(s) {unknown}; known: {[f.name for f in fields(cls)]}")
    return cls(**values)


@dataclass
class TinyConfig:
    """Sizes of the tiny random CogVideoX-I2V; ``height``/``width``/``num_frames`` are the
    pixel sizes it is trained at (its learned positional embedding is fixed to them)."""

    seed: int = 0
    num_layers: int = 2
    num_attention_heads: int = 2
    attention_head_dim: int = 16
    time_embed_dim: int = 16
    text_embed_dim: int = 32
    text_layers: int = 1
    vae_channels: list[int] = field(default_factory=lambda: [8, 8, 16, 16])
    height: int = 64
    width: int = 96
    num_frames: int = 9
    max_text_length: int = 226

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | "TinyConfig" | None) -> "TinyConfig":
        return sizes_from_mapping(cls, values)

    def key(self) -> str:
        return fingerprint(asdict(self))


@dataclass
class CogVideoXComponents:
    """The loaded parts (``None`` for parts not asked for) and where they came from."""

    source: str
    tokenizer: Any = None
    text_encoder: Any = None
    vae: Any = None
    transformer: Any = None
    scheduler: Any = None

    def pipeline(self):
        """A ``CogVideoXImageToVideoPipeline`` over these parts (all five must be loaded)."""
        from diffusers import CogVideoXImageToVideoPipeline

        missing = [p for p in COMPONENTS if getattr(self, p) is None]
        if missing:
            raise ModelLoadError(f"cannot build the pipeline: component(s) {missing} were not loaded; "
                                 f"load them with load_components(..., parts=COMPONENTS)")
        return CogVideoXImageToVideoPipeline(**{p: getattr(self, p) for p in COMPONENTS})


def _component_classes() -> dict[str, Any]:
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXTransformer3DModel
    from transformers import T5EncoderModel, T5Tokenizer

    return {"tokenizer": T5Tokenizer, "text_encoder": T5EncoderModel, "vae": AutoencoderKLCogVideoX,
            "transformer": CogVideoXTransformer3DModel, "scheduler": CogVideoXDDIMScheduler}


def _build_tiny(cfg: TinyConfig):
    """Random tiny components (not saved) with the 5b-I2V structure."""
    from diffusers import (AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXImageToVideoPipeline,
                           CogVideoXTransformer3DModel)
    from transformers import T5Config, T5EncoderModel

    levels = len(cfg.vae_channels)
    spatial = 2 ** (levels - 1)
    if cfg.height % (2 * spatial) or cfg.width % (2 * spatial) or (cfg.num_frames - 1) % 4:
        raise ModelLoadError(f"tiny model size {cfg.num_frames}x{cfg.height}x{cfg.width} does not fit: height and "
                             f"width must be multiples of {2 * spatial} and frames 1 + 4k")
    tokenizer = tiny_t5_tokenizer(cfg.max_text_length)
    text_encoder = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=cfg.text_embed_dim, d_kv=8, d_ff=2 * cfg.text_embed_dim,
        num_layers=cfg.text_layers, num_heads=max(1, cfg.text_embed_dim // 8),
        relative_attention_num_buckets=8, relative_attention_max_distance=32))
    groups = min(cfg.vae_channels)
    vae = AutoencoderKLCogVideoX(
        block_out_channels=tuple(cfg.vae_channels), layers_per_block=1, norm_num_groups=min(4, groups),
        latent_channels=16, sample_height=cfg.height, sample_width=cfg.width,
        down_block_types=("CogVideoXDownBlock3D",) * levels, up_block_types=("CogVideoXUpBlock3D",) * levels)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=cfg.num_attention_heads, attention_head_dim=cfg.attention_head_dim,
        in_channels=32, out_channels=16, time_embed_dim=cfg.time_embed_dim, text_embed_dim=cfg.text_embed_dim,
        num_layers=cfg.num_layers, sample_height=cfg.height // spatial, sample_width=cfg.width // spatial,
        sample_frames=cfg.num_frames, max_text_seq_length=cfg.max_text_length,
        use_rotary_positional_embeddings=True, use_learned_positional_embeddings=True)
    scheduler = CogVideoXDDIMScheduler(**SCHEDULER_CONFIG)
    return CogVideoXImageToVideoPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                                         transformer=transformer, scheduler=scheduler)


def materialize_tiny(tiny: TinyConfig | Mapping[str, Any] | None, cache_dir: str | os.PathLike = DEFAULT_CACHE) -> Path:
    """Write the tiny model into ``cache_dir/models/tiny-<hash>`` unless it is there; returns the folder."""
    return publish_tiny(TinyConfig.from_mapping(tiny), _build_tiny, Path(cache_dir) / "models", "tiny")


def publish_tiny(cfg: Any, build: Callable[[Any], Any], root: Path, prefix: str) -> Path:
    """``root/<prefix>-<cfg.key()>``: the pipeline ``build(cfg)`` (random weights under ``seeded(cfg.seed)``)
    saved there once, with ``tiny_config.json``; returns the folder."""
    def write(staging: Path) -> None:
        with seeded(cfg.seed):
            pipe = build(cfg)
        pipe.save_pretrained(staging, safe_serialization=True)
        (staging / "tiny_config.json").write_text(json.dumps(asdict(cfg), indent=1))

    return publish_folder_once(root / f"{prefix}-{cfg.key()}", write)


def tiny_t5_tokenizer(max_length: int):
    """A small Unigram T5 tokenizer: the tiny word list whole, anything else as single characters."""
    from transformers import T5Tokenizer

    vocab = ([("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -3.0)]
             + [("\u2581" + w, -1.0) for w in TINY_WORDS] + [(c, -6.0) for c in TINY_CHARS])
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=max_length)


def publish_folder_once(final: Path, write: Callable[[Path], None], marker: str = "model_index.json") -> Path:
    """``final`` unless it holds ``marker``; else ``write(staging)`` into a temporary sibling and rename it into place."""
    if (final / marker).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = temporary_path(final)
    shutil.rmtree(staging, ignore_errors=True)
    write(staging)
    try:
        os.replace(umask_safetensors(staging), final)
    except OSError:  # another process published it first
        shutil.rmtree(staging, ignore_errors=True)
        if not (final / marker).is_file():
            raise
    return final


# CogVideoX-5b-I2V's published configs: a VAE of 8x spatial and 4x temporal compression, patches of
# 2 x 2 latents, learned positional embeddings for a 60 x 90 latent grid (480 x 720 pixels).
HUB_GRID = FrameGrid(spatial=16, temporal=4, size=(480, 720), frames=49)


def frame_grid(pretrained: str, tiny: TinyConfig | Mapping[str, Any] | None = None) -> FrameGrid:
    """The video sizes ``pretrained`` takes, from its VAE and transformer configs (tiny sizes, a local
    folder's ``vae/`` and ``transformer/config.json``; a hub id: CogVideoX-5b-I2V's published values,
    else the family's 16 px / 1 + 4k without a fixed size). Reads no weights, downloads nothing."""
    if pretrained == "tiny":
        t = TinyConfig.from_mapping(tiny)
        return FrameGrid(2 ** (len(t.vae_channels) - 1) * 2, 4, (t.height, t.width), t.num_frames)
    folder = Path(pretrained).expanduser()
    files = [folder / "vae" / "config.json", folder / "transformer" / "config.json"]
    if all(f.is_file() for f in files):
        vae, transformer = (json.loads(f.read_text()) for f in files)
        factor = 2 ** (len(vae.get("block_out_channels", [0] * 4)) - 1)
        learned = transformer.get("use_learned_positional_embeddings", True)
        size = (transformer.get("sample_height", 60) * factor, transformer.get("sample_width", 90) * factor) \
            if learned else None
        return FrameGrid(factor * transformer.get("patch_size", 2), transformer.get("temporal_compression_ratio", 4),
                         size, transformer.get("sample_frames", 49) if learned else None)
    return HUB_GRID if pretrained == HUB_ID else FrameGrid(spatial=16, temporal=4)


def resolve_pretrained(pretrained: str, *, tiny: TinyConfig | Mapping[str, Any] | None = None,
                       cache_dir: str | os.PathLike = DEFAULT_CACHE) -> str:
    """The folder or hub id that ``from_pretrained`` reads for ``pretrained``."""
    if pretrained == "tiny":
        return str(materialize_tiny(tiny, cache_dir))
    return folder_or_hub_id(pretrained, HUB_ID, "model.pretrained")


def folder_or_hub_id(source: str, example: str, setting: str) -> str:
    """``source`` as a local folder path or a hub id; one clear error naming ``setting`` otherwise."""
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"model path {path} is a file; give a folder in the diffusers layout "
                                 f"(model_index.json + one subfolder per component), fix {setting}")
        return str(path)
    if _HUB_ID_PATTERN.match(source) and not source.startswith((".", "/", "~")):
        return source
    raise ModelLoadError(f"model {source!r} is neither a local folder nor a hub id like {example!r} "
                         f"nor 'tiny'; fix {setting}")


def load_components(pretrained: str = HUB_ID, parts: Iterable[str] = COMPONENTS, *,
                    tiny: TinyConfig | Mapping[str, Any] | None = None,
                    cache_dir: str | os.PathLike = DEFAULT_CACHE, revision: str | None = None,
                    dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> CogVideoXComponents:
    """Load the asked ``parts`` of CogVideoX-I2V from ``pretrained`` (hub id, folder or ``"tiny"``).

    Models are put in ``eval()`` mode on ``device`` with weights in ``dtype``; nothing is frozen here.
    """
    root = resolve_pretrained(pretrained, tiny=tiny, cache_dir=cache_dir)
    out = CogVideoXComponents(source=root)
    load_parts(out, pretrained, root, parts, _component_classes(), "CogVideoX-I2V", revision=revision, dtype=dtype,
               device=device)
    return out


def load_parts(out: Any, pretrained: str, root: str, parts: Iterable[str], classes: Mapping[str, Any], layout_name: str,
               *, revision: str | None, dtype: torch.dtype, device: str | torch.device) -> None:
    """Set each of ``parts`` on ``out``, loaded with ``classes[part].from_pretrained(root, subfolder=part)``;
    models (``torch.nn.Module``) get ``dtype``, ``device`` and ``eval()``."""
    parts = list(parts)
    unknown = [p for p in parts if p not in classes]
    if unknown:
        raise ModelLoadError(f"unknown component(s) {unknown}; choose from {tuple(classes)}")
    if Path(root).is_dir():
        absent = [p for p in parts if not (Path(root) / p).is_dir()]
        if absent:
            raise ModelLoadError(f"model folder {root} has no subfolder(s) {absent}; it must hold the diffusers "
                                 f"layout of {layout_name} (model_index.json, {', '.join(classes)})")
    for part in parts:
        kwargs: dict[str, Any] = {"subfolder": part}
        if revision is not None:
            kwargs["revision"] = revision
        if isinstance(classes[part], type) and issubclass(classes[part], torch.nn.Module):
            kwargs["torch_dtype"] = dtype
        try:
            obj = classes[part].from_pretrained(root, **kwargs)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load {part} of {pretrained!r} from {root}: {exc}") from exc
        if isinstance(obj, torch.nn.Module):
            obj = obj.to(device).eval()
        setattr(out, part, obj)


def full_size_transformer_config() -> dict[str, Any]:
    """The transformer config of THUDM/CogVideoX-5b-I2V (transformer/config.json)."""
    return {
        "activation_fn": "gelu-approximate", "attention_bias": True, "attention_head_dim": 64, "dropout": 0.0,
        "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 32, "max_text_seq_length": 226,
        "norm_elementwise_affine": True, "norm_eps": 1e-5, "num_attention_heads": 48, "num_layers": 42,
        "ofs_embed_dim": None, "out_channels": 16, "patch_bias": True, "patch_size": 2, "patch_size_t": None,
        "sample_frames": 49, "sample_height": 60, "sample_width": 90, "spatial_interpolation_scale": 1.875,
        "temporal_compression_ratio": 4, "temporal_interpolation_scale": 1.0, "text_embed_dim": 4096,
        "time_embed_dim": 512, "timestep_activation_fn": "silu", "use_learned_positional_embeddings": True,
        "use_rotary_positional_embeddings": True,
    }


def build_transformer_on_meta(config: Mapping[str, Any] | None = None):
    """A ``CogVideoXTransformer3DModel`` of ``config`` (default: full size) on the meta device."""
    from accelerate import init_empty_weights
    from diffusers import CogVideoXTransformer3DModel

    with init_empty_weights(include_buffers=True):
        return CogVideoXTransformer3DModel.from_config(dict(config or full_size_transformer_config()))


def layout(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """``{state-dict key: shape}`` of ``module`` (works on meta tensors)."""
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}
