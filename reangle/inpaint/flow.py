"""Steps of a rectified-flow sampler, in diffusers' convention.

Convention (diffusers' flow matching, FLUX): ``sigma`` runs from 1 (noise) to 0 (data),
``x_sigma = (1 - sigma) x0 + sigma * noise``, and the model, called with
``timestep = sigma``, predicts ``u = noise - x0``. The paper writes ``t = 1 - sigma``
(noise at t = 0) and ``v = -u``; its Eq. 7, the SDE with the ODE's marginals,

    dZ_t = v dt - Z_{0|t} (1 - t) dt + sqrt(2 (1 - t)^2) dW_t,   Z_{0|t} = Z_t - t v,

becomes, for one Euler-Maruyama step from ``sigma`` to ``sigma_next < sigma``
(``dt = sigma - sigma_next``, ``Z_{0|t}`` is the noise estimate ``x + (1 - sigma) u``):

    x_next = x - u dt - sigma * noise_hat * dt + sqrt(2) * sigma * sqrt(dt) * xi,   xi ~ N(0, I).

All functions work on any tensor shape and broadcast ``sigma``.
"""
from __future__ import annotations

import math

from torch import Tensor


def clean_estimate(sample: Tensor, model_output: Tensor, sigma: float) -> Tensor:
    """x0 estimate ``x - sigma * u`` (the paper's ``z + (1 - t) v``)."""
    return sample - sigma * model_output


def noise_estimate(sample: Tensor, model_output: Tensor, sigma: float) -> Tensor:
    """Noise estimate ``x + (1 - sigma) * u`` (the paper's ``Z_{0|t} = z - t v``)."""
    return sample + (1 - sigma) * model_output


def ode_step(sample: Tensor, model_output: Tensor, sigma: float, sigma_next: float) -> Tensor:
    """Euler step of the probability-flow ODE from ``sigma`` to ``sigma_next``."""
    return sample + (sigma_next - sigma) * model_output


def sde_step(sample: Tensor, model_output: Tensor, sigma: float, sigma_next: float, noise: Tensor) -> Tensor:
    """Euler-Maruyama step of the marginal-preserving SDE (paper Eq. 7) from ``sigma`` to ``sigma_next``.

    ``noise`` is standard normal, broadcast against ``sample`` (e.g. ``(S, ...)`` noise and a
    ``(1, ...)`` sample give S candidates).
    """
    dt = sigma - sigma_next
    drift = -model_output - sigma * noise_estimate(sample, model_output, sigma)
    return sample + drift * dt + math.sqrt(2 * dt) * sigma * noise
