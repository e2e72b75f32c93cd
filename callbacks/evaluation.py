"""Evaluate the sampled views during and after training, on every rank.

Runs after :class:`callbacks.video_sampling.VideoSampling` (list it after that callback):
at the end of training it evaluates ``eval.samples_dir`` and writes ``eval.json`` /
``eval.md`` into ``eval.out_dir``; with ``eval.callback.every_n_steps = k`` it also evaluates
the videos sampled at step k (``<samples_dir>/step_<k>``, which needs ``sample.every_n_steps``
to divide k) and writes the results there. Every rank reads the videos, scores its share
(videos, or MEt3R pairs) with the metric networks on its own device, and the shares are
gathered (FID and FVD through torchmetrics' state sync), so the numbers do not depend on
the number of processes. Rank 0 writes the files and logs ``eval/<metric>`` (and a W&B
table) to the trainer's loggers.
"""
from __future__ import annotations

from pathlib import Path

import lightning as L
from omegaconf import DictConfig, OmegaConf

from eval.evaluate import EvalResult, evaluate
from eval.models import EvalConfigError, check_model_config
from eval.registry import METRICS, metric_model
from eval.run import inputs_from_config, log_table, write_results
from reangle.run_folder import run_fingerprint


class Evaluation(L.Callback):
    """``cfg``: the run's resolved config (``eval``, ``data``, ``mode``, ``run``)."""

    def __init__(self, cfg: DictConfig):
        self.cfg, self.run_id = cfg, run_fingerprint(cfg)
        metrics = list(cfg.eval.metrics)
        unknown = [m for m in metrics if m not in METRICS]
        if unknown:
            raise EvalConfigError(f"unknown metric(s) {', '.join(unknown)} in eval.metrics; choose from "
                                  f"{', '.join(METRICS)}")
        for name in metrics:  # every checkpoint key is checked before training starts
            model = metric_model(METRICS[name], cfg.eval)
            if model:
                check_model_config(cfg.eval, model)
        self.every_n_steps = int(cfg.eval.callback.every_n_steps)
        sample_every = int(cfg.sample.every_n_steps)
        if self.every_n_steps and (not sample_every or self.every_n_steps % sample_every):
            raise EvalConfigError(f"eval.callback.every_n_steps={self.every_n_steps} needs videos sampled at those "
                                  f"steps: set sample.every_n_steps to a divisor of it (now {sample_every})")

    @classmethod
    def from_config(cls, cfg: DictConfig) -> "Evaluation | None":
        """The callback when ``eval.callback.enabled``, else ``None``."""
        return cls(cfg) if cfg.eval.callback.enabled else None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        k, step = self.every_n_steps, trainer.global_step
        if k and step > 0 and step % k == 0:
            folder = Path(self.cfg.eval.samples_dir) / f"step_{step:06d}"
            self.evaluate(trainer, pl_module, folder, folder)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.evaluate(trainer, pl_module, Path(self.cfg.eval.samples_dir), Path(self.cfg.eval.out_dir))

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule, samples_dir: Path,
                 out_dir: Path) -> EvalResult:
        """Evaluate the views in ``samples_dir`` (all ranks); rank 0 writes and logs the result."""
        cfg = OmegaConf.merge(self.cfg, {"eval": {"samples_dir": str(samples_dir)}})
        metrics = list(cfg.eval.metrics)
        inputs = inputs_from_config(cfg, metrics, self.run_id)
        result = evaluate(inputs, metrics, device=pl_module.device, cache_dir=cfg.run.cache_dir,
                          rank=trainer.global_rank, world_size=trainer.world_size, progress=trainer.is_global_zero)
        if trainer.is_global_zero:
            write_results(result, out_dir, f"{cfg.run.name} (step {trainer.global_step})")
            log_table(trainer.loggers, result, step=trainer.global_step)
        return result
