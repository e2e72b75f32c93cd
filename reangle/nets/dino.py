"""DINO Vision Transformer (``vision_transformer.VisionTransformer`` of facebookresearch/dino).

Checkpoint-compatible: parameter names equal the official ones (``cls_token``,
``pos_embed``, ``patch_embed.proj``, ``blocks.N.{norm1,attn.qkv,attn.proj,norm2,
mlp.fc1,mlp.fc2}``, ``norm``), so the official ``dino_vits16`` / ``dino_vitb16``
``.pth`` state dicts load strictly. No classification head (``num_classes=0``).

Inputs are ImageNet-normalised images ``(B, 3, rows, cols)``; tokens are
``(B, 1 + (rows // p) * (cols // p), D)``, CLS first, patches row-major.

``interpolate_pos_encoding`` reproduces the reference exactly, including its
quirk: the 14x14 grid of the 224-pixel position embedding is resampled with
``F.interpolate(scale_factor=((rows // p + 0.1) / 14, (cols // p + 0.1) / 14),
mode="bicubic")``, so the source coordinates follow the scale factors (which
include the ``+0.1``), not the output size. The embedding is used unchanged only
when the patch count equals the grid's and ``rows == cols``.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reangle.nets.layers import Mlp

PRESETS: dict[str, dict[str, Any]] = {
    "vit_small": dict(embed_dim=384, depth=12, num_heads=6),
    "vit_base": dict(embed_dim=768, depth=12, num_heads=12),
}
"""Architectures of the official presets (all with mlp_ratio 4, qkv_bias, LayerNorm eps 1e-6)."""

HUB_URLS: dict[str, str] = {
    "dino_vits16": "https://dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth",
    "dino_vitb16": "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth",
}
"""torch.hub names of facebookresearch/dino and the state-dict files they download."""

class PatchEmbed(nn.Module):
    """Non-overlapping ``patch_size`` convolution: (B, 3, H, W) -> (B, (H//p)*(W//p), D)."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768):
        super().__init__()
        self.img_size = img_size
        self.patch_size = patch_size
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, qk_scale: float | None = None):
        super().__init__()
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, qk_scale: float | None, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias, qk_scale)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """DINO ViT backbone (no head). ``img_size`` fixes the position-embedding grid only."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        self.embed_dim = embed_dim
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, qk_scale, norm_eps) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self._init_weights()

    @property
    def patch_size(self) -> int:
        return self.patch_embed.patch_size

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def interpolate_pos_encoding(self, tokens: Tensor, rows: int, cols: int) -> Tensor:
        """Position embedding for an image of ``rows x cols`` pixels: (1, 1 + npatch, D)."""
        npatch = tokens.shape[1] - 1
        n = self.pos_embed.shape[1] - 1
        if npatch == n and rows == cols:
            return self.pos_embed
        grid = int(math.sqrt(n))
        dim = tokens.shape[-1]
        r0 = rows // self.patch_size + 0.1
        c0 = cols // self.patch_size + 0.1
        patch_pos = self.pos_embed[:, 1:].reshape(1, grid, grid, dim).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(patch_pos, scale_factor=(r0 / grid, c0 / grid), mode="bicubic")
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, -1, dim)
        return torch.cat((self.pos_embed[:, :1], patch_pos), dim=1)

    def prepare_tokens(self, x: Tensor) -> Tensor:
        """(B, 3, rows, cols) -> (B, 1 + npatch, D): CLS + patch embeddings + positions."""
        b, _, rows, cols = x.shape
        tokens = self.patch_embed(x)
        tokens = torch.cat((self.cls_token.expand(b, -1, -1), tokens), dim=1)
        return tokens + self.interpolate_pos_encoding(tokens, rows, cols)

    def forward(self, x: Tensor) -> Tensor:
        """CLS token after the final norm: (B, D)."""
        return self.get_intermediate_layers(x, 1)[0][:, 0]

    def get_intermediate_layers(self, x: Tensor, n: int = 1) -> list[Tensor]:
        """All tokens of the last ``n`` blocks, each through the final norm: n x (B, 1 + npatch, D)."""
        x = self.prepare_tokens(x)
        out = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if len(self.blocks) - i <= n:
                out.append(self.norm(x))
        return out


def build_dino(arch: str = "vit_small", patch_size: int = 16, **overrides: Any) -> VisionTransformer:
    """A preset (``vit_small`` / ``vit_base``) with random weights; ``overrides`` change any kwarg."""
    if arch not in PRESETS:
        raise ValueError(f"unknown DINO arch {arch!r}; choose one of {sorted(PRESETS)}")
    return VisionTransformer(patch_size=patch_size, **{**PRESETS[arch], **overrides})


def preset_heads(embed_dim: int, depth: int) -> int | None:
    """Head count of the official preset with these dimensions (``None``: not a preset)."""
    for preset in PRESETS.values():
        if (preset["embed_dim"], preset["depth"]) == (embed_dim, depth):
            return preset["num_heads"]
    return None


def sidecar_heads(path: str | os.PathLike) -> int | None:
    """``num_heads`` from ``<checkpoint stem>.json`` beside a checkpoint file, if there is one."""
    sidecar = Path(path).with_suffix(".json")
    if not sidecar.is_file():
        return None
    heads = json.loads(sidecar.read_text()).get("num_heads")
    if heads is not None and (not isinstance(heads, int) or heads < 1):
        raise ValueError(f"{sidecar}: num_heads must be a positive integer, got {heads!r}")
    return heads


def config_from_state_dict(state: Mapping[str, Tensor], num_heads: int | None = None,
                           source: str = "the state dict") -> dict[str, Any]:
    """Architecture read from weight shapes. The head count leaves no trace in them: it is
    ``num_heads`` when given, else the official preset's with the same width and depth; any
    other architecture without ``num_heads`` is an error."""
    for key in ("cls_token", "pos_embed", "patch_embed.proj.weight"):
        if key not in state:
            raise ValueError(f"not a DINO ViT state dict: key {key!r} is missing")
    embed_dim, in_chans, patch, _ = state["patch_embed.proj.weight"].shape
    grid = math.isqrt(state["pos_embed"].shape[1] - 1)
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    hidden = state["blocks.0.mlp.fc1.weight"].shape[0]
    heads = num_heads if num_heads is not None else preset_heads(embed_dim, depth)
    if heads is None:
        presets = ", ".join(f"{n} ({p['embed_dim']} x {p['depth']})" for n, p in PRESETS.items())
        raise ValueError(f"DINO ViT in {source} (embed_dim {embed_dim}, depth {depth}) is not an official preset "
                         f"({presets}), and its head count cannot be read from the weights: pass num_heads, or "
                         f"put {{\"num_heads\": N}} in a .json file beside the checkpoint with the same stem")
    if embed_dim % heads:
        raise ValueError(f"num_heads {heads} does not divide embed_dim {embed_dim} of the DINO ViT in {source}")
    return dict(
        img_size=grid * patch, patch_size=patch, in_chans=in_chans, embed_dim=embed_dim, depth=depth,
        num_heads=heads, mlp_ratio=hidden / embed_dim,
        qkv_bias="blocks.0.attn.qkv.bias" in state,
    )


def clean_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Strip DDP / training-checkpoint prefixes (``module.``, ``backbone.``) and drop ``head.*``."""
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "backbone."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        if not key.startswith("head."):
            out[key] = value
    return out


