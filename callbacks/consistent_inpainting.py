"""Stage III when training ends: inpaint the static views' start frames before they are sampled.

Runs in static mode, before :class:`callbacks.video_sampling.VideoSampling` (list it first):
writes ``<run.dir>/start_frames/<view>.png`` and ``scores.json``, which the sampling callback
then prefers over the warped first frames. On several ranks the S candidates of every step
are split over the ranks and the scores gathered (views stay sequential); every rank makes
the same choices, so the images equal a one-rank run's. Rank 0 writes; all ranks wait for it.
The fine-tuned model waits on the CPU meanwhile (:func:`callbacks.memory_plan.parked`).
"""
from __future__ import annotations

import os
from typing import Callable

import lightning as L
from omegaconf import DictConfig

from callbacks.memory_plan import parked
from reangle.data.omega import Omega
from reangle.inpaint.run import run_stage3, settings_from_config
from reangle.inpaint.search import TorchRanks


class ConsistentInpainting(L.Callback):
    """``cfg``: the resolved run config (``inpaint``, ``run``); ``omega``: an Omega folder or a
    callable returning it (``None``: the trainer's datamodule's ``omega()``)."""

    def __init__(self, cfg: DictConfig, omega: str | os.PathLike | Callable[[], Omega] | None = None):
        settings_from_config(cfg)  # bad settings fail before training
        self.cfg, self._omega_source = cfg, omega

    def _omega(self, trainer: L.Trainer) -> Omega:
        source = self._omega_source
        if source is None:
            return trainer.datamodule.omega()
        return source() if callable(source) else Omega.load(source)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        ranks = TorchRanks(pl_module.device) if trainer.world_size > 1 else None
        with parked(trainer, pl_module):  # FLUX and MEt3R are released when run_stage3 returns
            run_stage3(self.cfg, self._omega(trainer), self.cfg.run.dir, device=pl_module.device, ranks=ranks,
                       progress=trainer.is_global_zero)
        trainer.strategy.barrier("consistent_inpainting")
