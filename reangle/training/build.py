"""Objects of a stage II run from a resolved config: spec, data, module, trainer, loggers.

``train.py`` is these calls in a row; tests build the same objects from the same configs.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loops.fit_loop import _FitLoop
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from omegaconf import DictConfig, OmegaConf

from reangle.config import ConfigError, import_target
from reangle.data.datamodule import OmegaDataModule
from reangle.geometry.trajectory import check_motion
from reangle.models import family
from reangle.models.spec import ModelSpec
from reangle.run_folder import check_checkpoint, run_fingerprint
from reangle.training.module import Stage2Module
from reangle.training.wandb_run import agent_trial, new_run_id, record_run, recorded_run, resolve_mode

log = logging.getLogger(__name__)

LOGGER_KINDS = ("wandb", "csv")
WANDB_MODES = ("auto", "online", "offline", "disabled")


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) or OmegaConf.is_list(node) \
        else node


def build_spec(cfg: DictConfig) -> ModelSpec:
    """The spec of ``model.family`` (its frames and size checked first)."""
    return family.build_spec(cfg)


def omega_source(cfg: DictConfig):
    """The Omega folder of ``train.omega``, else a callable that builds or reuses it (stage I)."""
    from reangle.data.build import build_omega, check_inputs

    if cfg.train.omega:
        return cfg.train.omega
    check_inputs(cfg)  # bad stage I input fails here, before any model loads

    def build():
        return build_omega(cfg)

    return build


def build_datamodule(cfg: DictConfig, spec: ModelSpec) -> OmegaDataModule:
    views = _plain(cfg.train.views)
    exclude = [check_motion(motion) for motion in cfg.train.exclude_motions]
    return OmegaDataModule(spec, omega_source(cfg), Path(cfg.run.cache_dir) / "stage2", batch_size=cfg.train.batch_size,
                           seed=cfg.run.seed, views=views, exclude_motions=exclude, masked=cfg.train.masked,
                           encode_device=cfg.train.encode_device, omega_pointer=Path(cfg.run.dir) / "omega.json")


def build_module(cfg: DictConfig, spec: ModelSpec) -> Stage2Module:
    t = cfg.train
    return Stage2Module(spec, lr=t.lr, weight_decay=t.weight_decay, betas=tuple(t.betas), eps=t.eps,
                        masked=t.masked, loss_normalize=t.loss_normalize, seed=cfg.run.seed,
                        run_id=run_fingerprint(cfg))


def build_strategy(node: Any) -> Any:
    """A strategy name as is, or ``{target, params}`` built; ``*_policy`` lists of dotted class
    paths in ``params`` become sets of classes."""
    node = _plain(node)
    if isinstance(node, str):
        return node
    if not isinstance(node, dict) or not node.get("target"):
        raise ConfigError(f"trainer.strategy must be a strategy name or {{target, params}}, got {node!r}")
    params = dict(node.get("params") or {})
    for key, value in params.items():
        if key.endswith("_policy") and isinstance(value, list):
            params[key] = {import_target(v) for v in value}
    return import_target(node["target"])(**params)


def build_loggers(cfg: DictConfig, resume_recorded: bool = False) -> list:
    """CSV logs in ``run.dir/logs`` always; W&B too with ``logger.kind=wandb``, in the mode of
    :func:`~reangle.training.wandb_run.resolve_mode` (printed), under the agent's run id in a
    ``wandb agent`` trial, and recorded in ``run.dir/wandb_run.json``. ``resume_recorded``: log
    into the run recorded there (a later process of the same run, e.g. the evaluation)."""
    from lightning.pytorch.loggers import CSVLogger

    lg = cfg.logger
    if lg.kind not in LOGGER_KINDS:
        raise ConfigError(f"unknown logger.kind {lg.kind!r}; use one of {LOGGER_KINDS}")
    if lg.wandb_mode not in WANDB_MODES:
        raise ConfigError(f"unknown logger.wandb_mode {lg.wandb_mode!r}; use one of {WANDB_MODES}")
    run_dir = Path(cfg.run.dir)
    loggers = [CSVLogger(run_dir, name="logs")]  # logs/version_N: a resumed run keeps the old logs
    if lg.kind != "wandb":
        if lg.wandb_mode == "online":
            rank_zero_warn("logger.wandb_mode=online has no effect with logger.kind=csv: nothing goes to W&B; "
                           "set logger.kind=wandb to log there")
        return loggers
    mode, why = resolve_mode(lg.wandb_mode)
    rank_zero_only(print)(f"W&B: {mode} ({why})", flush=True)
    if mode == "disabled":
        return loggers
    from lightning.pytorch.loggers import WandbLogger

    recorded = recorded_run(run_dir) if resume_recorded else None
    trial = agent_trial()
    run_id = recorded["id"] if recorded else trial[1] if trial else new_run_id()
    loggers.insert(0, WandbLogger(project=lg.project, entity=lg.entity, name=cfg.run.name, group=lg.group,
                                  save_dir=str(run_dir), mode=mode, tags=list(lg.tags), id=run_id,
                                  config=OmegaConf.to_container(cfg, resolve=True)))
    rank_zero_only(record_run)(run_dir, run_id, lg.project, lg.group, mode)
    return loggers


class _FinishingFitLoop(_FitLoop):
    """Lightning's fit loop, except that a fit resumed from a checkpoint at ``max_steps`` (training done,
    the end of the run interrupted) still calls ``on_train_end``: stage III, sampling and the final LoRA
    export run again and redo what is unfinished (Lightning skips the hook then)."""

    def run(self) -> None:
        self.setup_data()
        if self.done and self.trainer.limit_train_batches != 0:
            self.on_run_start()  # on_train_start: e.g. the progress bar sets itself up
            self.on_run_end()
            return
        super().run()


def build_trainer(cfg: DictConfig, callbacks: list | None = None) -> L.Trainer:
    """The trainer with checkpointing, the learning-rate monitor and ``callbacks`` (the entry point
    passes the pipeline's own: LoRA export, step statistics, sampling, progress)."""
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

    run_dir, t = Path(cfg.run.dir), cfg.train
    if t.steps < 1 or t.checkpoint_every < 1:
        raise ConfigError(f"train.steps ({t.steps}) and train.checkpoint_every ({t.checkpoint_every}) must be >= 1")
    checkpoints = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="step-{step:06d}", auto_insert_metric_name=False,
                                  every_n_train_steps=t.checkpoint_every, save_top_k=-1, save_last=True,
                                  enable_version_counter=False)  # never last-v1.ckpt beside last.ckpt
    trainer = L.Trainer(
        accelerator=cfg.trainer.accelerator, devices=cfg.trainer.devices, num_nodes=cfg.trainer.num_nodes,
        strategy=build_strategy(cfg.trainer.strategy), precision=cfg.trainer.precision, max_steps=t.steps,
        max_epochs=-1, gradient_clip_val=t.grad_clip, default_root_dir=run_dir,
        logger=build_loggers(cfg, resume_recorded=t.resume is not None),  # a resumed run continues its W&B run
        callbacks=[checkpoints, LearningRateMonitor("step"), *(callbacks or [])],
        log_every_n_steps=cfg.trainer.log_every_n_steps, use_distributed_sampler=False,
        enable_model_summary=False, num_sanity_val_steps=0)
    loop = _FinishingFitLoop(trainer, min_epochs=trainer.fit_loop.min_epochs, max_epochs=trainer.fit_loop.max_epochs)
    loop.epoch_loop = trainer.fit_loop.epoch_loop
    trainer.fit_loop = loop
    return trainer


def resume_path(cfg: DictConfig) -> str | None:
    """The checkpoint to resume from (``train.resume``: null, "last" or a path); it must have been written by
    a run of the same config (:func:`reangle.run_folder.check_checkpoint`)."""
    resume = cfg.train.resume
    if not resume:
        return None
    path = Path(cfg.run.dir) / "checkpoints" / "last.ckpt" if resume == "last" else Path(resume)
    if not path.is_file():
        raise ConfigError(f"train.resume: checkpoint {path} not found; train without resume or point it at a "
                          f".ckpt file")
    check_checkpoint(cfg, path)
    return str(path)
