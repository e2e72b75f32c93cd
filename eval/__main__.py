"""python -m eval (--run runs/NAME | --videos DIR | --runs A B ...) [--metrics a,b] [--reference DIR] [--out DIR]
[--resize HxW] [--config FILE ...] [key=value ...]

Evaluates a finished run's sampled views (``--run``; ``eval.json`` and ``eval.md`` go to
``eval.out_dir``, default the run directory), any folder of videos at their own sizes and frame
rates (``--videos``; default output: that folder) or the pooled views of several runs
(``--runs``, with ``--out``). Results merge into an existing ``eval.json``; a metric that fails
is recorded there and the exit status is non-zero.
"""
from __future__ import annotations

import argparse
import sys

from eval.folder import evaluate_folder
from eval.models import EvalConfigError
from eval.results import MetricsFailed
from eval.run import evaluate_run
from reangle.config import split_config_tokens
from reangle.errors import run_entry_point


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m eval", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="a train.py run directory (config.yaml + samples/)")
    source.add_argument("--videos", help="a folder of videos (files, GIFs or frame folders) to evaluate as they are")
    source.add_argument("--runs", nargs="+", metavar="RUN", help="run directories whose views are pooled")
    parser.add_argument("--out", help="--videos / --runs: folder for eval.json and eval.md (default: the videos folder)")
    parser.add_argument("--resize", metavar="HxW", help="--videos / --runs: resize (cover + centre crop) every video")
    parser.add_argument("--metrics", help="comma-separated metric names (default: eval.metrics)")
    parser.add_argument("--reference", help="folder of reference videos for FID/FVD (default: the run's input video; "
                                                  "--runs: every run's input video)")
    parser.add_argument("--config", nargs="+", action="extend", default=[], metavar="FILE",
                        help="more YAML files merged onto the run's config (e.g. configs/eval/vbench.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides, e.g. eval.batch_size=8")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None):
    args = parse_args(argv)
    metrics = [m for m in args.metrics.split(",") if m] if args.metrics else None
    files, overrides = split_config_tokens(args.config, args.overrides)
    if args.run is not None and (args.out or args.resize):
        raise EvalConfigError("--out and --resize are for --videos / --runs; a run uses eval.out_dir")
    try:
        if args.run is not None:
            result = evaluate_run(args.run, metrics, args.reference, files, overrides)
        else:
            result = evaluate_folder(args.videos, args.runs or (), metrics, args.reference, args.out, args.resize,
                                     files, overrides)
    except MetricsFailed as failure:
        _print_scores(failure.result)
        raise
    _print_scores(result)
    return result


def _print_scores(result) -> None:
    for name, value in result.aggregate.items():
        print(f"{name}: {'undefined' if value is None else f'{value:.6g}'}")


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
