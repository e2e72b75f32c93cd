"""The Fréchet distance between two Gaussians, shared by FID checks and FVD.

d^2 = |mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)). The trace of the matrix square
root is the sum of the square roots of the eigenvalues of S_1 S_2 (real and >= 0 for
covariance matrices; tiny negative or complex round-off is dropped), computed in float64.
"""
from __future__ import annotations

import torch
from torch import Tensor


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> float:
    """Fréchet distance of N(mu1 ``[D]``, sigma1 ``[D, D]``) and N(mu2, sigma2)."""
    mu1, sigma1, mu2, sigma2 = (t.double() for t in (mu1, sigma1, mu2, sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.numel(),) * 2:
        raise ValueError(f"Fréchet distance needs means [D] and covariances [D, D] of one size, got "
                         f"{tuple(mu1.shape)}, {tuple(sigma1.shape)}, {tuple(mu2.shape)}, {tuple(sigma2.shape)}")
    trace_sqrt = torch.linalg.eigvals(sigma1 @ sigma2).sqrt().real.sum()
    return float((mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt)


def gaussian_from_sums(total: Tensor, outer_total: Tensor, count: int | Tensor,
                       biased: bool = False) -> tuple[Tensor, Tensor]:
    """Mean ``[D]`` and covariance ``[D, D]`` (divided by N - 1, or by N when ``biased`` as StyleGAN-V's
    ``FeatureStats``) from the sum of features, the sum of their outer products and their number (the
    running statistics a distributed metric keeps)."""
    count = int(count)
    if count < 2:
        raise ValueError(f"a Fréchet distance needs at least 2 feature vectors per set, got {count}; "
                         f"evaluate more videos (or more clips/frames per video)")
    mean = total.double() / count
    cov = (outer_total.double() - count * torch.outer(mean, mean)) / (count if biased else count - 1)
    return mean, cov


def small_sample_warning(name: str, num_reference: int, num_generated: int, dim: int) -> str | None:
    """A warning when either side has fewer samples than feature dimensions: the covariance is then
    singular and the distance is dominated by small-sample bias (pool more videos, README "FVD protocols")."""
    if min(num_reference, num_generated) >= dim:
        return None
    return (f"{name}: {num_reference} reference and {num_generated} generated samples for {dim}-d features; with "
            f"fewer samples than dimensions the estimate is dominated by small-sample bias, so compare it only with "
            f"scores at the same counts (pool runs: python -m eval --runs A B ... --reference DIR)")


def feature_statistics(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and unbiased covariance of features ``[N, D]``."""
    features = features.double()
    return gaussian_from_sums(features.sum(0), features.T @ features, features.shape[0])


def frechet_distance_of_features(features1: Tensor, features2: Tensor) -> float:
    """Fréchet distance of the Gaussians fitted to features ``[N1, D]`` and ``[N2, D]``."""
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))
