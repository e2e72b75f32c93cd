"""Reward-guided stochastic sampling: S candidates per step, the best one continues (paper Alg. 2).

One search runs K views jointly (K = 1: a view scored against finished ones; K = 2: the first
two views, all S^2 pairs scored). Per step and view, S candidates are drawn with
:func:`~reangle.inpaint.flow.sde_step` from the current state; the model is evaluated at each,
their clean estimates are decoded and scored, and the candidate (tuple) with the LOWEST score
continues. The chosen candidate's model output is the next step's velocity, so a view costs
``1 + S * (T - 1)`` model calls for T steps (the last step is a deterministic ODE step).

Several ranks split the S candidates of each step (contiguous slices); scores are gathered,
every rank makes the same choice and the chosen model output is broadcast from its owner, so
the result does not depend on the number of ranks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import torch
from torch import Tensor

from .flow import clean_estimate, ode_step, sde_step


class Candidates(Protocol):
    """What a search needs from the model side, per view index ``k``."""

    def velocity(self, k: int, latents: Tensor, sigma: float) -> Tensor:
        """Model output ``u`` (B, ...) at latents (B, ...) and noise level ``sigma``."""

    def decode(self, k: int, clean: Tensor) -> Tensor:
        """Clean latents (B, ...) -> what :meth:`score` takes (e.g. images (B, 3, H, W) in [-1, 1])."""

    def score(self, decoded: Sequence[Tensor]) -> Tensor:
        """K decoded batches (B_1, ...), ..., (B_K, ...) -> terms (B_1, ..., B_K, P) whose mean is the score
        (:func:`mean_of_terms`); lower is better, inf = never."""


class Ranks:
    """The process group a search is split over; the default is one process."""

    rank = 0
    world_size = 1

    def gather(self, local: Tensor) -> Tensor:
        """Every rank's ``local`` (sizes may differ along dim 0) concatenated in rank order."""
        return local

    def broadcast(self, tensor: Tensor | None, src: int, like: Tensor) -> Tensor:
        """``tensor`` of rank ``src`` on every rank (``like``: its shape and dtype, for the receivers)."""
        return tensor


class TorchRanks(Ranks):
    """:class:`Ranks` over the default ``torch.distributed`` group (gloo or NCCL)."""

    def __init__(self, device: torch.device):
        import torch.distributed as dist

        self.dist, self.device = dist, device
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()

    def gather(self, local: Tensor) -> Tensor:
        sizes = [torch.zeros(1, dtype=torch.long, device=self.device) for _ in range(self.world_size)]
        self.dist.all_gather(sizes, torch.tensor([local.shape[0]], device=self.device))
        longest = int(max(s.item() for s in sizes))
        padded = local.new_zeros((longest, *local.shape[1:]))
        padded[: local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        self.dist.all_gather(parts, padded.contiguous())
        return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])

    def broadcast(self, tensor: Tensor | None, src: int, like: Tensor) -> Tensor:
        buffer = tensor.contiguous() if self.rank == src else torch.empty_like(like)
        self.dist.broadcast(buffer, src)
        return buffer


@dataclass
class SearchResult:
    """Final latents per view (each shaped like the initial ones), the chosen score per
    guided step (``inf``: no candidate was valid; NaN: nothing scored), the indices of the score
    terms left out per guided step (:func:`mean_of_terms`), and the model calls (all ranks)."""

    latents: list[Tensor]
    scores: list[float] = field(default_factory=list)
    left_out: list[list[int]] = field(default_factory=list)
    model_calls: int = 0


