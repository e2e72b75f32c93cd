"""Offline sweeps over benchmark videos, and their results tables.

    python -m reangle.sweep SWEEP.yaml [key=value ...] [--manifest M] [--dry-run] [--shard i/n] [--out DIR]
                            [--metrics a,b] [--count N] [--seed S] [--wandb-mode MODE] [--retry-failed]
                            [--timeout S]
    python -m reangle.sweep report DIR

Reads a W&B sweep file (``configs/sweeps/``), runs every trial on every video of the manifest
(``configs/benchmark/``), each as its own processes (``train.py``, then ``python -m eval`` when
``--metrics`` names any), into ``DIR/trials/<unit id>/``, and writes ``DIR/results.csv``,
``DIR/results.md`` and ``DIR/plots/``. A failed unit is recorded and the rest go on (exit
code 1 at the end). Re-running skips every unit with a recorded result (``--retry-failed``:
except the failed ones, whose failed stage runs again) and restarts interrupted ones from
scratch. Every unit's config, metrics and W&B mode are checked before anything runs; Ctrl-C
(or SIGTERM) stops the running unit's processes and exits with code 130.
Run it from the project root (the sweep's command names ``train.py`` and config files
relative to it), as a W&B agent would.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from reangle.config import ConfigError, add_config_arguments, config_from_args
from reangle.errors import run_entry_point
from reangle.experiments.manifest import load_manifest
from reangle.experiments.plan import Unit, parse_shard, plan_units, shard
from reangle.experiments.report import TRIALS, SweepResults, setting_label
from reangle.experiments.sweep_spec import SweepError, SweepSpec, load_sweep
from reangle.experiments.trial import UnitBusy, raise_on_termination, read_result, run_unit

WANDB_MODES = ("offline", "online", "auto", "disabled")


def has_eval_cli() -> bool:
    """Whether ``python -m eval`` (the evaluation package) can run here."""
    try:
        return importlib.util.find_spec("eval.__main__") is not None
    except ModuleNotFoundError:
        return False


def unit_config(spec: SweepSpec, unit: Unit, trials_dir: Path, wandb_mode: str, extra: list[str] = ()):
    """The resolved config of a unit's command line, parsed as train.py parses it (ConfigError if invalid)."""
    parser = argparse.ArgumentParser(add_help=False)
    add_config_arguments(parser)
    overrides = unit.overrides(spec.name, str(trials_dir), wandb_mode, extra)
    return config_from_args(parser.parse_args(spec.program_args(overrides)))


def metric_problems(metrics: list[str], pairs: set[tuple[str, str]]) -> dict[tuple[str, str], str | None]:
    """Why ``python -m eval`` would refuse ``metrics`` for each ``(mode, eval.source)`` pair, or None;
    asked of the evaluation package itself (``python -m eval.requests``), before anything trains."""
    if not pairs:
        return {}
    argv = [sys.executable, "-m", "eval.requests", ",".join(metrics), *sorted(f"{m}:{s}" for m, s in pairs)]
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SweepError(f"cannot check --metrics with the evaluation package: {proc.stderr.strip()[-500:]}")
    return {tuple(key.split(":", 1)): problem for key, problem in json.loads(proc.stdout).items()}


def check_unit(spec: SweepSpec, unit: Unit, trials_dir: Path, args: argparse.Namespace):
    """``(error or None, labels, config)`` of a unit: its config and the W&B mode for its logger
    (the metrics are checked per mode and source by :func:`metric_problems`); labels: its
    ``mode`` and ``source``."""
    try:
        cfg = unit_config(spec, unit, trials_dir, args.wandb_mode or "offline", args.overrides)
    except ConfigError as exc:
        return str(exc), {}, None
    labels = {"mode": cfg.mode, "source": cfg.eval.source}
    if args.wandb_mode in ("online", "auto") and cfg.logger.kind != "wandb":
        return (f"--wandb-mode {args.wandb_mode} has no effect: the unit logs with logger.kind={cfg.logger.kind}; "
                f"add logger.kind=wandb after the sweep file"), labels, cfg
    if args.metrics and cfg.eval.source == "start_frames" and (cfg.mode != "static" or not cfg.inpaint.enabled):
        return "eval.source=start_frames needs stage III's start frames: static mode with inpaint.enabled=true", \
            labels, cfg
    return None, labels, cfg


