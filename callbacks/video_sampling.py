"""Sample the views with the LoRA being trained: every k steps (optional) and when training ends.

A view already written with the same metadata (run, step, settings, start frame) is kept
(:func:`reangle.sampling.multiview.sample_views`), so a resumed run samples only what is
missing. The views are split over the ranks (each view exactly once), every rank samples its
share, the results are gathered, and rank 0 writes the grid and logs the videos to every
logger that can (``log_video``, e.g. W&B). The model comes from ``pl_module.spec`` (its
transformer with the live LoRA, its scheduler, and its encoders, loaded for the
duration of a sampling round when they are not loaded already). Under FSDP or DeepSpeed
ZeRO-3 the transformer's parameters are gathered on every rank for the round (one full copy
per rank) and its wrappers set aside, so each rank samples its share with the full network.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import lightning as L

from reangle.data.omega import INPUT_VIEW, Omega
from reangle.run_folder import run_fingerprint
from reangle.sampling.multiview import MultiViewResult, sample_views
from reangle.sampling.plan import plan_views
from reangle.models.family import spec_sampler
from reangle.sampling.settings import SampleOptions
from reangle.training.full_params import full_parameters


class VideoSampling(L.Callback):
    """``mode``: static | dynamic; ``run_dir``: where stage III's start frames are looked up;
    ``fps``: of the written videos; ``omega``: an Omega folder or a callable returning it
    (``None``: the trainer's datamodule's ``omega()``)."""

    def __init__(self, options: SampleOptions, mode: str, run_dir: str | os.PathLike, fps: float,
                 omega: str | os.PathLike | Callable[[], Omega] | None = None, run_id: str | None = None):
        self.options, self.mode, self.run_dir, self.fps = options, mode, Path(run_dir), fps
        self._omega_source, self.run_id = omega, run_id

    @classmethod
    def from_config(cls, cfg) -> "VideoSampling":
        """From a resolved config (``sample``, ``mode``, ``run.dir``, ``data.fps``; the run's fingerprint)."""
        return cls(SampleOptions.from_config(cfg), cfg.mode, cfg.run.dir, cfg.data.fps, run_id=run_fingerprint(cfg))

    def _omega(self, trainer: L.Trainer) -> Omega:
        source = self._omega_source
        if source is None:
            return trainer.datamodule.omega()
        return source() if callable(source) else Omega.load(source)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        k = self.options.every_n_steps
        if k and trainer.global_step > 0 and trainer.global_step % k == 0:
            self.sample(trainer, pl_module, Path(self.options.out_dir) / f"step_{trainer.global_step:06d}")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.options.at_train_end:
            self.sample(trainer, pl_module, Path(self.options.out_dir))

    def sample(self, trainer: L.Trainer, pl_module: L.LightningModule, out_dir: Path) -> MultiViewResult:
        """One sampling round into ``out_dir``; returns what was sampled (all ranks)."""
        opts, spec = self.options, pl_module.spec
        omega = self._omega(trainer)
        jobs = plan_views(omega, self.mode, opts.seed, opts.views, self.run_dir, opts.start_frames)
        loaded_here = spec.encoders is None
        if loaded_here:
            spec.load_encoders(pl_module.device)
        try:
            enc = spec.encoders
            if opts.vae_tiling:
                enc.vae.enable_tiling()
            input_video = omega.read_frames(omega.view(INPUT_VIEW)) if trainer.is_global_zero else None
            with full_parameters(trainer.strategy, pl_module):  # collective: every rank
                sampler = spec_sampler(spec, opts.scheduler, pl_module.device)
                if loaded_here:  # the sampler holds the only reference: T5 goes once the prompts are encoded
                    enc.text_encoder = None
                result = sample_views(sampler, jobs, opts.settings, omega.num_frames, out_dir, self.fps,
                                      input_video=input_video, rank=trainer.global_rank,
                                      world_size=trainer.world_size, grid_max_width=opts.grid_max_width,
                                      extra_metadata={"mode": self.mode, "global_step": trainer.global_step,
                                                      "run": self.run_id})
        finally:
            if loaded_here:
                spec.unload_encoders()
        if trainer.is_global_zero:
            self._log(trainer, result)
        return result

    def _log(self, trainer: L.Trainer, result: MultiViewResult) -> None:
        for logger in trainer.loggers:
            if not hasattr(logger, "log_video"):
                continue
            for view in result.views:
                logger.log_video(key=f"samples/{view.name}", videos=[str(view.path)], step=trainer.global_step,
                                 caption=[view.metadata["prompt"]])
            if result.grid is not None:
                logger.log_video(key="samples/grid", videos=[str(result.grid[0])], step=trainer.global_step)
