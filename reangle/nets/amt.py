"""AMT-S frame interpolation (``networks/AMT-S.py`` of MCG-NKU/AMT, used by VBench's motion smoothness).

Checkpoint-compatible: module names equal the official ones (``feat_encoder``, ``encoder.pyramidN``,
``decoder4..1.convblock``, ``update4..2``, ``comb_block``), so the official ``amt-s.pth``
(``{"state_dict": ...}``) loads strictly.

Public API::

    AMTS(corr_radius=3, corr_levels=4, num_flows=3)
        forward(img0, img1, embt) -> imgt  # [B,3,H,W] in [0,1], embt [B,1,1,1] in (0,1)
    load_amt_s(source) -> AMTS            # "tiny" (random weights) or a .pth / .safetensors file

Inputs are frames in [0, 1] whose height and width are multiples of 16 and at least 128
(the coarsest of the four correlation levels, 1/64 of the frame, needs 2 x 2 cells).
Flows are in pixels, ``(x, y)`` channel order, backward: ``flow0`` maps frame t to frame 0.
"""
from __future__ import annotations

import os
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reangle.nets.dino import read_state_dict
from reangle.utils import build_with_weights, seeded

MIN_SIZE = 128
"""Smallest height/width the four-level correlation pyramid accepts."""
SIZE_MULTIPLE = 16
"""Height and width must be multiples of this (the 1/16 encoder level)."""


def resize(x: Tensor, scale_factor: float) -> Tensor:
    """Bilinear rescale (``align_corners=False``)."""
    return F.interpolate(x, scale_factor=scale_factor, mode="bilinear", align_corners=False)


def warp(image: Tensor, flow: Tensor) -> Tensor:
    """Backward warp: output[p] = image[p + flow[p]] (bilinear, border padding); flow [B,2,H,W] in pixels."""
    _, _, h, w = flow.shape
    xs = torch.linspace(-1.0, 1.0, w, device=flow.device, dtype=flow.dtype).view(1, w).expand(h, w)
    ys = torch.linspace(-1.0, 1.0, h, device=flow.device, dtype=flow.dtype).view(h, 1).expand(h, w)
    base = torch.stack((xs, ys), dim=-1)
    scale = flow.new_tensor([(w - 1.0) / 2.0, (h - 1.0) / 2.0])
    grid = base + flow.permute(0, 2, 3, 1) / scale
    return F.grid_sample(image, grid.to(image.dtype), mode="bilinear", padding_mode="border", align_corners=True)


def pixel_grid(batch: int, height: int, width: int, device: torch.device) -> Tensor:
    """Pixel coordinates ``[batch, 2, height, width]`` (channel 0: x, channel 1: y)."""
    ys, xs = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    return torch.stack((xs, ys)).float().expand(batch, -1, -1, -1)


def sample_pixels(volume: Tensor, coords: Tensor) -> Tensor:
    """Bilinear lookup of ``volume`` [N,C,H,W] at pixel coordinates ``coords`` [N,h,w,2] (x, y); zeros outside."""
    h, w = volume.shape[-2:]
    size = coords.new_tensor([w - 1, h - 1])
    return F.grid_sample(volume, 2 * coords / size - 1, align_corners=True)


def conv_prelu(in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, padding: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel, stride, padding), nn.PReLU(out_ch))