def check_units(spec: SweepSpec, units: list[Unit], trials_dir: Path, args: argparse.Namespace,
                metrics: list[str]) -> dict[str, tuple[str | None, dict]]:
    """``{unit id: (error or None, labels)}``: :func:`check_unit`, then the metrics of every unit."""
    checked = {u.id: check_unit(spec, u, trials_dir, args) for u in units}
    pairs = {(labels["mode"], labels["source"]) for error, labels, _ in checked.values() if error is None}
    problems = metric_problems(metrics, pairs) if metrics else {}
    return {uid: (error or (problems.get((labels["mode"], labels["source"])) if labels else None), labels)
            for uid, (error, labels, _) in checked.items()}


def _describe(unit: Unit) -> str:
    return f"{unit.id}  [{setting_label(unit.params)}]" + (f"  video={unit.video.name}" if unit.video else "")


def run_sweep(args: argparse.Namespace) -> int:
    spec = load_sweep(args.sweep)
    if not Path(spec.program).is_file():
        raise SweepError(f"the sweep's program {spec.program!r} is not in {Path.cwd()}; run the sweep from the "
                         f"project root")
    manifest = load_manifest(args.manifest) if args.manifest else None
    metrics = [m for m in (args.metrics or "").split(",") if m]
    if metrics and not has_eval_cli():
        raise SweepError("--metrics needs the evaluation package (python -m eval), which is not installed; "
                         "install reangle with its eval package or run without --metrics")
    swept = sorted({o.split("=", 1)[0].strip() for o in args.overrides} & set(spec.parameters))
    if swept:
        raise SweepError(f"override of {', '.join(swept)} conflicts with the sweep's own parameter(s); the swept "
                         f"values would win: drop the override or edit the sweep file")
    units = plan_units(spec, manifest, args.count, args.seed)
    if args.shard:
        units = shard(units, *parse_shard(args.shard))
    out = Path(args.out) if args.out else Path("sweeps") / spec.name
    trials_dir = out / TRIALS
    wandb_mode = args.wandb_mode or "offline"
    checked = check_units(spec, units, trials_dir, args, metrics)
    invalid = [(u, checked[u.id][0]) for u in units if checked[u.id][0] is not None]
    if args.dry_run:
        bad = dict((u.id, e) for u, e in invalid)
        for unit in units:
            result = read_result(trials_dir / unit.id)
            state = {None: "to run", "ok": "finished"}.get(result and result.get("status"), "failed")
            if state == "failed":
                state += f" in {result.get('stage') or '?'}"
            print(f"{_describe(unit)}  {state if unit.id not in bad else 'INVALID: ' + bad[unit.id]}")
        print(f"{len(units)} units ({spec.method} sweep {spec.name!r}"
              + (f" x {len(manifest.videos)} videos of {manifest.name!r}" if manifest else "")
              + f"), {len(invalid)} invalid; results would go to {out}")
        return 1 if invalid else 0
    if invalid:
        lines = "\n".join(f"  {u.id}: {e}" for u, e in invalid)
        raise SweepError(f"{len(invalid)} unit(s) cannot run as asked; fix the sweep, manifest or options:\n{lines}")
    recorded = {u.id: read_result(trials_dir / u.id) for u in units}
    todo = [u for u in units if recorded[u.id] is None or (args.retry_failed and recorded[u.id]["status"] != "ok")]
    print(f"sweep {spec.name!r}: {len(units)} units, {len(units) - len(todo)} already recorded, {len(todo)} to run "
          f"-> {out}", flush=True)
    busy = []
    for number, unit in enumerate(todo, 1):
        head = f"[{number}/{len(todo)}] {_describe(unit)}"

        def on_stage(stage: str, log: Path) -> None:
            print(f"{head}: {stage} ... (log: {log})", flush=True)

        previous = recorded[unit.id] if args.retry_failed else None
        try:
            result = recorded[unit.id] = run_unit(spec, unit, trials_dir, metrics, wandb_mode, args.timeout,
                                                  args.overrides, previous=previous, labels=checked[unit.id][1],
                                                  on_stage=on_stage)
        except UnitBusy as exc:
            busy.append(unit.id)
            print(f"{head}: skipped, {exc}", flush=True)
            continue
        print(f"{head}: {result['status']} in {result['seconds']:.0f} s"
              + (f" ({result['stage']}: {result['error']})" if result["error"] else ""), flush=True)
    results = SweepResults(out)
    paths = results.write()
    print(f"results: {', '.join(str(p) for p in paths[:2])} and {len(paths) - 2} plot(s) in {out / 'plots'}")
    if todo:
        logged = log_summary(results, spec, unit_config(spec, units[0], trials_dir, wandb_mode, args.overrides),
                             wandb_mode)
        if logged:
            print(f"W&B: the sweep table is in run {spec.name}-summary ({logged})")
    failed = [r for r in recorded.values() if r is not None and r["status"] != "ok"]
    if busy:
        print(f"{len(busy)} unit(s) were running in another process and were left to it: {', '.join(busy)}")
    if failed:
        print(f"{len(failed)} unit(s) failed (logs in {trials_dir}/<unit>/trial.log; --retry-failed runs the "
              f"failed stage again):")
        for result in failed:
            print(f"  {result['id']} ({result.get('stage') or '?'}): {result['error']}")
    return 1 if failed or busy else 0


