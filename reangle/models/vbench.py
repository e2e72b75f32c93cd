"""The networks behind the VBench dimensions, each wrapped with that dimension's own preprocessing.

Public API (every loader returns an eval-mode module with frozen weights)::

    load_subject_model(source)                     # DINO ViT-B/16: frames -> CLS features [N, 768]
    load_background_model(source)                  # CLIP ViT-B/32: frames -> image features [N, 512]
    load_aesthetic_model(clip_source, head_source) # CLIP ViT-L/14 + LAION head: frames -> score / 10 [N]
    load_imaging_model(source)                     # MUSIQ (SPAQ): frames -> score / 100 [N]
    load_flow_model(source)                        # RAFT-large: (frames_a, frames_b[, padded]) -> flow [N, 2, H, W] px
    load_interpolation_model(source)               # AMT-S: (img0, img1, embt) -> [N, 3, H, W]
    convert_raft_checkpoint(state) -> dict         # princeton-vl RAFT names -> torchvision names

Frames are ``[N, 3, H, W]`` float in [0, 1] at any size. Where VBench resizes (DINO, CLIP,
MUSIQ) the wrappers do what its transforms do to the float32 0-255 frames that
``vbench.utils.load_video`` returns: the frames are taken to their 8-bit levels (as decoded),
resized as float32 0-255 values with torchvision (same interpolation, ``antialias=False``, no
rounding and no clamp after bicubic), then divided by 255.

Precision follows VBench's ``clip.load`` per device: CLIP runs in float32 on the CPU and with
float16 matmuls on CUDA (autocast; the OpenAI release is float16). The other networks run in
float32 everywhere.

``source`` is ``"tiny"`` (a small seeded random model for tests; nothing is downloaded) or a
local checkpoint file; DINO also takes its torch.hub name (``dino_vitb16``) and CLIP an
open_clip pretrained tag (``openai``) or an ``hf-hub:`` id, which open_clip downloads.
The README section "Evaluation models" lists the files each loader expects.
"""
from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torch import Tensor, nn

from reangle.errors import InputError, MissingPackageError
from reangle.io.video import uint8_levels
from reangle.nets.amt import AMTS, MIN_SIZE, SIZE_MULTIPLE, load_amt_s
from reangle.nets.dino import VisionTransformer, load_dino, read_state_dict
from reangle.utils import build_with_weights, imagenet_normalize, seeded

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SUBJECT_SIZE = 224       # DINO input: shorter side (no crop)
CLIP_SIZE = 224          # CLIP input: shorter side, then centre crop
IMAGING_LONGER_SIDE = 512  # MUSIQ input: longer side capped at this
FLOW_UPDATES = 20        # RAFT iterations (VBench dynamic degree)
FLOW_MULTIPLE = 8        # RAFT needs H, W multiples of 8 ...
FLOW_MIN_SIZE = 128      # ... and at least 128 (torchvision checks its 4-level correlation pyramid)

BACKGROUND_CLIP = "ViT-B-32-quickgelu"  # OpenAI ViT-B/32 (QuickGELU) in open_clip's naming
AESTHETIC_CLIP = "ViT-L-14-quickgelu"   # OpenAI ViT-L/14

TINY_DINO = {"embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 16}
TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"image_size": 224, "layers": 1, "width": 32, "patch_size": 32, "head_width": 16}}
TINY_MUSIQ = {"hidden_size": 32, "mlp_dim": 64, "num_heads": 2, "num_layers": 1}
TINY_SEED = 0

_PYIQA_HINT = ("imaging quality needs pyiqa's MUSIQ; install it without its heavy optional requirements: "
               "`pip install --no-deps pyiqa==0.1.16`")


# ----------------------------------------------------------------------------- preprocessing helpers

def _check_frames(frames: Tensor, name: str = "frames") -> None:
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"{name} must be [N, 3, H, W] float in [0, 1], got shape {tuple(frames.shape)}")


def _resize_levels(frames: Tensor, size, interpolation: TF.InterpolationMode) -> Tensor:
    """VBench's torchvision ``Resize(size, interpolation, antialias=False)`` on the float32 0-255 levels of
    ``frames`` (no rounding, no clamp), then / 255: [N, 3, H, W] in [0, 1] -> resized [N, 3, h, w] float32."""
    resized = TF.resize(uint8_levels(frames).float(), size, interpolation=interpolation, antialias=False)
    return resized / 255