def slices(count: int, world_size: int) -> list[range]:
    """Contiguous index ranges of ``count`` items over ``world_size`` ranks (sizes differ by <= 1)."""
    bounds = torch.linspace(0, count, world_size + 1).round().long().tolist()
    return [range(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def mean_of_terms(terms: Tensor) -> tuple[Tensor, list[int]]:
    """Score table (B_1, ..., B_K) of ``terms`` (B_1, ..., B_K, P): the mean over the terms that some
    candidate tuple passes (a finite value), and the indices of the terms left out (``inf`` or NaN
    for every tuple: e.g. a finished view no candidate overlaps enough). A tuple failing a term
    that others pass scores ``inf``; with every term left out every tuple does."""
    passes = torch.isfinite(terms).flatten(0, -2).any(dim=0)
    if not passes.any():
        return torch.full(terms.shape[:-1], float("inf"), dtype=terms.dtype, device=terms.device), \
            list(range(terms.shape[-1]))
    table = terms[..., passes].nan_to_num(nan=float("inf"), posinf=float("inf")).mean(dim=-1)
    return table, (~passes).nonzero().flatten().tolist()


def select_best(table: Tensor) -> tuple[tuple[int, ...], float]:
    """Index tuple and value of the minimum of a score table (NaN counts as inf; ties: first)."""
    flat = table.float().nan_to_num(nan=float("inf"), posinf=float("inf")).flatten()
    best = int(torch.argmin(flat))
    return tuple(int(i) for i in torch.unravel_index(torch.tensor(best), table.shape)), float(flat[best])


def guided_sample(model: Candidates, initial: Sequence[Tensor], sigmas: Sequence[float], num_candidates: int,
                  generator: torch.Generator, *, stochastic: bool = True, ranks: Ranks | None = None,
                  on_step: Callable[[int, int, float], None] | None = None) -> SearchResult:
    """Sample K views jointly from ``initial`` noise (K tensors (1, ...)) along ``sigmas`` (T + 1 values, 1 -> 0).

    ``num_candidates`` = S per view and step; S = 1 (or ``stochastic=False``, the ODE, which
    forces S = 1) is the plain unguided sampler and calls no score. With fewer candidates than
    ranks every rank computes all of them. Candidate noise comes from
    ``generator`` (CPU), identical on every rank. ``on_step(step, steps, score)`` after each step.
    """
    sigmas = [float(s) for s in sigmas]
    if len(sigmas) < 2 or sigmas[-1] != 0.0:
        raise ValueError(f"sigmas must hold T + 1 >= 2 decreasing values ending at 0, got {sigmas}")
    if num_candidates < 1:
        raise ValueError(f"the number of candidates must be >= 1, got {num_candidates}")
    count = num_candidates if stochastic else 1
    ranks = ranks if ranks is not None and count >= ranks.world_size else Ranks()  # fewer candidates: no split
    mine = slices(count, ranks.world_size)
    owners = [r for r, part in enumerate(mine) for _ in part]
    local = mine[ranks.rank]
    views = range(len(initial))
    latents = [z.clone() for z in initial]
    outputs = [model.velocity(k, latents[k], sigmas[0]) for k in views]
    result = SearchResult(latents, model_calls=len(initial))
    steps = len(sigmas) - 1
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        if i == steps - 1:  # the last step is deterministic
            latents = [ode_step(latents[k], outputs[k], sigma, sigma_next) for k in views]
            if on_step is not None:
                on_step(i, steps, float("nan"))
            break
        candidates = []
        for k in views:
            if stochastic:
                noise = torch.randn((count, *latents[k].shape[1:]), generator=generator, dtype=torch.float32)
                candidates.append(sde_step(latents[k], outputs[k], sigma, sigma_next,
                                           noise.to(latents[k].device, latents[k].dtype)))
            else:
                candidates.append(ode_step(latents[k], outputs[k], sigma, sigma_next))
        local_out = [model.velocity(k, candidates[k][local.start:local.stop], sigma_next) for k in views]
        result.model_calls += count * len(initial)
        left_out: list[int] = []
        if count == 1:
            choice, value = (0,) * len(initial), float("nan")
        else:
            decoded = [model.decode(k, clean_estimate(candidates[k][local.start:local.stop], local_out[k], sigma_next))
                       for k in views]
            others = [ranks.gather(d) for d in decoded[1:]]
            rows = model.score([decoded[0], *others])
            table, left_out = mean_of_terms(ranks.gather(rows))   # over every rank's candidates: the same choice
            choice, value = select_best(table)
        for k in views:
            j = choice[k]
            owned = local_out[k][j - local.start:j - local.start + 1] if owners[j] == ranks.rank else None
            outputs[k] = ranks.broadcast(owned, owners[j], like=candidates[k][j:j + 1])
            latents[k] = candidates[k][j:j + 1]
        result.scores.append(value)
        result.left_out.append(left_out)
        if on_step is not None:
            on_step(i, steps, value)
    result.latents = latents
    return result
