"""FVD: the StyleGAN-V I3D TorchScript detector, our Fréchet distance, and three protocols.

The detector (``i3d_torchscript.pt``) is loaded with ``torch.jit.load`` and returns 400-d
Kinetics features of clips ``[B, 3, T, H, W]``; I3D halves time three times before a
2-frame average pool, so clips need at least ``MIN_CLIP_LENGTH`` frames (the bound
common_metrics_on_video_quality asserts). ``eval.fvd.protocol`` (README "FVD protocols")
chooses which clips each video gives and how they are preprocessed:

- ``stylegan_v`` (StyleGAN-V, Skorokhodov et al. 2022, ``src/metrics/frechet_video_distance.py``):
  one clip of ``clip_length`` frames per video, a generated one from frame 0, a reference
  one at a random offset (``eval.fvd.seed``); uint8 clips, ``detector(rescale=True,
  resize=True)`` (the detector resizes to 224 x 224 itself); covariances divided by N.
- ``i2v_common`` (common_metrics_on_video_quality, ``fvd/styleganv/fvd.py``, used by many
  image-to-video papers): the first ``clip_length`` frames of every video as [0, 1] floats,
  the shorter side resized to 224 (bilinear, ``align_corners=False``, the longer side
  rounded up), centre-cropped to 224 x 224, mapped to [-1, 1], ``detector(rescale=False,
  resize=False)``; covariances divided by N - 1 (``np.cov``).
- ``clips``: every clip of ``clip_length`` frames every ``clip_stride`` frames of every
  video, as ``stylegan_v`` preprocesses them; covariances divided by N - 1.

The metric keeps sums of the features and of their outer products, so ranks agree after
torchmetrics' state sync.
"""
from __future__ import annotations

import math
import os
import random
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric

from eval.frechet import frechet_distance, gaussian_from_sums
from reangle.errors import InputError
from reangle.io.video import uint8_levels
from reangle.utils import seeded, temporary_path


PROTOCOLS = ("stylegan_v", "i2v_common", "clips")
MIN_CLIP_LENGTH = 10
I2V_SIZE = 224
_DETECTOR_KWARGS = {"stylegan_v": {"rescale": True, "resize": True}, "clips": {"rescale": True, "resize": True},
                    "i2v_common": {"rescale": False, "resize": False}}
_BIASED_COVARIANCE = {"stylegan_v": True, "clips": False, "i2v_common": False}


class FVDSettingError(InputError):
    """An ``eval.fvd`` setting that cannot be used."""


def check_fvd_settings(opts, real_detector: bool) -> None:
    """``eval.fvd``: a known protocol, and clips I3D can take when the detector is the real one."""
    if opts.protocol not in PROTOCOLS:
        raise FVDSettingError(f"unknown eval.fvd.protocol {opts.protocol!r}; use one of {list(PROTOCOLS)}")
    if real_detector and int(opts.clip_length) < MIN_CLIP_LENGTH:
        raise FVDSettingError(f"eval.fvd.clip_length={opts.clip_length} is below {MIN_CLIP_LENGTH}: I3D halves time "
                              f"three times before a 2-frame pooling, so shorter clips fail; use 16 (StyleGAN-V)")


