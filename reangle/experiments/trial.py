"""Running one unit of a sweep as its own processes and recording its result.

A unit runs the sweep's command (``train.py``: warp -> train -> [inpaint] -> sample) into
``<trials dir>/<unit id>/``, then, when metrics are asked for, ``python -m eval --run DIR
--metrics ...``. Output of both goes to ``trial.log`` in that folder. ``result.json`` is
written last (temporary file + rename): its presence with ``status: ok`` is what marks a unit
finished; a folder without it (an interrupted unit) is deleted and the unit starts afresh. A
unit that failed in evaluation keeps its trained outputs: a retry runs the evaluation only.

The processes of a unit die with the runner: each runs in its own process group, which the
runner stops when it is interrupted (Ctrl-C, SIGTERM, SIGHUP); its leader is a guard
(:mod:`reangle.experiments.guard`) that, on Linux, the kernel signals when the runner dies
(``PR_SET_PDEATHSIG``, which covers ``kill -9``) and that then stops the whole group. A lock file beside the
unit folder (``.<unit id>.lock``, held by the runner and inherited by the unit's processes)
keeps a second runner out of a folder in use.

``result.json``: ``id``, ``sweep``, ``trial``, ``video``, ``params``, ``status`` (``ok`` |
``failed``), ``mode`` and ``source`` (the unit's mode and ``eval.source``), ``stage`` (where it
failed: ``train`` | ``eval``), ``seconds`` (all stages),
``stage_seconds`` (per stage), ``train_loss`` (the last ``train/loss`` of the run's CSV log),
``metrics`` (``eval.json``'s ``aggregate``), ``views`` (``eval.json``'s per-view scores),
``error`` (the last line the failing process printed), ``command``.
"""
from __future__ import annotations

import csv
import ctypes
import fcntl
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from reangle.experiments.plan import Unit
from reangle.experiments.sweep_spec import SweepSpec
from reangle.training.wandb_run import AGENT_VARIABLES
from reangle.utils import atomic_write_text

RESULT = "result.json"
STAGES = ("train", "eval")
STOP_GRACE_S = 5.0  # seconds an interrupted unit's processes get between SIGTERM and SIGKILL
PR_SET_PDEATHSIG = 1
GUARD = "reangle.experiments.guard"


class UnitBusy(RuntimeError):
    """The unit's folder is in use by another process (another runner, or its unit's processes)."""

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