class BottleneckBlock(nn.Module):
    """1x1 -> 3x3 (stride) -> 1x1 residual bottleneck with instance norms (no affine parameters)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes // 4, 1)
        self.conv2 = nn.Conv2d(planes // 4, planes // 4, 3, padding=1, stride=stride)
        self.conv3 = nn.Conv2d(planes // 4, planes, 1)
        self.norm1 = nn.InstanceNorm2d(planes // 4)
        self.norm2 = nn.InstanceNorm2d(planes // 4)
        self.norm3 = nn.InstanceNorm2d(planes)
        self.downsample = None
        if stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride), nn.InstanceNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        y = F.relu(self.norm3(self.conv3(y)))
        if self.downsample is not None:
            x = self.downsample(x)
        return F.relu(x + y)


class SmallEncoder(nn.Module):
    """Correlation features at 1/8 resolution: [B,3,H,W] -> [B,output_dim,H/8,W/8]."""

    def __init__(self, output_dim: int = 84):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 7, stride=2, padding=3)
        self.norm1 = nn.InstanceNorm2d(32)
        self.layer1 = nn.Sequential(BottleneckBlock(32, 32), BottleneckBlock(32, 32))
        self.layer2 = nn.Sequential(BottleneckBlock(32, 64, stride=2), BottleneckBlock(64, 64))
        self.layer3 = nn.Sequential(BottleneckBlock(64, 96, stride=2), BottleneckBlock(96, 96))
        self.conv2 = nn.Conv2d(96, output_dim, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.norm1(self.conv1(x)))
        return self.conv2(self.layer3(self.layer2(self.layer1(x))))


class ResBlock(nn.Module):
    """Residual block whose last ``side_channels`` channels get two extra convolutions."""

    def __init__(self, channels: int, side_channels: int):
        super().__init__()
        self.side_channels = side_channels
        self.conv1 = conv_prelu(channels, channels)
        self.conv2 = conv_prelu(side_channels, side_channels)
        self.conv3 = conv_prelu(channels, channels)
        self.conv4 = conv_prelu(side_channels, side_channels)
        self.conv5 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.prelu = nn.PReLU(channels)

    def _side(self, x: Tensor, conv: nn.Module) -> Tensor:
        s = self.side_channels
        return torch.cat((x[:, :-s], conv(x[:, -s:])), dim=1)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv3(self._side(self.conv1(x), self.conv2))
        out = self.conv5(self._side(out, self.conv4))
        return self.prelu(x + out)


class Encoder(nn.Module):
    """Context pyramid: features at 1/2, 1/4, 1/8, 1/16 with ``channels`` channels."""

    def __init__(self, channels: list[int]):
        super().__init__()
        self.levels = len(channels)
        prev = 3
        for i, ch in enumerate(channels, 1):
            self.register_module(f"pyramid{i}", nn.Sequential(conv_prelu(prev, ch, 3, 2, 1), conv_prelu(ch, ch)))
            prev = ch

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        for i in range(1, self.levels + 1):
            x = getattr(self, f"pyramid{i}")(x)
            feats.append(x)
        return feats


class InitDecoder(nn.Module):
    """Coarsest decoder: both 1/16 features + t -> flows t->0, t->1 and frame-t features at 1/8."""

    def __init__(self, in_ch: int, out_ch: int, skip_ch: int):
        super().__init__()
        self.convblock = nn.Sequential(conv_prelu(in_ch * 2 + 1, in_ch * 2), ResBlock(in_ch * 2, skip_ch),
                                       nn.ConvTranspose2d(in_ch * 2, out_ch + 4, 4, 2, 1))

    def forward(self, f0: Tensor, f1: Tensor, embt: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        t = embt.expand(-1, 1, *f0.shape[2:])
        out = self.convblock(torch.cat((f0, f1, t), dim=1))
        return out[:, 0:2], out[:, 2:4], out[:, 4:]


class IntermediateDecoder(nn.Module):
    """Refines the flows and frame-t features one level up (x2), warping both frames' features."""

    def __init__(self, in_ch: int, out_ch: int, skip_ch: int):
        super().__init__()
        self.convblock = nn.Sequential(conv_prelu(in_ch * 3 + 4, in_ch * 3), ResBlock(in_ch * 3, skip_ch),
                                       nn.ConvTranspose2d(in_ch * 3, out_ch + 4, 4, 2, 1))

    def forward(self, ft: Tensor, f0: Tensor, f1: Tensor, flow0: Tensor,
                flow1: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = self.convblock(torch.cat((ft, warp(f0, flow0), warp(f1, flow1), flow0, flow1), dim=1))
        flow0 = out[:, 0:2] + 2.0 * resize(flow0, 2.0)
        flow1 = out[:, 2:4] + 2.0 * resize(flow1, 2.0)
        return flow0, flow1, out[:, 4:]


class MultiFlowDecoder(nn.Module):
    """Full-resolution decoder: ``num_flows`` flow pairs, blend masks and residual images."""

    def __init__(self, in_ch: int, skip_ch: int, num_flows: int):
        super().__init__()
        self.num_flows = num_flows
        self.convblock = nn.Sequential(conv_prelu(in_ch * 3 + 4, in_ch * 3), ResBlock(in_ch * 3, skip_ch),
                                       nn.ConvTranspose2d(in_ch * 3, 8 * num_flows, 4, 2, 1))

    def forward(self, ft: Tensor, f0: Tensor, f1: Tensor, flow0: Tensor, flow1: Tensor):
        """-> flow0, flow1 [B,2n,H,W], mask [B,n,H,W] in (0,1), residual [B,3n,H,W]."""
        n = self.num_flows
        out = self.convblock(torch.cat((ft, warp(f0, flow0), warp(f1, flow1), flow0, flow1), dim=1))
        delta0, delta1, mask, residual = torch.split(out, [2 * n, 2 * n, n, 3 * n], dim=1)
        flow0 = delta0 + 2.0 * resize(flow0, 2.0).repeat(1, n, 1, 1)
        flow1 = delta1 + 2.0 * resize(flow1, 2.0).repeat(1, n, 1, 1)
        return flow0, flow1, torch.sigmoid(mask), residual


class SmallUpdateBlock(nn.Module):
    """Residual update of frame-t features and both flows from the looked-up correlations.

    ``scale_factor`` s: the features/flows live at s x the correlation grid; they are
    downsampled by s for the update and the deltas upsampled back (flows scaled by s).
    """

    def __init__(self, cdim: int, hidden_dim: int = 76, flow_dim: int = 20, corr_dim: int = 64, fc_dim: int = 68,
                 corr_levels: int = 4, radius: int = 3, scale_factor: int | None = None):
        super().__init__()
        corr_planes = corr_levels * (2 * radius + 1) ** 2
        self.scale_factor = scale_factor
        self.convc1 = nn.Conv2d(2 * corr_planes, corr_dim, 1)
        self.convf1 = nn.Conv2d(4, flow_dim * 2, 7, padding=3)
        self.convf2 = nn.Conv2d(flow_dim * 2, flow_dim, 3, padding=1)
        self.conv = nn.Conv2d(corr_dim + flow_dim, fc_dim, 3, padding=1)
        self.gru = self._head(fc_dim + 4 + cdim, hidden_dim, hidden_dim)
        self.feat_head = self._head(hidden_dim, hidden_dim, cdim)
        self.flow_head = self._head(hidden_dim, hidden_dim, 4)

    @staticmethod
    def _head(in_ch: int, hidden: int, out_ch: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(in_ch, hidden, 3, padding=1), nn.LeakyReLU(0.1),
                             nn.Conv2d(hidden, out_ch, 3, padding=1))

    def forward(self, feat: Tensor, flow: Tensor, corr: Tensor) -> tuple[Tensor, Tensor]:
        s = self.scale_factor
        if s is not None:
            feat = resize(feat, 1 / s)
        corr = F.leaky_relu(self.convc1(corr), 0.1)
        motion = F.leaky_relu(self.convf2(F.leaky_relu(self.convf1(flow), 0.1)), 0.1)
        motion = F.leaky_relu(self.conv(torch.cat((corr, motion), dim=1)), 0.1)
        hidden = self.gru(torch.cat((motion, flow, feat), dim=1))
        delta_feat, delta_flow = self.feat_head(hidden), self.flow_head(hidden)
        if s is not None:
            delta_feat = resize(delta_feat, s)
            delta_flow = s * resize(delta_flow, s)
        return delta_feat, delta_flow


class BidirCorrelation:
    """All-pairs correlation volume of two feature maps (both directions), pooled into ``levels`` levels.

    ``lookup(coords0, coords1)`` samples a (2r+1)^2 window per level around ``coords0`` in
    frame 1 (volume 0->1) and around ``coords1`` in frame 0 (volume 1->0). As in the
    reference (and RAFT), the window's row index offsets x and its column index offsets y.
    """

    def __init__(self, fmap0: Tensor, fmap1: Tensor, levels: int, radius: int):
        b, c, h, w = fmap0.shape
        corr = torch.matmul(fmap0.flatten(2).transpose(1, 2), fmap1.flatten(2)) / torch.sqrt(torch.tensor(float(c)))
        self.radius = radius
        volume = corr.reshape(b * h * w, 1, h, w)
        volume_t = corr.transpose(1, 2).reshape(b * h * w, 1, h, w)
        self.pyramid, self.pyramid_t = [volume], [volume_t]
        for _ in range(levels - 1):
            self.pyramid.append(F.avg_pool2d(self.pyramid[-1], 2, stride=2))
            self.pyramid_t.append(F.avg_pool2d(self.pyramid_t[-1], 2, stride=2))

    def _window(self, device: torch.device) -> Tensor:
        r = self.radius
        d = torch.arange(-r, r + 1, device=device, dtype=torch.float32)
        rows, cols = torch.meshgrid(d, d, indexing="ij")
        return torch.stack((rows, cols), dim=-1).view(1, 2 * r + 1, 2 * r + 1, 2)

    def lookup(self, coords0: Tensor, coords1: Tensor) -> tuple[Tensor, Tensor]:
        """coords [B,2,h,w] in pixels of the 1/8 grid -> two [B, levels*(2r+1)^2, h, w] feature maps."""
        b, _, h, w = coords0.shape
        window = self._window(coords0.device)
        outs = []
        for coords, pyramid in ((coords0, self.pyramid), (coords1, self.pyramid_t)):
            centres = coords.permute(0, 2, 3, 1).reshape(b * h * w, 1, 1, 2)
            levels = [sample_pixels(volume, centres / 2 ** i + window).view(b, h, w, -1)
                      for i, volume in enumerate(pyramid)]
            outs.append(torch.cat(levels, dim=-1).permute(0, 3, 1, 2).contiguous().float())
        return outs[0], outs[1]


class AMTS(nn.Module):
    """AMT-S: interpolates the frame at time ``embt`` between ``img0`` (t=0) and ``img1`` (t=1)."""

    def __init__(self, corr_radius: int = 3, corr_levels: int = 4, num_flows: int = 3,
                 channels: tuple[int, ...] = (20, 32, 44, 56), skip_channels: int = 20):
        super().__init__()
        self.radius = corr_radius
        self.corr_levels = corr_levels
        self.num_flows = num_flows
        self.feat_encoder = SmallEncoder(output_dim=84)
        self.encoder = Encoder(list(channels))
        self.decoder4 = InitDecoder(channels[3], channels[2], skip_channels)
        self.decoder3 = IntermediateDecoder(channels[2], channels[1], skip_channels)
        self.decoder2 = IntermediateDecoder(channels[1], channels[0], skip_channels)
        self.decoder1 = MultiFlowDecoder(channels[0], skip_channels, num_flows)
        self.update4 = self._update_block(channels[2])
        self.update3 = self._update_block(channels[1], 2)
        self.update2 = self._update_block(channels[0], 4)
        self.comb_block = nn.Sequential(nn.Conv2d(3 * num_flows, 6 * num_flows, 3, 1, 1), nn.PReLU(6 * num_flows),
                                        nn.Conv2d(6 * num_flows, 3, 3, 1, 1))

    def _update_block(self, cdim: int, scale_factor: int | None = None) -> SmallUpdateBlock:
        return SmallUpdateBlock(cdim, corr_levels=self.corr_levels, radius=self.radius, scale_factor=scale_factor)

    @staticmethod
    def _lookup(corr: BidirCorrelation, grid: Tensor, flow0: Tensor, flow1: Tensor, embt: Tensor,
                downsample: int) -> tuple[Tensor, Tensor]:
        """Correlations at the 0->1 and 1->0 flows extrapolated linearly from the t->1 / t->0 flows."""
        if downsample != 1:
            flow0 = resize(flow0, 1 / downsample) / downsample
            flow1 = resize(flow1, 1 / downsample) / downsample
        corr0, corr1 = corr.lookup(grid + flow1 / embt, grid + flow0 / (1.0 - embt))
        return torch.cat((corr0, corr1), dim=1), torch.cat((flow0, flow1), dim=1)

    def _refine(self, update: SmallUpdateBlock, corr: BidirCorrelation, grid: Tensor, flow0: Tensor,
                flow1: Tensor, feat: Tensor, embt: Tensor, downsample: int) -> tuple[Tensor, Tensor, Tensor]:
        corr_feat, flow = self._lookup(corr, grid, flow0, flow1, embt, downsample)
        delta_feat, delta_flow = update(feat, flow, corr_feat)
        return flow0 + delta_flow[:, 0:2], flow1 + delta_flow[:, 2:4], feat + delta_feat

    def forward(self, img0: Tensor, img1: Tensor, embt: Tensor) -> Tensor:
        """img0, img1 [B,3,H,W] in [0,1] (H, W multiples of 16, >= 128), embt [B,1,1,1] -> [B,3,H,W] in [0,1]."""
        mean = torch.cat((img0, img1), dim=2).mean(dim=(1, 2, 3), keepdim=True)
        img0, img1 = img0 - mean, img1 - mean
        b, _, h, w = img0.shape
        grid = pixel_grid(b, h // 8, w // 8, img0.device)
        fmap0, fmap1 = self.feat_encoder(torch.cat((img0, img1), dim=0)).chunk(2, dim=0)
        corr = BidirCorrelation(fmap0, fmap1, self.corr_levels, self.radius)
        f0_1, f0_2, f0_3, f0_4 = self.encoder(img0)
        f1_1, f1_2, f1_3, f1_4 = self.encoder(img1)

        flow0, flow1, feat = self.decoder4(f0_4, f1_4, embt)
        flow0, flow1, feat = self._refine(self.update4, corr, grid, flow0, flow1, feat, embt, 1)
        flow0, flow1, feat = self.decoder3(feat, f0_3, f1_3, flow0, flow1)
        flow0, flow1, feat = self._refine(self.update3, corr, grid, flow0, flow1, feat, embt, 2)
        flow0, flow1, feat = self.decoder2(feat, f0_2, f1_2, flow0, flow1)
        flow0, flow1, feat = self._refine(self.update2, corr, grid, flow0, flow1, feat, embt, 4)
        flow0, flow1, mask, residual = self.decoder1(feat, f0_1, f1_1, flow0, flow1)
        return self._combine(img0, img1, flow0, flow1, mask, residual, mean).clamp(0, 1)

    def _combine(self, img0: Tensor, img1: Tensor, flow0: Tensor, flow1: Tensor, mask: Tensor,
                 residual: Tensor, mean: Tensor) -> Tensor:
        """Blend the ``num_flows`` warped candidates: their mean plus the ``comb_block`` correction."""
        b, _, h, w = img0.shape
        n = self.num_flows
        warped0 = warp(img0.repeat_interleave(n, dim=0), flow0.reshape(b * n, 2, h, w))
        warped1 = warp(img1.repeat_interleave(n, dim=0), flow1.reshape(b * n, 2, h, w))
        mask = mask.reshape(b * n, 1, h, w)
        candidates = mask * warped0 + (1 - mask) * warped1 + mean.repeat_interleave(n, dim=0)
        candidates = (candidates + residual.reshape(b * n, 3, h, w)).reshape(b, n, 3, h, w)
        return candidates.mean(dim=1) + self.comb_block(candidates.reshape(b, n * 3, h, w))


def load_amt_s(source: str | os.PathLike, *, device: str | torch.device = "cpu") -> AMTS:
    """AMT-S in eval mode with frozen weights: ``"tiny"`` (the full architecture at seeded random
    init, for tests) or a local ``.pth`` / ``.safetensors`` checkpoint (loaded strictly)."""
    if str(source) == "tiny":
        with seeded(0):
            model = AMTS()
    else:
        model = build_with_weights(AMTS, read_state_dict(source, "AMT-S checkpoint"), f"AMT-S checkpoint {source}")
    return model.to(device).eval().requires_grad_(False)
