"""python -m eval --run runs/NAME [--metrics a,b] [--reference DIR] [--config FILE ...] [key=value ...]

Evaluates a finished run's sampled views and writes ``eval.json`` and ``eval.md`` into
``eval.out_dir`` (default: the run directory).
"""
from __future__ import annotations

import argparse
import sys

from eval.run import evaluate_run
from reangle.config import split_config_tokens
from reangle.errors import run_entry_point


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m eval", description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a train.py run directory (config.yaml + samples/)")
    parser.add_argument("--metrics", help="comma-separated metric names (default: eval.metrics)")
    parser.add_argument("--reference", help="folder of reference videos for FID/FVD (default: the run's input video)")
    parser.add_argument("--config", nargs="+", action="extend", default=[], metavar="FILE",
                        help="more YAML files merged onto the run's config (e.g. configs/eval/vbench.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides, e.g. eval.batch_size=8")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None):
    args = parse_args(argv)
    metrics = [m for m in args.metrics.split(",") if m] if args.metrics else None
    files, overrides = split_config_tokens(args.config, args.overrides)
    result = evaluate_run(args.run, metrics, args.reference, files, overrides)
    for name, value in result.aggregate.items():
        print(f"{name}: {'undefined' if value is None else f'{value:.6g}'}")
    return result


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
