"""Stage II training: python train.py --config configs/static.yaml [more.yaml ...] [key=value ...]

Builds Omega (stage I) when it is missing, caches latents and text embeddings, fits the
LoRA, exports it to ``run.dir/lora/``, inpaints the static views' start frames (stage III,
``inpaint.*``) and samples the views (``sample.*``). The run
directory holds the resolved config (``config.yaml``), a pointer to Omega (``omega.json``),
``checkpoints/``, ``lora/``, ``samples/`` and logs.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from callbacks.consistent_inpainting import ConsistentInpainting
from callbacks.evaluation import Evaluation
from callbacks.lora_export import LoraExport
from callbacks.memory_plan import ReleaseTrainingState
from callbacks.progress import StepProgressBar
from callbacks.step_stats import StepStats
from callbacks.video_sampling import VideoSampling
from eval.models import EvalConfigError
from reangle.config import ConfigError, add_config_arguments, config_from_args, save_config
from reangle.data.omega import OmegaError
from reangle.geometry.depth import DepthError
from reangle.geometry.trajectory import TrajectoryError
from reangle.io.video import VideoError
from reangle.models.cogvideox import ModelLoadError
from reangle.training.build import (build_datamodule, build_module, build_spec, build_trainer, resume_path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_arguments(parser)
    return parser.parse_args(argv)


def training_callbacks(cfg) -> list[L.Callback]:
    """Callbacks of every stage II fit: the LoRA export (``run.dir/lora``), step statistics, the
    step progress bar, and the release of the training state when training ends (callbacks.memory_plan)."""
    return [LoraExport(Path(cfg.run.dir) / "lora"), StepStats(), StepProgressBar(), ReleaseTrainingState()]


def main(argv: list[str] | None = None) -> L.Trainer:
    args = parse_args(argv)
    cfg = config_from_args(args)
    ckpt = resume_path(cfg)
    L.seed_everything(cfg.run.seed, workers=True)
    rank_zero_only(save_config)(cfg, cfg.run.dir)
    spec = build_spec(cfg)
    datamodule = build_datamodule(cfg, spec)  # checks the stage I input before the model loads
    stage3 = [ConsistentInpainting(cfg)] if cfg.mode == "static" and cfg.inpaint.enabled else []
    evaluation = Evaluation.from_config(cfg)  # after VideoSampling: evaluates what it sampled
    trainer = build_trainer(cfg, callbacks=[*training_callbacks(cfg), *stage3, VideoSampling.from_config(cfg),
                                            *([evaluation] if evaluation else [])])  # stage III before sampling
    trainer.fit(build_module(cfg, spec), datamodule=datamodule, ckpt_path=ckpt)
    rank_zero_only(report)(cfg)
    return trainer


def report(cfg) -> None:
    """Print where the run's results are."""
    run_dir = Path(cfg.run.dir)
    lines = [f"run directory: {run_dir}"]
    pointer = run_dir / "omega.json"
    if pointer.is_file():
        lines.append(f"Omega (warped views, preview.mp4/.gif): {json.loads(pointer.read_text())['path']}")
    lines += [f"{label}: {path}" for label, path in (("LoRA", run_dir / "lora" / "final"),
                                                     ("start frames (stage III)", run_dir / "start_frames"),
                                                     ("samples", Path(cfg.sample.out_dir))) if path.exists()]
    print("\n".join(lines))


if __name__ == "__main__":
    try:
        main()
    except ConfigError as exc:
        sys.exit(f"config error: {exc}")
    except (VideoError, DepthError, TrajectoryError, OmegaError, ModelLoadError, EvalConfigError) as exc:
        sys.exit(f"error: {exc}")
