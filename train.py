"""Stage II training: python train.py --config configs/static.yaml [more.yaml ...] [key=value ...]

Builds Omega (stage I) when it is missing, caches latents and text embeddings, fits the
LoRA, exports it to ``run.dir/lora/`` and samples the views (``sample.*``). The run
directory holds the resolved config (``config.yaml``), a pointer to Omega (``omega.json``),
``checkpoints/``, ``lora/``, ``samples/`` and logs.
"""
from __future__ import annotations

import argparse
import sys

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from callbacks.video_sampling import VideoSampling
from reangle.config import ConfigError, load_config, save_config
from reangle.training.build import (build_datamodule, build_module, build_spec, build_trainer, resume_path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """``--config`` files then ``key=value`` overrides (arguments with ``=`` are overrides wherever they are)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", nargs="+", default=[], help="YAML files merged in order onto configs/base.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides")
    args = parser.parse_args(argv)
    args.overrides = [a for a in args.config if "=" in a] + args.overrides
    args.config = [a for a in args.config if "=" not in a]
    return args


def main(argv: list[str] | None = None) -> L.Trainer:
    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    ckpt = resume_path(cfg)
    L.seed_everything(cfg.run.seed, workers=True)
    rank_zero_only(save_config)(cfg, cfg.run.dir)
    spec = build_spec(cfg)
    trainer = build_trainer(cfg, callbacks=[VideoSampling.from_config(cfg)])
    trainer.fit(build_module(cfg, spec), datamodule=build_datamodule(cfg, spec), ckpt_path=ckpt)
    return trainer


if __name__ == "__main__":
    try:
        main()
    except ConfigError as exc:
        sys.exit(f"config error: {exc}")