def log_summary(results: SweepResults, spec: SweepSpec, unit_cfg, wandb_mode: str) -> str | None:
    """Log the sweep-level table (settings x metrics, n) to a W&B run of the sweep's group when the
    units log to W&B; returns the run's folder, or None."""
    from reangle.training.wandb_run import resolve_mode

    if unit_cfg is None or unit_cfg.logger.kind != "wandb":
        return None
    mode, _ = resolve_mode(wandb_mode)
    if mode == "disabled":
        return None
    import wandb

    columns, rows = results.summary()
    run = wandb.init(project=unit_cfg.logger.project, entity=unit_cfg.logger.entity, group=spec.name,
                     name=f"{spec.name}-summary", job_type="sweep-summary", tags=[f"sweep:{spec.name}"],
                     dir=str(results.dir), mode=mode, reinit="create_new")
    run.log({"sweep/results": wandb.Table(columns=columns, data=rows)})
    run.finish()
    return str(Path(run.dir).parent)


def report(args: argparse.Namespace) -> int:
    results = SweepResults(args.dir)
    if not results.units:
        raise SweepError(f"no results under {Path(args.dir) / TRIALS}; run a sweep into this folder first")
    paths = results.write()
    print("\n".join(map(str, paths)))
    return 1 if results.failures() else 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    if argv and argv[0] == "report":
        parser = argparse.ArgumentParser(prog="python -m reangle.sweep report",
                                         description="Write results.csv, results.md and plots of a sweep folder.")
        parser.add_argument("dir", help="the sweep folder (--out of the run)")
        args = parser.parse_args(argv[1:])
        args.command = report
        return args
    parser = argparse.ArgumentParser(prog="python -m reangle.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("sweep", help="a W&B sweep file (configs/sweeps/*.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides for every unit (before the swept parameters), e.g. run.cache_dir=DIR")
    parser.add_argument("--manifest", help="a benchmark manifest (configs/benchmark/*.yaml); every trial runs on "
                                           "every video")
    parser.add_argument("--dry-run", action="store_true", help="list the units and validate their configs, run nothing")
    parser.add_argument("--shard", help="i/n: run units i, i+n, i+2n, ... (0 <= i < n), e.g. one shard per machine")
    parser.add_argument("--out", help="sweep folder (default: sweeps/<sweep name>)")
    parser.add_argument("--metrics", default="", help="comma-separated metrics of `python -m eval` to compute per "
                                                      "unit (default: none, no evaluation)")
    parser.add_argument("--count", type=int, help="number of trials (random sweeps; default: the file's run_cap)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random draws (default 0)")
    parser.add_argument("--wandb-mode", choices=WANDB_MODES, help="logger.wandb_mode of every trial (default "
                                                                  "offline); online/auto need logger.kind=wandb")
    parser.add_argument("--retry-failed", action="store_true", help="run the failed stage of units whose recorded "
                                                                   "result is a failure again (a unit that failed in "
                                                                   "evaluation keeps its training; default: keep the "
                                                                   "recorded failure)")
    parser.add_argument("--timeout", type=float, help="seconds each process of a unit may run (default: no limit)")
    args = parser.parse_intermixed_args(argv)
    args.command = run_sweep
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    raise_on_termination()
    try:
        return args.command(args)
    except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM, SIGHUP: the running unit is stopped already
        why = str(exc) or "SIGINT"
        print(f"\ninterrupted ({why}): the running unit was stopped; run the same command again to continue "
              f"(recorded units are kept, the interrupted one starts afresh)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