def _die_with_parent(parent: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` asking the kernel to send SIGTERM to the child (the guard) when the runner
    dies (Linux), or None."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork

    def setup() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the runner died before the request took effect
            os._exit(1)

    return setup


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


def _stop(process: subprocess.Popen) -> None:
    """Stop ``process`` and its process group: SIGTERM, then (after at most :data:`STOP_GRACE_S`, or
    at once on a second interruption) SIGKILL to whatever is left of the group."""
    _signal_group(process, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    finally:
        _signal_group(process, signal.SIGKILL)
        process.wait()


def _run(argv: list[str], log: Path, timeout: float | None, keep_fds: tuple[int, ...] = ()) -> str | None:
    """Run ``argv`` with its output appended to ``log``; the error text, or None on success. An
    interruption of the runner (KeyboardInterrupt, :class:`Interrupted`) stops the process group first."""
    env = {k: v for k, v in os.environ.items() if k not in AGENT_VARIABLES}  # each unit is its own W&B run
    with open(log, "a") as handle:
        handle.write(f"$ {shlex.join(argv)}\n")
        handle.flush()
        # the guard leads its own process group and stops it as a whole (e.g. the ranks of a multi-GPU run)
        process = subprocess.Popen([sys.executable, "-m", GUARD, *argv], stdout=handle, stderr=subprocess.STDOUT,
                                   start_new_session=True, env=env, pass_fds=keep_fds,
                                   preexec_fn=_die_with_parent(os.getpid()))
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop(process)
            return f"timed out after {timeout:g} s"
        except BaseException:
            _stop(process)
            raise
    return None if code == 0 else f"exit code {code}: {_last_line(log)}"


class Interrupted(KeyboardInterrupt):
    """The runner received SIGTERM or SIGHUP (handled like Ctrl-C)."""


def raise_on_termination() -> None:
    """Turn SIGTERM and SIGHUP into :class:`Interrupted`, so a stopped runner stops its unit first."""
    def handler(signum, frame):
        raise Interrupted(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def lock_path(trials_dir: str | Path, unit_id: str) -> Path:
    return Path(trials_dir) / f".{unit_id}.lock"


@contextmanager
def unit_lock(trials_dir: str | Path, unit_id: str) -> Iterator[int]:
    """Hold the unit's lock (its file descriptor) or raise :class:`UnitBusy`. The lock goes with the
    last process holding it, even when killed."""
    path = lock_path(trials_dir, unit_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UnitBusy(f"unit {unit_id} is running in another process (lock {path})") from None
    try:
        yield fd
    finally:
        os.close(fd)


def _eval_metrics(run_dir: Path, metrics: list[str]) -> tuple[dict[str, float], dict[str, dict[str, float]],
                                                               str | None]:
    """The aggregate and per-view scores of ``eval.json``, and an error when a metric is missing."""
    path = run_dir / EVAL_JSON
    if not path.is_file():
        return {}, {}, f"the evaluation wrote no {EVAL_JSON}"
    data = json.loads(path.read_text())
    aggregate = data.get("aggregate", {})
    missing = [m for m in metrics if m not in aggregate]
    values = {k: float(v) for k, v in aggregate.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    views = {view: {k: float(v) for k, v in scores.items() if isinstance(v, (int, float)) and math.isfinite(v)}
             for view, scores in data.get("videos", {}).items()}
    return values, views, (f"{EVAL_JSON} has no value for {', '.join(missing)}" if missing else None)


def run_unit(spec: SweepSpec, unit: Unit, trials_dir: str | Path, metrics: list[str] = (),
             wandb_mode: str = "offline", timeout: float | None = None, extra: list[str] = (),
             previous: dict[str, Any] | None = None, labels: dict[str, Any] | None = None,
             on_stage: Callable[[str, Path], None] = lambda stage, log: None) -> dict[str, Any]:
    """Run ``unit`` (``extra``: more ``key=value`` for every unit) and record its ``result.json``;
    returns the result. From scratch, unless ``previous`` (its recorded result) failed in
    evaluation: then only the evaluation runs again. ``labels`` (e.g. the unit's ``mode`` and
    ``source``) are recorded with the result. ``on_stage(stage, log)`` is called as each stage
    starts. Raises :class:`UnitBusy` when another process holds the unit."""
    trials_dir = Path(trials_dir)
    run_dir = trials_dir / unit.id
    with unit_lock(trials_dir, unit.id) as lock:
        retry_eval = bool(previous and previous.get("stage") == "eval" and metrics and run_dir.is_dir())
        if not retry_eval:
            if run_dir.exists():
                shutil.rmtree(run_dir)
            run_dir.mkdir(parents=True)
        log = run_dir / LOG
        argv = spec.argv(unit.overrides(spec.name, str(trials_dir), wandb_mode, extra))
        steps = [] if retry_eval else [("train", argv)]
        if metrics:
            steps.append(("eval", [sys.executable, "-m", "eval", "--run", str(run_dir), "--metrics",
                                   ",".join(metrics)]))
        seconds = {"train": previous["stage_seconds"]["train"]} if retry_eval else {}
        error, stage, values, views = None, None, {}, {}
        for stage, step_argv in steps:
            on_stage(stage, log)
            start = time.monotonic()
            error = _run(step_argv, log, timeout, keep_fds=(lock,))
            seconds[stage] = round(time.monotonic() - start, 3)
            if error is None and stage == "eval":
                values, views, error = _eval_metrics(run_dir, list(metrics))
            if error is not None:
                break
        result = {"id": unit.id, "sweep": spec.name, "trial": unit.trial,
                  "video": unit.video.name if unit.video else None, "params": unit.params, **(labels or {}),
                  "status": "ok" if error is None else "failed", "stage": stage if error is not None else None,
                  "seconds": round(sum(seconds.values()), 3), "stage_seconds": seconds,
                  "train_loss": final_train_loss(run_dir), "metrics": values, "views": views, "error": error,
                  "command": argv}
        atomic_write_text(run_dir / RESULT, json.dumps(result, indent=1))
    return result
