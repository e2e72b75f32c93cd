"""Stage III over all views: the first two searched together, then one view at a time.

Each view's warped first frame is resized to ``size`` x ``size`` (bilinear; its mask by
nearest), inpainted by reward-guided sampling (:func:`reangle.inpaint.search.guided_sample`)
scored with MEt3R against every finished view (and, optionally, the input's first frame),
decoded with the full VAE and restored to its original resolution. The paper scores only
against inpainted views, so the first two views are searched jointly (all S^2 pairs). With
``paste_back`` the visible pixels of the warped frame replace the decoded ones (off by
default, as in the paper, which keeps the model's output everywhere).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from reangle.io.video import resize_frames
from reangle.data.omega import INPUT_VIEW
from reangle.sampling.plan import view_seed

from .inpainter import Inpainter
from .reward import ImageInputs, consistency_terms, term_labels
from .search import Ranks, guided_sample


@dataclass
class InpaintSettings:
    """Stage III settings (``inpaint.*`` in the config); ``guidance=False`` is independent inpainting (S = 1)."""

    steps: int = 50
    candidates: int = 25
    guidance: bool = True
    stochastic: bool = True
    size: int = 1024
    paste_back: bool = False
    min_overlap: float = 0.05
    use_input_frame: bool = False
    fast_decode: bool = False
    seed: int = 42

    @property
    def num_candidates(self) -> int:
        return self.candidates if self.guidance else 1


@dataclass
class ViewInput:
    """One view to inpaint: warped first frame ``[3, H, W]`` in [0, 1], ``visible`` ``[H, W]`` (1 = visible)."""

    name: str
    image: Tensor
    visible: Tensor
    prompt: str


@dataclass
class ViewOutput:
    """An inpainted view ``[3, H, W]`` in [0, 1] at the input's size, with its search record (``scores`` per
    guided step; ``left_out`` per guided step: the views, finished ones or ``input``, whose pair with this
    view no candidate overlapped enough, left out of the mean; ``model_calls`` of the whole search: for
    the first pair, both views')."""

    name: str
    image: Tensor
    scores: list[float]
    searched_with: list[str]
    model_calls: int
    seconds: float
    left_out: list[list[str]]


@dataclass
class Timings:
    """Seconds spent per phase (summed over calls on this rank)."""

    transformer: float = 0.0
    decode: float = 0.0
    met3r: float = 0.0

    def as_dict(self) -> dict:
        return {"transformer": self.transformer, "decode": self.decode, "met3r": self.met3r}


class _Clock:
    def __init__(self, timings: Timings, phase: str, device: torch.device):
        self.timings, self.phase, self.device = timings, phase, device

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __enter__(self):
        self._sync()
        self.start = time.perf_counter()

    def __exit__(self, *exc):
        self._sync()
        setattr(self.timings, self.phase, getattr(self.timings, self.phase) + time.perf_counter() - self.start)


class ScoredViews:
    """The search's model side (:class:`reangle.inpaint.search.Candidates`) for views being inpainted."""

    def __init__(self, inpainter: Inpainter, conditions: list, met3r, references: Tensor | None,
                 settings: InpaintSettings, score_size: int, timings: Timings):
        self.inpainter, self.conditions, self.met3r = inpainter, conditions, met3r
        self.references, self.settings, self.score_size, self.timings = references, settings, score_size, timings
        self.device = torch.device(getattr(inpainter, "device", "cpu"))
        self.reference_inputs = None  # the finished views' MEt3R inputs: once per search, when first scored

    def velocity(self, k: int, latents: Tensor, sigma: float) -> Tensor:
        with _Clock(self.timings, "transformer", self.device):
            return self.inpainter.velocity(latents, sigma, self.conditions[k])

    def decode(self, k: int, clean: Tensor) -> Tensor:
        with _Clock(self.timings, "decode", self.device):
            images = self.inpainter.decode(clean, self.conditions[k], fast=self.settings.fast_decode)
            return resize_frames(images, self.score_size, self.score_size).clamp(-1, 1)

    def score(self, decoded: Sequence[Tensor]) -> Tensor:
        with _Clock(self.timings, "met3r", self.device), torch.no_grad():
            if self.references is not None and self.reference_inputs is None:
                self.reference_inputs = ImageInputs.of(self.met3r, self.references)
            return consistency_terms(self.met3r, decoded, self.references, self.settings.min_overlap,
                                     self.reference_inputs)


def check_views(views: Sequence[ViewInput]) -> None:
    """One clear error for views that cannot be inpainted (names, shapes)."""
    if not views:
        raise ValueError("no views to inpaint")
    names = [v.name for v in views]
    if len(set(names)) != len(names):
        raise ValueError(f"view names are repeated in {names}; name each view once")
    for v in views:
        if v.image.ndim != 3 or v.image.shape[0] != 3:
            raise ValueError(f"view {v.name!r}: image must be [3, H, W] in [0, 1], got {tuple(v.image.shape)}")
        if tuple(v.visible.shape) != tuple(v.image.shape[1:]):
            raise ValueError(f"view {v.name!r}: mask {tuple(v.visible.shape)} does not match the image "
                             f"{tuple(v.image.shape[1:])}; both must be the warped first frame's size")