class TinyVideoFeatures(nn.Module):
    """A small random stand-in for the I3D detector with its call signature (16-d features)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        with seeded(seed):
            self.conv = nn.Conv3d(3, 16, 3, stride=2)

    def forward(self, videos: Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> Tensor:
        x = videos.float()
        if rescale:
            x = x / 127.5 - 1
        if resize:
            x = F.interpolate(x, size=(x.shape[2], 32, 32), mode="trilinear", align_corners=False)
        return torch.relu(self.conv(x)).mean(dim=(2, 3, 4))


def materialize_tiny_i3d(cache_dir: str | os.PathLike) -> Path:
    """Script and save the tiny detector once under ``cache_dir``; returns its path (loaded like a real one)."""
    path = Path(cache_dir) / "eval" / "tiny_i3d_torchscript.pt"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_path(path)
        torch.jit.save(torch.jit.script(TinyVideoFeatures()), str(tmp))
        os.replace(tmp, path)
    return path


def load_i3d(path: str | os.PathLike, device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """The I3D TorchScript detector from a local file."""
    return torch.jit.load(str(Path(path)), map_location=device).eval()


def _check_length(n: int, clip_length: int) -> None:
    if n < clip_length:
        raise FVDSettingError(f"FVD clips need {clip_length} frames but a video has {n}; lower eval.fvd.clip_length")


def i2v_common_clip(frames: Tensor, clip_length: int) -> Tensor:
    """The ``i2v_common`` detector input of a video ``[N, 3, H, W]`` in [0, 1]: its first ``clip_length``
    frames, shorter side resized to 224 (longer side rounded up), centre crop, [-1, 1] -> ``[1, 3, T, 224, 224]``."""
    _check_length(frames.shape[0], clip_length)
    h, w = frames.shape[-2:]
    scale = I2V_SIZE / min(h, w)
    size = (I2V_SIZE, math.ceil(w * scale)) if h < w else (math.ceil(h * scale), I2V_SIZE)
    x = F.interpolate(frames[:clip_length].float(), size=size, mode="bilinear", align_corners=False)
    top, left = (x.shape[-2] - I2V_SIZE) // 2, (x.shape[-1] - I2V_SIZE) // 2
    x = x[..., top:top + I2V_SIZE, left:left + I2V_SIZE]
    return ((x - 0.5) * 2).transpose(0, 1).unsqueeze(0).contiguous()


def protocol_clips(frames: Tensor, protocol: str, clip_length: int, clip_stride: int, real: bool,
                   rng: random.Random) -> Tensor:
    """The detector inputs ``[C, 3, T, H', W']`` one video ``[N, 3, H, W]`` in [0, 1] gives under ``protocol``
    (``real``: a reference video; ``rng`` draws StyleGAN-V's reference offsets)."""
    if protocol == "clips":
        return video_clips(frames, clip_length, clip_stride)
    if protocol == "i2v_common":
        return i2v_common_clip(frames, clip_length)
    _check_length(frames.shape[0], clip_length)
    start = rng.randint(0, frames.shape[0] - clip_length) if real else 0
    return uint8_levels(frames[start:start + clip_length]).transpose(0, 1).unsqueeze(0)


def video_clips(frames: Tensor, clip_length: int, clip_stride: int) -> Tensor:
    """Clips uint8 ``[C, 3, T, H, W]`` of a video ``[N, 3, H, W]`` in [0, 1]: frames ``s .. s+T-1``
    for ``s = 0, stride, ...`` while the clip fits."""
    n = frames.shape[0]
    _check_length(n, clip_length)
    starts = range(0, n - clip_length + 1, clip_stride)
    levels = uint8_levels(frames)
    return torch.stack([levels[s:s + clip_length] for s in starts]).transpose(1, 2)


class FrechetVideoDistance(Metric):
    """FVD with a detector mapping clips ``[B, 3, T, H, W]`` (as ``protocol`` prepares them) to features ``[B, D]``."""

    full_state_update = False
    higher_is_better = False

    def __init__(self, detector, num_features: int, protocol: str = "clips", **kwargs):
        super().__init__(**kwargs)
        if protocol not in PROTOCOLS:
            raise FVDSettingError(f"unknown FVD protocol {protocol!r}; use one of {list(PROTOCOLS)}")
        self.detector = detector
        self.protocol = protocol
        self.num_features = num_features
        for side in ("real", "fake"):
            self.add_state(f"{side}_sum", torch.zeros(num_features, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_outer", torch.zeros(num_features, num_features, dtype=torch.float64),
                           dist_reduce_fx="sum")
            self.add_state(f"{side}_count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def features(self, clips: Tensor) -> Tensor:
        """Detector features ``[B, D]`` of clips ``[B, 3, T, H, W]`` (uint8, or [-1, 1] float for ``i2v_common``)."""
        with torch.no_grad():
            return self.detector(clips, return_features=True, **_DETECTOR_KWARGS[self.protocol]).double()

    def update(self, clips: Tensor, real: bool) -> None:
        feats = self.features(clips.to(self.device))
        side = "real" if real else "fake"
        setattr(self, f"{side}_sum", getattr(self, f"{side}_sum") + feats.sum(0))
        setattr(self, f"{side}_outer", getattr(self, f"{side}_outer") + feats.T @ feats)
        setattr(self, f"{side}_count", getattr(self, f"{side}_count") + feats.shape[0])

    def counts(self) -> tuple[int, int, int]:
        """(reference samples, generated samples, feature dimension)."""
        return int(self.real_count), int(self.fake_count), self.num_features

    def compute(self) -> Tensor:
        biased = _BIASED_COVARIANCE[self.protocol]
        real = gaussian_from_sums(self.real_sum, self.real_outer, self.real_count, biased)
        fake = gaussian_from_sums(self.fake_sum, self.fake_outer, self.fake_count, biased)
        return torch.tensor(frechet_distance(*fake, *real))


def build_fvd(detector, protocol: str = "clips") -> FrechetVideoDistance:
    """FVD metric around ``detector``; its feature size is probed on one zero clip of 16 frames (real I3D
    fails on 8: its time axis would shrink below its final 2-frame pooling)."""
    param = next(detector.parameters(), None)
    probe = torch.zeros(1, 3, 16, 32, 32, dtype=torch.uint8, device=param.device if param is not None else "cpu")
    with torch.no_grad():
        num_features = detector(probe, rescale=True, resize=True, return_features=True).shape[-1]
    return FrechetVideoDistance(detector, int(num_features), protocol)
