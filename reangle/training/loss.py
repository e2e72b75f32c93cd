"""The masked diffusion loss on CogVideoX's v-prediction objective.

With ``a = alphas_cumprod[t]`` the model's velocity ``v`` gives the clean-latent estimate
``x0_hat = sqrt(a) z_t - sqrt(1 - a) v``; the loss per sample is
``w_t * reduce(m * (x0_hat - x0)^2)`` with ``w_t = 1 / (1 - a)`` and ``m`` the latent
visibility mask (broadcast over channels). ``normalize``:

* ``"all"`` - mean over every latent element, visible or not (the authors' released code);
* ``"visible"`` - sum divided by the number of visible elements.

Without a mask (``mask=None``) both are the plain CogVideoX loss.
"""
from __future__ import annotations

import torch

NORMALIZATIONS = ("all", "visible")


def x0_from_velocity(velocity: torch.Tensor, noisy: torch.Tensor, alphas_cumprod_t: torch.Tensor) -> torch.Tensor:
    """Clean estimate from a v-prediction; ``alphas_cumprod_t`` is ``[B]``, tensors ``[B, ...]``."""
    a = alphas_cumprod_t.reshape(-1, *([1] * (noisy.dim() - 1))).to(noisy.dtype)
    return a.sqrt() * noisy - (1 - a).sqrt() * velocity


def masked_v_loss(velocity: torch.Tensor, noisy: torch.Tensor, x0: torch.Tensor, alphas_cumprod_t: torch.Tensor,
                  mask: torch.Tensor | None = None, normalize: str = "all") -> torch.Tensor:
    """Per-sample loss ``[B]`` (float32).

    ``velocity``, ``noisy``, ``x0``: ``[B, F, C, h, w]`` latents; ``alphas_cumprod_t``: ``[B]``;
    ``mask``: ``[B, F, h, w]`` bool (True = visible) or ``None``.
    """
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"unknown loss normalisation {normalize!r}; use one of {NORMALIZATIONS}")
    x0_hat = x0_from_velocity(velocity.float(), noisy.float(), alphas_cumprod_t.float())
    err = (x0_hat - x0.float()) ** 2
    weight = 1.0 / (1.0 - alphas_cumprod_t.float())
    if mask is None:
        return weight * err.flatten(1).mean(dim=1)
    m = mask.unsqueeze(2).to(err.dtype).expand_as(err)
    total = (err * m).flatten(1).sum(dim=1)
    count = m.flatten(1).sum(dim=1).clamp(min=1) if normalize == "visible" else float(m[0].numel())
    return weight * total / count
