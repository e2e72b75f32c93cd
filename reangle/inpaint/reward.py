"""The consistency reward of stage III: MEt3R of candidates against each other and finished views.

Scores are MEt3R values (lower = more consistent). A pair whose renders share fewer than
``min_overlap`` (a fraction of the pixels) scores ``inf``: MEt3R gives 0 to pairs that do
not overlap at all, which would otherwise make a candidate that shares nothing with the
finished views look perfect. A pair that NO candidate passes (e.g. a finished view on the
other side of the scene) says nothing about which candidate is better: the search leaves it
out of the mean (:func:`reangle.inpaint.search.mean_of_terms`) and records it. Every image's MEt3R inputs (its features and the point model's
encoder tokens) are computed once per table (the finished views' once per search, passed
in) and shared by all the pairs it is in.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor


class ImageInputs(NamedTuple):
    """Per-image MEt3R inputs of a batch: features (N, C, s, s) and encoder tokens (N, L, D) or None."""

    features: Tensor
    encodings: Tensor | None

    @classmethod
    def of(cls, met3r, images: Tensor) -> "ImageInputs":
        """The inputs of ``images`` (N, 3, H, W), computed for the images of ``met3r.max_pairs_per_chunk`` pairs
        at a time (the feature networks' activations are bounded as the pairs' are; each image is its own)."""
        step = 2 * getattr(met3r, "max_pairs_per_chunk", len(images))
        parts = [(met3r.image_features(x), met3r.image_encodings(x)) for x in images.split(max(1, step))]
        encodings = None if parts[0][1] is None else torch.cat([e for _, e in parts])
        return cls(torch.cat([f for f, _ in parts]), encodings)


def guard_overlap(scores: Tensor, overlap: Tensor, min_overlap: float) -> Tensor:
    """``scores`` (B,) with ``inf`` where the overlap fraction (B,) is below ``min_overlap``."""
    return torch.where(overlap >= min_overlap, scores, torch.full_like(scores, float("inf")))


def pair_scores(met3r, first: Tensor, second: Tensor, min_overlap: float,
                inputs: tuple[ImageInputs, ImageInputs] | None = None) -> Tensor:
    """Guarded MEt3R of every (first[i], second[j]) -> (len(first), len(second)); images (N, 3, H, W) in [-1, 1].

    ``inputs``: the :class:`ImageInputs` of ``first`` and ``second``, or None (computed per pair).
    """
    a, b = first.shape[0], second.shape[0]
    size = torch.Size((a, b, *first.shape[1:]))
    pairs = torch.stack([first[:, None].expand(size), second[None].expand(size)], dim=2).flatten(0, 1)
    banks = {}
    if inputs is not None:
        rows, cols = torch.meshgrid(torch.arange(a), a + torch.arange(b), indexing="ij")
        index = torch.stack([rows.flatten(), cols.flatten()], dim=1).to(first.device)
        banks["features"] = (torch.cat([inputs[0].features, inputs[1].features]), index)
        if inputs[0].encodings is not None and inputs[1].encodings is not None:
            banks["encodings"] = (torch.cat([inputs[0].encodings, inputs[1].encodings]), index)
    out = met3r(pairs, return_maps=True, **banks)
    overlap = out.overlap_mask.float().flatten(1).mean(1)
    return guard_overlap(out.score.float(), overlap, min_overlap).view(a, b)


def term_labels(views: Sequence[str], references: Sequence[str]) -> list[tuple[str, str]]:
    """``(view, paired with)`` of each term of :func:`consistency_terms`, in its order: per view
    (earlier first) its pair with every reference, then with every later view."""
    return [(v, other) for i, v in enumerate(views) for other in (*references, *views[i + 1:])]


def consistency_terms(met3r, candidates: Sequence[Tensor], references: Tensor | None, min_overlap: float,
                      reference_inputs: ImageInputs | None = None) -> Tensor:
    """Guarded MEt3R of each tuple of candidates, one term per pair -> (S_1, ..., S_K, P).

    ``candidates``: K batches (S_k, 3, H, W) in [-1, 1], one per view searched together;
    ``references``: R finished views (R, 3, H, W) or None, with their MEt3R inputs
    (``ImageInputs.of(met3r, references)``; computed here when None). The P = K R + K (K - 1) / 2
    terms are every candidate against every reference and the K candidates among themselves
    (each pair once), in the order of :func:`term_labels`; a tuple's score is their mean
    (:func:`reangle.inpaint.search.mean_of_terms`).
    """
    k = len(candidates)
    has_refs = references is not None and len(references) > 0
    if k == 1 and not has_refs:
        raise ValueError("nothing to score: one view and no finished views; give references or search two views")
    shape = [c.shape[0] for c in candidates]
    inputs = [ImageInputs.of(met3r, c) for c in candidates]
    if has_refs and reference_inputs is None:
        reference_inputs = ImageInputs.of(met3r, references)
    terms = []
    for v, batch in enumerate(candidates):
        view_shape = [1] * k
        view_shape[v] = shape[v]
        if has_refs:
            scores = pair_scores(met3r, batch, references, min_overlap, (inputs[v], reference_inputs))
            terms += [column.view(view_shape).expand(shape) for column in scores.T]
        for w in range(v + 1, k):
            pair_shape = [1] * k
            pair_shape[v], pair_shape[w] = shape[v], shape[w]
            scores = pair_scores(met3r, batch, candidates[w], min_overlap, (inputs[v], inputs[w]))
            terms.append(scores.view(pair_shape).expand(shape))
    return torch.stack(terms, dim=-1)
