"""The masked diffusion loss (Eq. 6 of the paper) on CogVideoX's v-prediction objective.

A v-prediction ``v`` at ``a = alphas_cumprod[t]`` gives the clean-latent estimate
``x0_hat = sqrt(a) z_t - sqrt(1 - a) v`` (:func:`x0_from_velocity`); with the weight
``w_t = 1 / (1 - a)`` the loss per sample is ``w_t * reduce(m * (x0_hat - x0)^2)``, ``m``
the latent visibility mask broadcast over channels (:func:`masked_loss`). ``normalize``:

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


def masked_loss(prediction: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                mask: torch.Tensor | None = None, normalize: str = "all") -> torch.Tensor:
    """Per-sample loss ``[B]`` (float32).

    ``prediction``, ``target``: ``[B, F, C, h, w]``; ``weight``: ``[B]``; ``mask``: ``[B, F, h, w]``
    bool (True = visible) or ``None``.
    """
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"unknown loss normalisation {normalize!r}; use one of {NORMALIZATIONS}")
    err = (prediction.float() - target.float()) ** 2
    weight = weight.float()
    if mask is None:
        return weight * err.flatten(1).mean(dim=1)
    if mask.shape != (err.shape[0], err.shape[1], *err.shape[3:]):
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not fit latents of shape {tuple(err.shape)}")
    m = mask.unsqueeze(2).to(err.dtype).expand_as(err)
    total = (err * m).flatten(1).sum(dim=1)
    count = m.flatten(1).sum(dim=1).clamp(min=1) if normalize == "visible" else float(m[0].numel())
    return weight * total / count
