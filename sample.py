"""Sample the target views with a trained LoRA.

    python sample.py --run RUN_DIR [key=value ...]
    python sample.py --config FILE [FILE ...] --lora FILE [key=value ...]

``--run`` uses the run's resolved config and its exported LoRA; ``key=value`` overrides
any ``sample.*`` (or other) key, e.g. ``sample.views=[orbit_left_0]`` or
``sample.steps=50``; ``--views a,b`` is a shortcut for ``sample.views=[a,b]``. Writes
``<view>.mp4`` + ``<view>.json`` and ``grid.mp4`` / ``grid.gif`` into ``sample.out_dir``.
"""
from __future__ import annotations

import argparse
import sys

from reangle.config import load_config, load_run_config, split_config_tokens
from reangle.errors import run_entry_point
from reangle.quiet import silence_noise
from reangle.run_folder import recorded_fingerprint
from reangle.sampling.run import run_files, sample_from_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="a train.py run directory (config.yaml + lora/final/)")
    source.add_argument("--config", nargs="+", action="extend", help="YAML files merged in order onto configs/base.yaml")
    parser.add_argument("--lora", help="LoRA file (diffusers format); required with --config, optional with --run")
    parser.add_argument("--views", help="comma-separated names of the views to sample (default: sample.views)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides")
    args = parser.parse_args(argv)
    if args.config and not args.lora:
        parser.error("--config needs --lora FILE (the exported LoRA); or use --run RUN_DIR")
    return args


def main(argv: list[str] | None = None):
    silence_noise()
    args = parse_args(argv)
    if args.run:
        config, lora = run_files(args.run)
        cfg = load_run_config(args.run, overrides=args.overrides)
        lora = args.lora or lora
        run_id = recorded_fingerprint(args.run)
    else:
        cfg, lora = load_config(*split_config_tokens(args.config, args.overrides)), args.lora
        run_id = None  # the fingerprint of the config given
    views = [v for v in args.views.split(",") if v] if args.views else None
    result = sample_from_config(cfg, lora, views=views, run_id=run_id)
    for view in result.views:
        print(view.path)
    if result.grid is not None:
        print(*result.grid, sep="\n")
    return result


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
