"""Warp fidelity: how closely a generated view follows its warped video where the warp saw the scene.

Beyond the paper. For a generated view and its warped video from Omega (``video.mp4``,
``mask.npz``; mask 1 = visible), over the visible pixels only:

- **masked PSNR** — ``10 log10(max_value^2 / MSE)`` with the MSE pooled over the visible
  pixels (all channels) of all frames; ``inf`` for identical visible pixels, NaN when
  nothing is visible.
- **masked LPIPS** — both videos are set to 0 where the mask is 0, so what lies under it
  cannot matter; LPIPS's spatial distance map is then averaged over the visible pixels
  of all frames (NaN when nothing is visible).

LPIPS is the ``lpips`` package's network (AlexNet backbone by default) built by
:func:`load_lpips`. Its calibrated linear heads ship inside the package; the ImageNet
backbone comes from torchvision, which downloads it unless it is cached, so a local
torchvision checkpoint can be given instead, and ``"tiny"`` keeps a random backbone
(tests; the numbers then mean nothing). Frames ``[N, 3, H, W]`` float in [0, 1].
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import Tensor

LPIPS_NETS = ("alex", "vgg")
LPIPS_TORCHVISION = "torchvision"
LPIPS_TINY = "tiny"


def _check(generated: Tensor, warped: Tensor, mask: Tensor) -> None:
    if generated.shape != warped.shape or generated.ndim != 4 or generated.shape[1] != 3:
        raise ValueError(f"the generated and warped videos must both be [N, 3, H, W] of one size, got "
                         f"{tuple(generated.shape)} and {tuple(warped.shape)}; resample one to the other first")
    if mask.shape != (generated.shape[0], *generated.shape[2:]):
        raise ValueError(f"the mask must be [N, H, W] = {(generated.shape[0], *generated.shape[2:])}, "
                         f"got {tuple(mask.shape)}")


def masked_psnr(generated: Tensor, warped: Tensor, mask: Tensor, max_value: float = 1.0) -> float:
    """PSNR in dB over the pixels where ``mask [N, H, W]`` is 1 (see the module docstring)."""
    _check(generated, warped, mask)
    weight = mask.to(torch.float64).unsqueeze(1)
    visible = 3 * weight.sum()
    if visible == 0:
        return math.nan
    mse = ((generated.double() - warped.double()).square() * weight).sum() / visible
    return math.inf if mse == 0 else 10 * math.log10(max_value ** 2 / mse.item())


def _lpips_backbone_state(path: Path) -> dict[str, Tensor]:
    """A torchvision AlexNet/VGG16 checkpoint (``.pth``/``.safetensors``) -> lpips backbone keys.

    torchvision's ``features.<i>.*`` become ``net.slice<k>.<i>.*``: lpips keeps the layer
    numbers and splits ``features`` into slices.
    """
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    return {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}


def load_lpips(backbone: str | os.PathLike = LPIPS_TORCHVISION, net: str = "alex",
               device: str | torch.device = "cpu"):
    """An ``lpips.LPIPS`` (spatial output) in eval mode without gradients.

    ``backbone``: ``"torchvision"`` (torchvision's ImageNet weights, downloaded into its
    cache if missing), a local torchvision checkpoint of ``net`` (e.g.
    ``alexnet-owt-7be5be79.pth``, ``vgg16-397923af.pth``), or ``"tiny"`` (random backbone).
    The linear heads are the package's own v0.1 weights in every case.
    """
    import lpips

    if net not in LPIPS_NETS:
        raise ValueError(f"unknown LPIPS network {net!r}; use one of {LPIPS_NETS}")
    path = None
    if str(backbone) not in (LPIPS_TORCHVISION, LPIPS_TINY):
        path = Path(backbone)
        if not path.is_file():
            raise FileNotFoundError(f"LPIPS backbone {str(backbone)!r} is neither 'torchvision', 'tiny' nor an "
                                    f"existing torchvision {net} checkpoint file")
    model = lpips.LPIPS(net=net, pretrained=False, pnet_rand=str(backbone) != LPIPS_TORCHVISION,
                        spatial=True, verbose=False)
    heads = Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth"
    model.load_state_dict(torch.load(heads, map_location="cpu", weights_only=True), strict=False)
    if path is not None:
        state = _lpips_backbone_state(path)
        expected = {name for name, _ in model.net.named_parameters()}
        renamed = {name: state.get(name.split(".", 1)[1]) for name in expected}
        missing = sorted(name for name, value in renamed.items() if value is None)
        if missing:
            raise ValueError(f"{path} is not a torchvision {net} checkpoint: no weights for {missing[:4]}")
        model.net.load_state_dict(renamed, strict=True)
    return model.to(device).eval().requires_grad_(False)


@torch.no_grad()
def masked_lpips(model, generated: Tensor, warped: Tensor, mask: Tensor, batch_size: int = 8) -> float:
    """LPIPS over the pixels where ``mask [N, H, W]`` is 1 (see the module docstring).

    ``model``: :func:`load_lpips`'s network; frames run ``batch_size`` at a time.
    """
    _check(generated, warped, mask)
    device = next(model.parameters()).device
    total, visible = 0.0, 0.0
    for start in range(0, len(generated), batch_size):
        m = mask[start:start + batch_size].to(device=device, dtype=torch.float32).unsqueeze(1)
        a = generated[start:start + batch_size].to(device=device, dtype=torch.float32) * m
        b = warped[start:start + batch_size].to(device=device, dtype=torch.float32) * m
        distance = model(a, b, normalize=True)          # [B, 1, H, W]
        total += (distance.double() * m).sum().item()
        visible += m.sum().item()
    return total / visible if visible else math.nan


def warp_fidelity(generated: Tensor, warped: Tensor, mask: Tensor, lpips_model=None,
                  batch_size: int = 8) -> dict[str, float]:
    """``{"psnr": dB, "lpips": distance}`` of one view (``lpips`` only with ``lpips_model``)."""
    scores = {"psnr": masked_psnr(generated, warped, mask)}
    if lpips_model is not None:
        scores["lpips"] = masked_lpips(lpips_model, generated, warped, mask, batch_size)
    return scores
