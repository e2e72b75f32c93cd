"""Stage III from a config: load the models, read the views from Omega, inpaint, write the start frames.

Writes ``<run_dir>/start_frames/<view>.png`` (the Omega's size; sampling prefers these over
the warped first frames) and ``<run_dir>/start_frames/scores.json`` (the identity the frames
belong to: Omega key, inpainter, prompt, settings; per finished view: the chosen
MEt3R score per step (null: nothing was scored, or no candidate passed the overlap
guard), the views (finished ones, or ``input``) left out of each step's mean because no candidate
overlapped them enough, the views searched together, model calls, seconds; the settings; seconds per phase),
every file through a temporary name and a rename.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from reangle.config import ConfigError
from reangle.data.omega import INPUT_VIEW, Omega
from reangle.io.video import read_video, write_image
from reangle.models.cogvideox_i2v import DTYPES
from reangle.sampling.plan import INPAINTED_DIR, SCORES_FILE, read_image, read_start_frames_record, select_views
from reangle.utils import atomic_write_text, clean_stale_staging, resolve_device

from .multiview import InpaintSettings, Timings, ViewInput, ViewOutput, inpaint_views
from .search import Ranks

INPAINTERS = ("controlnet", "fill")   # inpaint.inpainter: FLUX.1-dev + inpainting ControlNet | FLUX.1-Fill


def settings_from_config(cfg: DictConfig) -> InpaintSettings:
    """``inpaint.*`` as :class:`InpaintSettings`; one clear :class:`ConfigError` for a value out of range."""
    c = cfg.inpaint
    if int(c.steps) < 1 or int(c.candidates) < 1:
        raise ConfigError(f"inpaint.steps and inpaint.candidates must be >= 1, got {c.steps} and {c.candidates}")
    if int(c.size) % 16 or int(c.size) < 16:
        raise ConfigError(f"inpaint.size must be a positive multiple of 16 (FLUX's latent grid), got {c.size}")
    if not 0 <= float(c.min_overlap) <= 1:
        raise ConfigError(f"inpaint.min_overlap is a fraction of the pixels in [0, 1], got {c.min_overlap}")
    if bool(c.guidance) and not bool(c.stochastic):
        raise ConfigError("inpaint.stochastic=false (the ODE) has no candidates to choose from: it goes with "
                          "inpaint.guidance=false; set both, or keep the SDE")
    if c.inpainter not in INPAINTERS:
        raise ConfigError(f"unknown inpaint.inpainter {c.inpainter!r}; use one of {list(INPAINTERS)}")
    if c.weights_dtype not in DTYPES:
        raise ConfigError(f"unknown inpaint.weights_dtype {c.weights_dtype!r}; use one of {sorted(DTYPES)}")
    return InpaintSettings(steps=int(c.steps), candidates=int(c.candidates), guidance=bool(c.guidance),
                           stochastic=bool(c.stochastic), size=int(c.size), paste_back=bool(c.paste_back),
                           min_overlap=float(c.min_overlap), use_input_frame=bool(c.use_input_frame),
                           fast_decode=c.fast_decoder is not None, seed=int(c.seed))


def load_models(cfg: DictConfig, device: torch.device, prompts: Sequence[str]):
    """(inpainter, MEt3R) of ``inpaint.*`` on ``device``: ``inpaint.inpainter`` picks FLUX.1-dev + the
    inpainting ControlNet or FLUX.1-Fill. The models load on the CPU; the transformer and the ControlNet
    are stored in ``inpaint.storage_dtype`` and offloaded per ``inpaint.offload`` there (:func:`prepare_inpainter`);
    the text encoders come to ``device`` alone to encode ``prompts`` and are released; then the rest moves to
    ``device`` (a group-offloaded network stays on the CPU, its hooks bring each block to ``device``)."""
    from reangle.consistency import load_met3r
    from reangle.models.flux import load_fast_decoder, load_flux, load_flux_fill

    from .inpainter import FluxControlNetInpainter, FluxFillInpainter

    c = cfg.inpaint
    dtype = DTYPES[c.weights_dtype]
    tiny = OmegaConf.to_container(c.tiny, resolve=True)
    fast = None
    if c.fast_decoder is not None:
        fast = load_fast_decoder(c.fast_decoder, tiny=tiny["flux"], cache_dir=cfg.run.cache_dir, dtype=dtype)
    shared = dict(max_batch=int(c.max_batch), max_sequence_length=int(c.max_sequence_length), fast_decoder=fast)
    if c.inpainter == "fill":
        pipe = load_flux_fill(c.model, c.fill_model, tiny=tiny["flux"], cache_dir=cfg.run.cache_dir, dtype=dtype)
        inpainter = FluxFillInpainter(pipe, guidance=float(c.fill_guidance_scale), **shared)
    else:
        flux = load_flux(c.model, c.controlnet, tiny=tiny["flux"], cache_dir=cfg.run.cache_dir, dtype=dtype)
        inpainter = FluxControlNetInpainter(flux, conditioning_scale=float(c.conditioning_scale),
                                            guidance=float(c.guidance_scale), **shared)
    prepare_inpainter(inpainter, c.storage_dtype, dtype, prompts, device, offload=c.offload)
    inpainter.to(device)
    m = c.met3r
    met3r = load_met3r(m.backbone, point_source=m.point_source, featup_source=m.featup_source, device=device,
                       img_size=int(m.img_size), radius=float(m.radius), max_pairs_per_chunk=int(m.max_pairs_per_chunk))
    return inpainter, met3r


def prepare_inpainter(inpainter, storage: str | None, dtype: torch.dtype, prompts: Sequence[str],
                      device: torch.device | str, offload: str | None = None) -> None:
    """Before the search networks go to the device: the FLUX transformer (and ControlNet) stored in ``storage``
    (:func:`reangle.models.storage.store_weights`, computed in ``dtype``) and then offloaded per ``offload``
    (:func:`reangle.models.offload.offload_weights`, run on ``device``), then the ``prompts`` encoded on
    ``device`` and the text encoders released (:meth:`~reangle.inpaint.inpainter._FluxInpainter.encode_prompts`)."""
    from reangle.models.offload import offload_weights
    from reangle.models.storage import store_weights

    for net in (inpainter.pipe.transformer, getattr(inpainter, "controlnet", None)):
        if net is not None:
            offload_weights(store_weights(net, storage, dtype), offload, device)
    inpainter.encode_prompts(prompts, device)


def omega_views(omega: Omega, names: Sequence[str] | None, prompt: str | None = None) -> list[ViewInput]:
    """The warped first frame, its mask and prompt of each named view (default: all but the input)."""
    views = []
    for name in select_views(omega, names):
        record = omega.view(name)
        frame = read_video(omega.root / record.video, 1, omega.height, omega.width)[0]
        visible = omega.read_mask(record)[0].float()
        views.append(ViewInput(name, frame, visible, prompt if prompt is not None else record.prompt))
    return views


def input_first_frame(omega: Omega) -> torch.Tensor:
    """The input video's first frame ``[3, H, W]``."""
    return read_video(omega.root / omega.view(INPUT_VIEW).video, 1, omega.height, omega.width)[0]


