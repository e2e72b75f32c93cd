"""Stage II training: python train.py --config configs/static.yaml [more.yaml ...] [key=value ...]

Claims ``run.dir`` for this config (:mod:`reangle.run_folder`), builds Omega (stage I) when it
is missing, caches latents and text embeddings, fits the LoRA, exports it to ``run.dir/lora/``,
inpaints the static views' start frames (stage III, ``inpaint.*``) and samples the views
(``sample.*``). The run directory holds ``run.json`` (the config's fingerprint), the resolved
config (``config.yaml``), a pointer to Omega (``omega.json``), ``checkpoints/``, ``lora/``,
``samples/`` and logs. The exit status is non-zero when SIGTERM interrupted training (a
checkpoint is saved first) or when an output is missing at the end; ``train.resume=last``
then finishes what is unfinished.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from callbacks.consistent_inpainting import ConsistentInpainting
from callbacks.evaluation import Evaluation
from callbacks.lora_export import LoraExport
from callbacks.memory_plan import ReleaseTrainingState
from callbacks.progress import StepProgressBar
from callbacks.run_media import RunMedia
from callbacks.sigterm_checkpoint import SigtermCheckpoint
from callbacks.step_stats import StepStats
from callbacks.video_sampling import VideoSampling
from reangle.config import add_config_arguments, config_from_args
from reangle.errors import run_entry_point
from reangle.quiet import silence_noise
from reangle.run_folder import claim, missing_outputs
from reangle.training.build import build_datamodule, build_module, build_spec, build_trainer, resume_path
from reangle.training.wandb_run import agent_overrides, finish_run, wants_lora_artifact


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_arguments(parser)
    return parser.parse_args(argv)


def training_callbacks(cfg) -> list[L.Callback]:
    """Callbacks of every stage II fit: the LoRA export (``run.dir/lora``), the checkpoint on SIGTERM,
    step statistics, the step progress bar, and the release of the training state when training ends
    (callbacks.memory_plan)."""
    return [LoraExport(Path(cfg.run.dir) / "lora"), SigtermCheckpoint(Path(cfg.run.dir) / "checkpoints"), StepStats(),
            StepProgressBar(), ReleaseTrainingState()]


class RunNotFinished(SystemExit):
    """The run stopped before its end (SIGTERM, after a checkpoint was saved) or ended with outputs
    missing; its message says how to continue, and the exit status is non-zero."""


def main(argv: list[str] | None = None) -> L.Trainer:
    silence_noise()
    args = parse_args(argv)
    cfg = config_from_args(args)
    agent = agent_overrides(cfg)  # a `wandb agent` trial: its own run folder, group and tags
    if agent:
        args.overrides = [*args.overrides, *agent]
        cfg = config_from_args(args)
    rank_zero_only(claim)(cfg)  # run.json + config.yaml; a folder of another run is refused here
    ckpt = resume_path(cfg)
    L.seed_everything(cfg.run.seed, workers=True)
    spec = build_spec(cfg)
    datamodule = build_datamodule(cfg, spec)  # checks the stage I input before the model loads
    stage3 = [ConsistentInpainting(cfg)] if cfg.mode == "static" and cfg.inpaint.enabled else []
    evaluation = Evaluation.from_config(cfg)  # after VideoSampling: evaluates what it sampled
    media = RunMedia(cfg.run.dir, lora_artifact=wants_lora_artifact(cfg.logger))  # after stage III and the export
    trainer = build_trainer(cfg, callbacks=[*training_callbacks(cfg), *stage3, media, VideoSampling.from_config(cfg),
                                            *([evaluation] if evaluation else [])])  # stage III before sampling
    try:
        trainer.fit(build_module(cfg, spec), datamodule=datamodule, ckpt_path=ckpt)
    except SIGTERMException as exc:
        raise RunNotFinished(f"interrupted by SIGTERM at step {trainer.global_step}: checkpoint saved as "
                          f"{Path(cfg.run.dir) / 'checkpoints' / 'last.ckpt'}; continue with train.resume=last") from exc
    finally:
        finish_run()  # the W&B run is free for `python -m eval` (or a resumed run) to continue
    missing = rank_zero_only(report)(cfg, datamodule.omega())
    if missing:
        raise RunNotFinished(f"the run is incomplete ({', '.join(missing)} missing); run the same command with "
                          f"train.resume=last to finish it")
    return trainer


def report(cfg, omega) -> list[str]:
    """Print where the run's results are and what is missing; returns the missing outputs."""
    run_dir = Path(cfg.run.dir)
    lines = [f"run directory: {run_dir}", f"Omega (warped views, preview.mp4/.gif): {omega.root}"]
    lines += [f"{label}: {path}" for label, path in (("LoRA", run_dir / "lora" / "final"),
                                                     ("start frames (stage III)", run_dir / "start_frames"),
                                                     ("samples", Path(cfg.sample.out_dir))) if path.exists()]
    missing = missing_outputs(cfg, omega)
    lines += [f"missing: {item}" for item in missing]
    print("\n".join(lines))
    return missing


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