def read_state_dict(path: str | os.PathLike, what: str = "checkpoint") -> dict[str, Tensor]:
    """Tensors of a ``.safetensors`` file or a ``.pth``/``.ckpt`` state dict (``weights_only``;
    a ``{"state_dict": ...}`` wrapper is unwrapped). ``what`` names the file in errors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt file, not a checkpoint, or pickled objects beyond tensors
        raise ValueError(f"{what} {path} could not be read as a state dict: {error}") from error
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{what} {path} does not hold a state dict (got {type(obj).__name__})")
    return dict(obj)


def load_dino(
    source: str | os.PathLike | Mapping[str, Any],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    **overrides: Any,
) -> VisionTransformer:
    """DINO ViT in eval mode with frozen weights, from one of three sources.

    ``source``: a torch.hub name (``"dino_vits16"``, ``"dino_vitb16"``; the official
    ``.pth`` is downloaded once into the torch hub cache), a local ``.pth`` /
    ``.safetensors`` state dict (architecture read from its shapes; the head count from
    ``num_heads``, else a ``<stem>.json`` sidecar holding ``num_heads``, else the official
    preset of the same width and depth: anything else is an error), or a dict of
    constructor kwargs (random weights; may name ``arch`` to start from a preset).
    ``overrides`` set constructor kwargs.
    """
    if isinstance(source, Mapping):
        config = dict(source)
        arch = config.pop("arch", None)
        config.update(overrides)
        model = build_dino(arch, **config) if arch else VisionTransformer(**config)
        state = None
    else:
        name = str(source)
        if name in HUB_URLS:
            state = torch.hub.load_state_dict_from_url(HUB_URLS[name], map_location="cpu", weights_only=True)
        elif Path(name).exists():
            state = read_state_dict(name)
        else:
            raise FileNotFoundError(
                f"DINO source {name!r} is neither a file nor a hub name ({', '.join(HUB_URLS)})"
            )
        state = clean_state_dict(state)
        heads = overrides.pop("num_heads", None)
        if heads is None and name not in HUB_URLS:
            heads = sidecar_heads(name)
        model = VisionTransformer(**{**config_from_state_dict(state, heads, name), **overrides})
    if state is not None:
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"DINO checkpoint does not match: missing keys {missing}, unexpected keys {unexpected}")
    model.to(device=device, dtype=dtype).eval()
    model.requires_grad_(False)
    return model