def stage3_identity(cfg: DictConfig, omega: Omega, settings: InpaintSettings) -> dict:
    """What stage III's start frames depend on besides the view order: the Omega (its key), the
    inpainter, the prompt and the settings. ``scores.json`` records it; a start frame is used
    (by sampling, or kept by a resumed stage III) only under the same identity."""
    return {"omega": omega.key, "inpainter": cfg.inpaint.inpainter, "prompt": cfg.inpaint.prompt,
            "settings": vars(settings)}


def finished_views(run_dir: str | os.PathLike, identity: dict, order: Sequence[str]) -> list[str]:
    """The longest prefix of ``order`` that ``scores.json`` records as finished under ``identity``
    (with its image on disk); a first pair counts only when both of its views are finished."""
    record = read_start_frames_record(run_dir)
    if record is None or any(record.get(k) != v for k, v in identity.items()):
        return []
    done = record.get("views", {})
    prefix = []
    for name in order:
        if name not in done or not (Path(run_dir) / INPAINTED_DIR / f"{name}.png").is_file():
            break
        prefix.append(name)
    return [] if len(prefix) == 1 and len(order) > 1 else prefix


def view_record(output: ViewOutput) -> dict:
    """The ``scores.json`` entry of a finished view (non-finite scores as null)."""
    return {"scores": [s if math.isfinite(s) else None for s in output.scores], "searched_with": output.searched_with,
            "left_out": output.left_out, "model_calls": output.model_calls, "seconds": output.seconds}


