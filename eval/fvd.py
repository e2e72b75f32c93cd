"""FVD: the StyleGAN-V I3D TorchScript detector and our Fréchet distance.

The detector (``i3d_torchscript.pt``) is loaded with ``torch.jit.load`` and called as
``detector(videos, rescale=True, resize=True, return_features=True)`` on uint8
``[B, 3, T, H, W]`` clips: it rescales to [-1, 1], resizes to 224 x 224 itself and returns
400-d Kinetics features. Each video contributes its clips of ``clip_length`` consecutive
frames every ``clip_stride`` frames (StyleGAN-V: one 16-frame clip per video; one scene
has few videos, so several clips per video are taken). The metric keeps sums of the
features and of their outer products, so ranks agree after torchmetrics' state sync.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric

from eval.frechet import frechet_distance, gaussian_from_sums
from reangle.io.video import uint8_levels
from reangle.utils import seeded, temporary_path


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


def video_clips(frames: Tensor, clip_length: int, clip_stride: int) -> Tensor:
    """Clips uint8 ``[C, 3, T, H, W]`` of a video ``[N, 3, H, W]`` in [0, 1]: frames ``s .. s+T-1``
    for ``s = 0, stride, ...`` while the clip fits."""
    n = frames.shape[0]
    if n < clip_length:
        raise ValueError(f"FVD clips need {clip_length} frames but a video has {n}; lower eval.fvd.clip_length")
    starts = range(0, n - clip_length + 1, clip_stride)
    levels = uint8_levels(frames)
    return torch.stack([levels[s:s + clip_length] for s in starts]).transpose(1, 2)


class FrechetVideoDistance(Metric):
    """FVD with a detector mapping uint8 clips ``[B, 3, T, H, W]`` to features ``[B, D]``."""

    full_state_update = False
    higher_is_better = False

    def __init__(self, detector, num_features: int, **kwargs):
        super().__init__(**kwargs)
        self.detector = detector
        for side in ("real", "fake"):
            self.add_state(f"{side}_sum", torch.zeros(num_features, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_outer", torch.zeros(num_features, num_features, dtype=torch.float64),
                           dist_reduce_fx="sum")
            self.add_state(f"{side}_count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def features(self, clips: Tensor) -> Tensor:
        """Detector features ``[B, D]`` of uint8 clips ``[B, 3, T, H, W]``."""
        with torch.no_grad():
            return self.detector(clips, rescale=True, resize=True, return_features=True).double()

    def update(self, clips: Tensor, real: bool) -> None:
        feats = self.features(clips.to(self.device))
        side = "real" if real else "fake"
        setattr(self, f"{side}_sum", getattr(self, f"{side}_sum") + feats.sum(0))
        setattr(self, f"{side}_outer", getattr(self, f"{side}_outer") + feats.T @ feats)
        setattr(self, f"{side}_count", getattr(self, f"{side}_count") + feats.shape[0])

    def compute(self) -> Tensor:
        real = gaussian_from_sums(self.real_sum, self.real_outer, self.real_count)
        fake = gaussian_from_sums(self.fake_sum, self.fake_outer, self.fake_count)
        return torch.tensor(frechet_distance(*fake, *real))


def build_fvd(detector) -> FrechetVideoDistance:
    """FVD metric around ``detector``; its feature size is probed on one small zero clip."""
    param = next(detector.parameters(), None)
    probe = torch.zeros(1, 3, 8, 32, 32, dtype=torch.uint8, device=param.device if param is not None else "cpu")
    with torch.no_grad():
        num_features = detector(probe, rescale=True, resize=True, return_features=True).shape[-1]
    return FrechetVideoDistance(detector, int(num_features))
