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
from reangle.data.omega import INPUT_VIEW, Omega
from reangle.models.family import load_sampler
from reangle.models.lora import LORA_FILE, LoraFileError
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
    """The run's Omega (``run.dir/omega.json``), else ``train.omega``, else built or reused from the config."""
    pointer = Path(cfg.run.dir) / OMEGA_POINTER
    if pointer.is_file():
        return Omega.load(json.loads(pointer.read_text())["path"])
    from reangle.training.build import omega_source

    source = omega_source(cfg)
    return source() if callable(source) else Omega.load(source)


def sample_from_config(cfg: DictConfig, lora: str | os.PathLike | None, views: Sequence[str] | None = None,
                       progress: bool = True) -> MultiViewResult:
    """Sample ``views`` (default: ``sample.views``) with the model of ``cfg.model`` plus ``lora``
    (``None``: the base model) into ``sample.out_dir``."""
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
                                        "lora": str(lora) if lora is not None else None})