def write_outputs(run_dir: str | os.PathLike, outputs: Sequence[ViewOutput], identity: dict,
                  timings: Timings | None = None, kept: dict | None = None) -> list[Path]:
    """``start_frames/<view>.png`` per view, then ``start_frames/scores.json`` (``identity``:
    :func:`stage3_identity`; ``kept``: the records of views finished before, listed first); returns
    the image paths."""
    folder = Path(run_dir) / INPAINTED_DIR
    paths = [write_image(o.image, folder / f"{o.name}.png") for o in outputs]
    views = {**(kept or {}), **{o.name: view_record(o) for o in outputs}}
    record = {**identity, "views": views}
    if timings is not None:
        record["seconds_per_phase"] = timings.as_dict()
    atomic_write_text(folder / SCORES_FILE, json.dumps(record, indent=1))
    return paths


def run_stage3(cfg: DictConfig, omega: Omega, run_dir: str | os.PathLike, views: Sequence[str] | None = None, *,
               device: torch.device | None = None, ranks: Ranks | None = None, progress: bool = True,
               models=None) -> list[ViewOutput]:
    """Inpaint the start frames of ``views`` (default ``inpaint.views``, else all) and write them (rank 0),
    each view as soon as it is finished.

    Views that ``scores.json`` records as finished under the same identity (:func:`finished_views`)
    are kept and serve as references: a resumed stage III redoes only the unfinished views.
    Inputs are checked before any model loads. ``models``: an already loaded (inpainter, MEt3R).
    Returns the views inpainted now.
    """
    settings = settings_from_config(cfg)
    names = list(views) if views else (list(cfg.inpaint.views) if cfg.inpaint.views else None)
    inputs = omega_views(omega, names, cfg.inpaint.prompt)
    identity = stage3_identity(cfg, omega, settings)
    folder = Path(run_dir) / INPAINTED_DIR
    writer = ranks is None or ranks.rank == 0
    if writer:
        clean_stale_staging(folder)
    done = finished_views(run_dir, identity, [v.name for v in inputs])
    kept = {name: entry for name, entry in (read_start_frames_record(run_dir) or {}).get("views", {}).items()
            if name in done}
    todo = [v for v in inputs if v.name not in kept]
    if not todo:
        return []
    finished = {name: read_image(folder / f"{name}.png", omega.height, omega.width) for name in done}
    device = device or resolve_device(cfg.inpaint.device)
    inpainter, met3r = models or load_models(cfg, device, [v.prompt for v in todo])
    timings = Timings()

    def publish(output: ViewOutput) -> None:  # the image, then the record that lists it as finished
        if writer:
            write_outputs(run_dir, [output], identity, timings, kept)
        kept[output.name] = view_record(output)

    return inpaint_views(inpainter, met3r, todo, settings, input_frame=input_first_frame(omega), ranks=ranks,
                         progress=progress, timings=timings, finished=finished, on_output=publish)