def pad_to_multiple(frames: Tensor, multiple: int, minimum: int = 0) -> tuple[Tensor, tuple[slice, slice]]:
    """Replicate-pad H and W up to a multiple of ``multiple`` (and at least ``minimum``), split evenly
    as the reference ``InputPadder`` does (extra pixel right/bottom); returns the crop that undoes it."""
    h, w = frames.shape[-2:]
    target_h = max(-(-h // multiple) * multiple, -(-minimum // multiple) * multiple)
    target_w = max(-(-w // multiple) * multiple, -(-minimum // multiple) * multiple)
    top, left = (target_h - h) // 2, (target_w - w) // 2
    padded = F.pad(frames, (left, target_w - w - left, top, target_h - h - top), mode="replicate")
    return padded, (slice(top, top + h), slice(left, left + w))


def _frozen(module: nn.Module) -> nn.Module:
    return module.eval().requires_grad_(False)


# ----------------------------------------------------------------------------- subject consistency (DINO)

class SubjectFeatures(nn.Module):
    """DINO CLS features of frames resized so the shorter side is 224 (bilinear, no crop), ImageNet-normalised."""

    def __init__(self, dino: VisionTransformer):
        super().__init__()
        self.dino = dino

    def forward(self, frames: Tensor) -> Tensor:
        """[N, 3, H, W] in [0, 1] -> [N, D]."""
        _check_frames(frames)
        x = _resize_levels(frames, SUBJECT_SIZE, TF.InterpolationMode.BILINEAR)
        return self.dino(imagenet_normalize(x))


def load_subject_model(source: str | os.PathLike) -> SubjectFeatures:
    """DINO ViT-B/16 (``dino_vitbase16_pretrain.pth`` or the hub name ``dino_vitb16``); ``"tiny"``: a 32-wide ViT."""
    if str(source) == "tiny":
        with seeded(TINY_SEED):
            dino = load_dino(TINY_DINO)
    else:
        dino = load_dino(source)
    return _frozen(SubjectFeatures(dino))


# ----------------------------------------------------------------------------- CLIP (background, aesthetic)

class CLIPImageFeatures(nn.Module):
    """CLIP image features (unnormalised ``encode_image`` output) of frames resized to 224 (bicubic),
    centre-cropped to 224 and normalised with the CLIP mean/std. Float32 weights; on CUDA the tower runs
    under float16 autocast, as VBench's ``clip.load`` runs the float16 release there (on the CPU it
    converts the model to float32, and so do we)."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual

    @property
    def output_dim(self) -> int:
        return self.visual.output_dim

    def forward(self, frames: Tensor) -> Tensor:
        """[N, 3, H, W] in [0, 1] -> [N, D]."""
        _check_frames(frames)
        x = _resize_levels(frames, CLIP_SIZE, TF.InterpolationMode.BICUBIC)
        x = TF.center_crop(x, [CLIP_SIZE, CLIP_SIZE])
        x = (x - x.new_tensor(CLIP_MEAN).view(1, 3, 1, 1)) / x.new_tensor(CLIP_STD).view(1, 3, 1, 1)
        with torch.autocast("cuda", dtype=torch.float16, enabled=x.is_cuda):
            return self.visual(x).float()


def build_clip_visual(model_name: str) -> nn.Module:
    """The image tower of an open_clip model config (random init; build under ``torch.device("meta")``
    for a weightless one). Its state-dict keys are the ``visual.*`` keys of the OpenAI checkpoint."""
    import open_clip
    from open_clip.model import _build_vision_tower

    if model_name == "tiny":
        config = {**TINY_CLIP, "quick_gelu": True}
    else:
        config = open_clip.get_model_config(model_name)
        if config is None:
            raise ValueError(f"open_clip has no model config {model_name!r}")
    return _build_vision_tower(config["embed_dim"], config["vision_cfg"], quick_gelu=config.get("quick_gelu", False))


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive (a zip holding ``constants.pkl``), as OpenAI's CLIP releases are."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") for name in archive.namelist())


def _read_clip_state(path: Path) -> dict[str, Tensor]:
    """``visual.*`` tensors of an OpenAI TorchScript ``.pt`` (read with ``torch.jit.load``) or of a
    ``.safetensors`` / state-dict ``.pth``/``.bin`` in the OpenAI/open_clip layout."""
    if _is_torchscript(path):
        state = torch.jit.load(str(path), map_location="cpu").state_dict()
    else:
        state = read_state_dict(path, "CLIP checkpoint")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    return {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}


def _load_clip(model_name: str, source: str | os.PathLike) -> CLIPImageFeatures:
    name = str(source)
    if name == "tiny":
        with seeded(TINY_SEED):
            visual = build_clip_visual("tiny")
    elif Path(name).is_file():
        visual = build_with_weights(lambda: build_clip_visual(model_name), _read_clip_state(Path(name)),
                                    f"{model_name} checkpoint {name}")
    else:
        import open_clip

        if name.startswith(("hf-hub:", "local-dir:")):
            model = open_clip.create_model(name)
        elif "/" in name or name.endswith((".pt", ".pth", ".bin", ".safetensors")):
            raise FileNotFoundError(f"CLIP checkpoint not found: {name}")
        else:
            model = open_clip.create_model(model_name, pretrained=name)
        visual = model.visual
    return _frozen(CLIPImageFeatures(visual.float()))


def load_background_model(source: str | os.PathLike) -> CLIPImageFeatures:
    """CLIP ViT-B/32 image features: ``ViT-B-32.pt`` (OpenAI), an open_clip tag (``openai``), an
    ``hf-hub:`` id, or ``"tiny"``."""
    return _load_clip(BACKGROUND_CLIP, source)


# ----------------------------------------------------------------------------- aesthetic quality

class AestheticScore(nn.Module):
    """LAION aesthetic predictor: linear head on L2-normalised CLIP ViT-L/14 features, divided by 10."""

    def __init__(self, clip: CLIPImageFeatures, head: nn.Linear):
        super().__init__()
        self.clip = clip
        self.head = head

    def forward(self, frames: Tensor) -> Tensor:
        """[N, 3, H, W] in [0, 1] -> [N] (about 0..1)."""
        features = F.normalize(self.clip(frames), dim=-1)
        return self.head(features).squeeze(-1) / 10


def load_aesthetic_model(clip_source: str | os.PathLike, head_source: str | os.PathLike) -> AestheticScore:
    """CLIP ViT-L/14 (as :func:`load_background_model`'s sources) + the LAION linear head
    ``sa_0_4_vit_l_14_linear.pth`` (``{"weight": [1, 768], "bias": [1]}``) or ``"tiny"``."""
    clip = _load_clip(AESTHETIC_CLIP, clip_source)
    dim = clip.output_dim
    if str(head_source) == "tiny":
        with seeded(TINY_SEED):
            head = nn.Linear(dim, 1)
    else:
        state = read_state_dict(head_source, "aesthetic head checkpoint")
        head = nn.Linear(dim, 1)
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        if shapes != {"weight": (1, dim), "bias": (1,)}:
            raise ValueError(f"{head_source} is not a linear aesthetic head for {dim}-d CLIP features "
                             f"(expected weight (1, {dim}) and bias (1,), got {shapes})")
        head.load_state_dict(state)
    return _frozen(AestheticScore(clip, head))


# ----------------------------------------------------------------------------- imaging quality (MUSIQ)

class ImagingQuality(nn.Module):
    """MUSIQ quality of frames whose longer side is resized to 512 when larger (bilinear), divided by 100."""

    def __init__(self, musiq: nn.Module):
        super().__init__()
        self.musiq = musiq

    def forward(self, frames: Tensor) -> Tensor:
        """[N, 3, H, W] in [0, 1] -> [N] (about 0..1)."""
        _check_frames(frames)
        h, w = frames.shape[-2:]
        if max(h, w) > IMAGING_LONGER_SIDE:
            scale = IMAGING_LONGER_SIDE / max(h, w)
            x = _resize_levels(frames, [int(scale * h), int(scale * w)], TF.InterpolationMode.BILINEAR)
        else:
            x = uint8_levels(frames).float() / 255
        return self.musiq(x).reshape(-1) / 100


def _musiq_class():
    try:
        from pyiqa.archs.musiq_arch import MUSIQ
    except ImportError as error:
        raise MissingPackageError(f"{_PYIQA_HINT} ({error})") from error
    return MUSIQ


def build_musiq(**overrides) -> nn.Module:
    """pyiqa's MUSIQ with one output (the SPAQ/KonIQ head), no weights loaded; ``overrides`` set sizes."""
    return _musiq_class()(pretrained=False, num_class=1, **overrides)


def load_imaging_model(source: str | os.PathLike) -> ImagingQuality:
    """MUSIQ with the SPAQ head: ``musiq_spaq_ckpt-358bb6af.pth`` (pyiqa release) or ``"tiny"``."""
    if str(source) == "tiny":
        with seeded(TINY_SEED):
            musiq = build_musiq(**TINY_MUSIQ)
    else:
        state = {k.removeprefix("module."): v for k, v in read_state_dict(source, "MUSIQ checkpoint").items()}
        musiq = build_with_weights(build_musiq, state, f"single-output MUSIQ checkpoint {source}")
    return _frozen(ImagingQuality(musiq))


# ----------------------------------------------------------------------------- optical flow (RAFT)

_RAFT_ENCODERS = {"fnet": "feature_encoder", "cnet": "context_encoder"}
_RAFT_RULES = [  # (original name pattern, torchvision replacement), applied after the encoder prefix swap
    (r"^(\w+_encoder)\.conv1\.", r"\1.convnormrelu.0."),
    (r"^(\w+_encoder)\.norm1\.", r"\1.convnormrelu.1."),
    (r"^(\w+_encoder)\.conv2\.", r"\1.conv."),
    (r"^(\w+_encoder\.layer\d\.\d)\.conv(\d)\.", r"\1.convnormrelu\2.0."),
    (r"^(\w+_encoder\.layer\d\.\d)\.norm(\d)\.", r"\1.convnormrelu\2.1."),
    (r"^update_block\.encoder\.convc(\d)\.", r"update_block.motion_encoder.convcorr\1.0."),
    (r"^update_block\.encoder\.convf(\d)\.", r"update_block.motion_encoder.convflow\1.0."),
    (r"^update_block\.encoder\.conv\.", r"update_block.motion_encoder.conv.0."),
    (r"^update_block\.gru\.conv([zrq])(\d)\.", r"update_block.recurrent_block.convgru\2.conv\1."),
    (r"^update_block\.mask\.0\.", r"mask_predictor.convrelu.0."),
    (r"^update_block\.mask\.2\.", r"mask_predictor.conv."),
]


class RAFTCheckpointError(InputError):
    """A RAFT checkpoint whose duplicated BatchNorm tensors disagree."""


def _drop_duplicate_norms(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """princeton-vl's ``ResidualBlock`` registers its shortcut BatchNorm twice, as ``norm3`` and as
    ``downsample.1``, so ``raft-things.pth`` stores it under both names (179 keys). Check each ``norm3``
    tensor equals its ``downsample.1`` twin and drop it."""
    out = dict(state)
    for key in [k for k in state if ".norm3." in k]:
        twin = key.replace(".norm3.", ".downsample.1.")
        if twin not in state or not torch.equal(state[key], state[twin]):
            raise RAFTCheckpointError(f"RAFT checkpoint tensor {key} has no equal {twin}: the file is not a "
                                      f"princeton-vl RAFT checkpoint (its norm3 is the downsample BatchNorm)")
        del out[key]
    return out


def convert_raft_checkpoint(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename an original princeton-vl RAFT state dict (``raft-things.pth``: ``module.fnet.*``,
    ``module.cnet.*``, ``module.update_block.*``, with the shortcut BatchNorm stored twice) to
    torchvision's ``raft_large`` names. A state dict already in torchvision's layout is returned unchanged."""
    out = {}
    for key, value in _drop_duplicate_norms(state).items():
        key = key.removeprefix("module.")
        head, _, rest = key.partition(".")
        if head in _RAFT_ENCODERS:
            key = f"{_RAFT_ENCODERS[head]}.{rest}"
        for pattern, replacement in _RAFT_RULES:
            key = re.sub(pattern, replacement, key)
        out[key] = value
    return out


def build_raft() -> nn.Module:
    """torchvision's RAFT-large, random init (build under ``torch.device("meta")`` for a weightless one)."""
    from torchvision.models.optical_flow import raft_large

    return raft_large(weights=None)


class OpticalFlow(nn.Module):
    """RAFT flow from frames_a to frames_b: inputs mapped to [-1, 1], replicate-padded to a multiple of 8
    (evenly, as RAFT's ``InputPadder``; then to at least 128, which torchvision's RAFT needs), 20 updates,
    the final upsampled flow cropped to the frame or, with ``padded``, to the multiple-of-8 area that
    VBench's dynamic degree ranks."""

    def __init__(self, raft: nn.Module, num_updates: int = FLOW_UPDATES):
        super().__init__()
        self.raft = raft
        self.num_updates = num_updates

    def forward(self, frames_a: Tensor, frames_b: Tensor, padded: bool = False) -> Tensor:
        """two [N, 3, H, W] in [0, 1] -> flow [N, 2, H, W] in pixels ((x, y): a(p) ~ b(p + flow(p)));
        with ``padded``, [N, 2, H8, W8] over the frames padded to multiples of 8."""
        _check_frames(frames_a, "frames_a")
        if frames_a.shape != frames_b.shape:
            raise ValueError(f"frames_a and frames_b differ in shape: {tuple(frames_a.shape)} vs "
                             f"{tuple(frames_b.shape)}")
        pair, frame_area = pad_to_multiple(torch.cat((frames_a, frames_b)) * 2 - 1, FLOW_MULTIPLE)
        pair, (rows, cols) = pad_to_multiple(pair, FLOW_MULTIPLE, FLOW_MIN_SIZE)
        first, second = pair.chunk(2)
        flow = self.raft(first.contiguous(), second.contiguous(), num_flow_updates=self.num_updates)[-1]
        flow = flow[..., rows, cols]
        return flow if padded else flow[..., frame_area[0], frame_area[1]]


def load_flow_model(source: str | os.PathLike) -> OpticalFlow:
    """RAFT-large: ``raft-things.pth`` (princeton-vl release, converted) or a torchvision-format state dict
    (``raft_large_C_T_SKHT_V2-ff5fadd5.pth``); ``"tiny"``: RAFT-large at seeded random init."""
    if str(source) == "tiny":
        with seeded(TINY_SEED):
            raft = build_raft()
    else:
        state = convert_raft_checkpoint(read_state_dict(source, "RAFT checkpoint"))
        raft = build_with_weights(build_raft, state, f"RAFT-large checkpoint {source}")
    return _frozen(OpticalFlow(raft))


# ----------------------------------------------------------------------------- frame interpolation (AMT-S)

class FrameInterpolator(nn.Module):
    """AMT-S on frames of any size: replicate-padded (evenly) to a multiple of 16 and at least 128,
    then cropped back. VBench scores ``uint8(255 * output)`` (truncation) against the real frame."""

    def __init__(self, amt: AMTS):
        super().__init__()
        self.amt = amt

    def forward(self, img0: Tensor, img1: Tensor, embt: Tensor | float = 0.5) -> Tensor:
        """img0, img1 [N, 3, H, W] in [0, 1]; embt [N, 1, 1, 1] or a float in (0, 1) -> [N, 3, H, W] in [0, 1]."""
        _check_frames(img0, "img0")
        if img0.shape != img1.shape:
            raise ValueError(f"img0 and img1 differ in shape: {tuple(img0.shape)} vs {tuple(img1.shape)}")
        embt = torch.as_tensor(embt, dtype=img0.dtype, device=img0.device).reshape(-1, 1, 1, 1)
        embt = embt.expand(img0.shape[0], 1, 1, 1)
        pair, (rows, cols) = pad_to_multiple(torch.cat((img0, img1)), SIZE_MULTIPLE, MIN_SIZE)
        first, second = pair.chunk(2)
        return self.amt(first, second, embt)[..., rows, cols]


def load_interpolation_model(source: str | os.PathLike) -> FrameInterpolator:
    """AMT-S: ``amt-s.pth`` (official release) / ``.safetensors``, or ``"tiny"`` (random init)."""
    return _frozen(FrameInterpolator(load_amt_s(source)))
