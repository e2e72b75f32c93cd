"""FID between generated frames and reference frames: torchmetrics' ``FrechetInceptionDistance``.

Real use: the 2048-d pool features of torch-fidelity's FID Inception
(``pt_inception-2015-12-05``) loaded from a local weights file
(``feature_extractor_weights_path``). ``"tiny"``: a small fixed random convolutional
feature extractor (tests, demo). Every frame of every video is one sample, given to the
metric as its uint8 levels (rounded, as decoded; torchmetrics' ``normalize=True`` would
truncate) and resized to 299 x 299 by torch-fidelity's TF1-style bilinear resize
(``antialias=False``: torchmetrics >= 1.8 antialiases by default, which torch-fidelity and
the TF FID do not). The metric's states are sums, so ranks that each update with their own
videos agree after torchmetrics' state sync.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance

from reangle.io.video import uint8_levels

TINY_FEATURES = 16


class TinyImageFeatures(nn.Module):
    """Random (seeded) conv features ``[B, 16]`` of uint8 images ``[B, 3, H, W]``."""

    num_features = TINY_FEATURES

    def __init__(self, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, TINY_FEATURES, 3, stride=2),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())
        for param in self.net.parameters():
            param.data = torch.randn(param.shape, generator=generator) * 0.5
        self.requires_grad_(False)

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images.float() / 255)


def build_fid(source: str | os.PathLike) -> FrechetInceptionDistance:
    """FID metric (uint8 frames ``[B, 3, H, W]``) from ``"tiny"`` or an Inception weights file."""
    if str(source) == "tiny":
        return FrechetInceptionDistance(feature=TinyImageFeatures(), normalize=False)
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"FID Inception weights {path} not found (pt_inception-2015-12-05-6726825d.pth)")
    try:
        # torch-fidelity unpickles the file without restrictions: refuse anything but plain tensors first
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"FID Inception weights {path} are not a plain state dict of tensors: {exc}") from exc
    return FrechetInceptionDistance(feature=2048, normalize=False, antialias=False,
                                    feature_extractor_weights_path=str(path))


def update_fid(metric: FrechetInceptionDistance, frames: Tensor, real: bool, batch_size: int) -> None:
    """Add frames ``[N, 3, H, W]`` in [0, 1] (reference: ``real=True``) in batches, as their uint8 levels."""
    device = metric.device
    for batch in frames.split(batch_size):
        metric.update(uint8_levels(batch).to(device), real=real)


def fid_counts(metric: FrechetInceptionDistance) -> tuple[int, int, int]:
    """(reference samples, generated samples, feature dimension) of an FID metric."""
    return (int(metric.real_features_num_samples), int(metric.fake_features_num_samples),
            metric.real_features_sum.numel())
