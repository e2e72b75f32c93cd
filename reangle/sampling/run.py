"""Sampling from a config (and a run directory): what ``sample.py`` does.

A run directory (``train.py``) holds ``config.yaml`` (the resolved config), ``omega.json``
(where its Omega is) and the LoRA at ``lora/final/pytorch_lora_weights.safetensors``.
Every input (Omega, views, start frames, LoRA) is checked before any model is loaded.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig

from reangle.config import RUN_CONFIG
from reangle.data.omega import INPUT_VIEW, MANIFEST, Omega
from reangle.models.family import load_sampler
from reangle.models.lora import LORA_FILE, LoraFileError
from reangle.run_folder import run_fingerprint
from reangle.sampling.multiview import MultiViewResult, sample_views
from reangle.sampling.plan import SamplingInputError, plan_views
from reangle.sampling.settings import SampleOptions
from reangle.utils import resolve_device

OMEGA_POINTER = "omega.json"
RUN_LORA = Path("lora") / "final" / LORA_FILE


def run_files(run_dir: str | os.PathLike) -> tuple[Path, Path]:
    """(config, LoRA) of a training run directory; a clear error when either is missing."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SamplingInputError(f"run directory not found: {run_dir}; give the run.dir of a finished train.py run")
    config, lora = run_dir / RUN_CONFIG, run_dir / RUN_LORA
    if not config.is_file():
        raise SamplingInputError(f"{run_dir} is not a run directory: {RUN_CONFIG} is missing")
    if not lora.is_file():
        raise LoraFileError(f"run {run_dir} has no exported LoRA at {RUN_LORA}; finish training, or pass "
                            f"--config {config} --lora FILE")
    return config, lora


def find_omega(cfg: DictConfig) -> Omega:
    """The Omega of ``cfg``: ``train.omega``, else the one its stage I keys describe (built, or reused from
    the cache). ``run.dir/omega.json`` is used only when it names an Omega with that key (e.g. the run's
    cache is elsewhere); an Omega of another config is never used."""
    from reangle.data.build import omega_key
    from reangle.training.build import omega_source

    source = omega_source(cfg)
    if not callable(source):
        return Omega.load(source)
    pointer = Path(cfg.run.dir) / OMEGA_POINTER
    if pointer.is_file():
        data = json.loads(pointer.read_text())
        if data.get("key") == omega_key(cfg) and (Path(data["path"]) / MANIFEST).is_file():
            return Omega.load(data["path"])
    return source()


def sample_from_config(cfg: DictConfig, lora: str | os.PathLike | None, views: Sequence[str] | None = None,
                       progress: bool = True, run_id: str | None = None) -> MultiViewResult:
    """Sample ``views`` (default: ``sample.views``) with the model of ``cfg.model`` plus ``lora``
    (``None``: the base model) into ``sample.out_dir``. ``run_id``: the run the videos belong to (its
    ``run.json`` fingerprint for ``sample.py --run``); default: the fingerprint of ``cfg``."""
    opts = SampleOptions.from_config(cfg)
    device = resolve_device(opts.device)
    if lora is not None and not Path(lora).is_file():
        raise LoraFileError(f"LoRA file not found: {lora}; give the pytorch_lora_weights.safetensors a run exported")
    omega = find_omega(cfg)
    jobs = plan_views(omega, cfg.mode, opts.seed, list(views) if views else opts.views, cfg.run.dir,
                      opts.start_frames)
    input_video = omega.read_frames(omega.view(INPUT_VIEW))
    sampler = load_sampler(cfg, lora, device, opts.cpu_offload, opts.vae_tiling, opts.scheduler, progress)
    return sample_views(sampler, jobs, opts.settings, omega.num_frames, opts.out_dir, cfg.data.fps,
                        input_video=input_video, grid_max_width=opts.grid_max_width,
                        extra_metadata={"mode": cfg.mode, "model": cfg.model.pretrained,
                                        "lora": str(lora) if lora is not None else None,
                                        "run": run_id or run_fingerprint(cfg)})