def inpaint_views(inpainter: Inpainter, met3r, views: Sequence[ViewInput], settings: InpaintSettings, *,
                  input_frame: Tensor | None = None, ranks: Ranks | None = None, progress: bool = True,
                  timings: Timings | None = None, finished: Mapping[str, Tensor] | None = None,
                  on_output: Callable[[ViewOutput], None] | None = None) -> list[ViewOutput]:
    """Inpaint ``views`` in order (the first two jointly), each scored against the finished ones.

    ``input_frame`` ``[3, H, W]`` in [0, 1] is also a reference when ``settings.use_input_frame``.
    ``finished``: view name -> image ``[3, H, W]`` in [0, 1] of the views inpainted before (a resumed
    run): references from the start, and then every view of ``views`` is searched alone, as it would have been.
    A lone view with nothing to score against (one view, no input frame) is sampled unguided.
    Returns the views in the given order; ``on_output`` is called with each as soon as it is
    finished. ``timings`` (optional) collects seconds per phase.
    """
    check_views(views)
    finished = dict(finished or {})
    size = settings.size
    check = getattr(inpainter, "check_size", None)
    if check is not None:
        check(size, size)
    ranks = ranks or Ranks()
    timings = timings or Timings()
    score_size = getattr(met3r, "img_size", None) or size
    references: list[Tensor] = []
    reference_names: list[str] = []
    if settings.use_input_frame and input_frame is not None:
        references.append(resize_frames(input_frame[None] * 2 - 1, score_size, score_size))
        reference_names.append(INPUT_VIEW)
    references += [resize_frames(image[None].float() * 2 - 1, score_size, score_size) for image in finished.values()]
    reference_names += list(finished)
    pair = len(views) > 1 and not finished
    groups = [list(views[:2])] + [[v] for v in views[2:]] if pair else [[v] for v in views]
    show = progress and ranks.rank == 0
    outputs: list[ViewOutput] = []
    with tqdm(total=len(views), desc="stage III views", unit="view", disable=not show) as view_bar:
        for group in groups:
            start = time.perf_counter()
            conditions = [inpainter.condition(resize_frames(v.image[None].float(), size, size),
                                              resize_frames(v.visible[None, None].float(), size, size, "nearest"),
                                              v.prompt)
                          for v in group]
            names = [v.name for v in group]
            generator = torch.Generator().manual_seed(view_seed(settings.seed, "+".join(names)))
            noise = [inpainter.initial_noise(c, generator) for c in conditions]
            refs = torch.cat(references) if references else None
            scorable = refs is not None or len(group) > 1
            model = ScoredViews(inpainter, conditions, met3r, refs, settings, score_size, timings)
            sigmas = inpainter.sigmas(settings.steps, conditions[0])
            with tqdm(total=len(sigmas) - 1, desc=f"{'+'.join(names)}", unit="step", leave=False,
                      disable=not show) as step_bar:
                result = guided_sample(model, noise, sigmas, settings.num_candidates if scorable else 1, generator,
                                       stochastic=settings.stochastic, ranks=ranks,
                                       on_step=lambda i, n, s: step_bar.update(1))
            seconds = time.perf_counter() - start
            labels = term_labels(names, reference_names)
            for view, cond, latents in zip(group, conditions, result.latents):
                with _Clock(timings, "decode", model.device):
                    decoded = inpainter.decode(latents, cond)
                image = finish(decoded[0], view, settings.paste_back)
                references.append(resize_frames(image[None] * 2 - 1, score_size, score_size))
                reference_names.append(view.name)
                left_out = [sorted(b if a == view.name else a for a, b in (labels[t] for t in step)
                                   if view.name in (a, b)) for step in result.left_out]
                outputs.append(ViewOutput(view.name, image, result.scores, names, result.model_calls, seconds,
                                          left_out))
            for output in outputs[-len(group):]:  # a pair is finished when both of its views are
                if on_output is not None:
                    on_output(output)
                view_bar.update(1)
    return outputs


def finish(decoded_pm1: Tensor, view: ViewInput, paste_back: bool) -> Tensor:
    """Decoded ``[3, size, size]`` in [-1, 1] -> ``[3, H, W]`` in [0, 1] at the view's size (optionally pasted)."""
    h, w = view.image.shape[-2:]
    image = resize_frames(((decoded_pm1.float() + 1) / 2)[None], h, w)[0].clamp(0, 1).cpu()
    if paste_back:
        visible = (view.visible > 0.5).to(image.dtype)
        image = visible * view.image.float().cpu() + (1 - visible) * image
    return image
