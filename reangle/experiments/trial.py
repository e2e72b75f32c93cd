"""Running one unit of a sweep as its own processes and recording its result.

A unit runs the sweep's command (``train.py``: warp -> train -> [inpaint] -> sample) into
``<trials dir>/<unit id>/``, then, when metrics are asked for, ``python -m eval --run DIR
--metrics ...``. Output of both goes to ``trial.log`` in that folder. ``result.json`` is
written last (temporary file + rename): its presence with ``status: ok`` is what marks a unit
finished; a folder without it (an interrupted unit) is deleted and the unit starts afresh.

``result.json``: ``id``, ``sweep``, ``trial``, ``video``, ``params``, ``status`` (``ok`` |
``failed``), ``stage`` (where it failed: ``train`` | ``eval``), ``seconds``, ``train_loss`` (the
last ``train/loss`` of the run's CSV log), ``metrics`` (``eval.json``'s ``aggregate``), ``error``
(the last line the failing process printed), ``command``.
"""
from __future__ import annotations

import csv
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from reangle.experiments.plan import Unit
from reangle.experiments.sweep_spec import SweepSpec
from reangle.utils import atomic_write_text

RESULT = "result.json"
LOG = "trial.log"
EVAL_JSON = "eval.json"


def read_result(run_dir: str | Path) -> dict[str, Any] | None:
    """The unit's recorded result, or None when it has none (never run, or interrupted)."""
    path = Path(run_dir) / RESULT
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def final_train_loss(run_dir: str | Path) -> float | None:
    """The last ``train/loss`` in ``run_dir/logs/version_*/metrics.csv`` (the newest version)."""
    versions = sorted((Path(run_dir) / "logs").glob("version_*/metrics.csv"),
                      key=lambda p: int(p.parent.name.split("_")[-1]))
    if not versions:
        return None
    with open(versions[-1], newline="") as handle:
        losses = [row["train/loss"] for row in csv.DictReader(handle) if row.get("train/loss")]
    return float(losses[-1]) if losses else None


def _last_line(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def _run(argv: list[str], log: Path, timeout: float | None) -> str | None:
    """Run ``argv`` with its output appended to ``log``; the error text, or None on success."""
    with open(log, "a") as handle:
        handle.write(f"$ {shlex.join(argv)}\n")
        handle.flush()
        # its own session: on a time-out the whole group goes (e.g. the worker processes of a multi-GPU run)
        process = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return f"timed out after {timeout:g} s"
    return None if code == 0 else f"exit code {code}: {_last_line(log)}"


def _eval_metrics(run_dir: Path, metrics: list[str]) -> tuple[dict[str, float], str | None]:
    path = run_dir / EVAL_JSON
    if not path.is_file():
        return {}, f"the evaluation wrote no {EVAL_JSON}"
    aggregate = json.loads(path.read_text()).get("aggregate", {})
    missing = [m for m in metrics if m not in aggregate]
    values = {k: float(v) for k, v in aggregate.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    return values, (f"{EVAL_JSON} has no value for {', '.join(missing)}" if missing else None)


def run_unit(spec: SweepSpec, unit: Unit, trials_dir: str | Path, metrics: list[str] = (),
             wandb_mode: str = "offline", timeout: float | None = None, extra: list[str] = ()) -> dict[str, Any]:
    """Run ``unit`` from scratch (``extra``: more ``key=value`` for every unit) and record its
    ``result.json``; returns the result."""
    trials_dir = Path(trials_dir)
    run_dir = trials_dir / unit.id
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    log = run_dir / LOG
    argv = spec.argv(unit.overrides(spec.name, str(trials_dir), wandb_mode, extra))
    steps = [("train", argv)]
    if metrics:
        steps.append(("eval", [sys.executable, "-m", "eval", "--run", str(run_dir), "--metrics", ",".join(metrics)]))
    start = time.monotonic()
    error, stage, values = None, None, {}
    for stage, step_argv in steps:
        error = _run(step_argv, log, timeout)
        if error is None and stage == "eval":
            values, error = _eval_metrics(run_dir, list(metrics))
        if error is not None:
            break
    result = {"id": unit.id, "sweep": spec.name, "trial": unit.trial, "video": unit.video.name if unit.video else None,
              "params": unit.params, "status": "ok" if error is None else "failed",
              "stage": stage if error is not None else None, "seconds": round(time.monotonic() - start, 3),
              "train_loss": final_train_loss(run_dir), "metrics": values, "error": error, "command": argv}
    atomic_write_text(run_dir / RESULT, json.dumps(result, indent=1))
    return result
