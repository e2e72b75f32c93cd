"""The offline runner under real use: its units' processes die with it (Ctrl-C, SIGTERM, kill -9),
a unit folder in use is never taken by a second runner, metrics are checked per unit before
anything runs, a unit that failed in evaluation retries the evaluation only, and the progress
names the unit, its stage and its log."""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from reangle import sweep
from reangle.experiments.sweep_spec import SweepError
from reangle.experiments.trial import LOG, RESULT, lock_path, unit_lock

ROOT = Path(__file__).resolve().parent.parent

# A stand-in for train.py: records its pid (and a grandchild's) in the run folder, then sleeps.
SLEEPER = textwrap.dedent("""
    import json, os, subprocess, sys, time
    args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
    run_dir = os.path.join(json.loads(args["run.root"]), json.loads(args["run.name"]))
    os.makedirs(run_dir, exist_ok=True)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    with open(os.path.join(run_dir, "pids.tmp"), "w") as f:
        json.dump([os.getpid(), child.pid], f)
    os.replace(os.path.join(run_dir, "pids.tmp"), os.path.join(run_dir, "pids.json"))
    time.sleep(120)
""")


def _alive(pid):
    """Whether ``pid`` runs (a zombie, waiting to be reaped by an init that may never do it, is dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _wait_for(predicate, timeout=60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def _sleeper_sweep(tmp_path):
    program = tmp_path / "sleeper.py"
    program.write_text(SLEEPER)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({
        "name": "sleepy", "program": str(program), "method": "grid",
        "command": ["${env}", "${interpreter}", "${program}", "--config", "configs/presets/tiny.yaml",
                    "${args_no_hyphens}"],
        "parameters": {"lora.rank": {"values": [2, 4]}}}))
    return path


def _start_runner(tmp_path, out):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "reangle.sweep", str(_sleeper_sweep(tmp_path)), "--out", str(out)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _pids(out):
    found = list((out / "trials").glob("*/pids.json"))
    return json.loads(found[0].read_text()) if found else None


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_the_units_processes_die_with_the_runner(tmp_path, stop):
    out = tmp_path / "out"
    runner = _start_runner(tmp_path, out)
    try:
        assert _wait_for(lambda: _pids(out) is not None), runner.stderr.read() if runner.poll() is not None else ""
        pids = _pids(out)
        assert all(_alive(p) for p in pids)
        runner.send_signal(stop)
        stdout, stderr = runner.communicate(timeout=60)
        assert _wait_for(lambda: not any(_alive(p) for p in pids), timeout=20), f"left behind: {pids}"
        if stop != signal.SIGKILL:
            assert runner.returncode == 130 and "Traceback" not in stderr and "interrupted" in stderr
        assert not list((out / "trials").glob(f"*/{RESULT}"))  # the interrupted unit is not recorded
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()


def test_a_unit_in_use_is_left_to_its_process(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "out"
    path = _sleeper_sweep(tmp_path)
    units = sweep.plan_units(sweep.load_sweep(path), None)
    folder = out / "trials" / units[0].id
    folder.mkdir(parents=True)
    (folder / "marker").write_text("in use")
    with unit_lock(out / "trials", units[0].id):
        with pytest.raises(Exception):  # held: a second holder is refused
            with unit_lock(out / "trials", units[0].id):
                pass
        runner = _start_runner(tmp_path, out)
        try:
            assert _wait_for(lambda: _pids(out) is not None)  # it went on with the free unit
            runner.send_signal(signal.SIGINT)
            stdout, _ = runner.communicate(timeout=60)
        finally:
            if runner.poll() is None:
                runner.kill()
                runner.wait()
        assert f"{units[0].id}" in stdout and "skipped" in stdout and "another process" in stdout
        assert (folder / "marker").read_text() == "in use"
    assert lock_path(out / "trials", units[0].id).is_file()


def _tiny_sweep(tmp_path, parameters, extra=()):
    command = ["${env}", "${interpreter}", "${program}", "--config", "configs/presets/tiny.yaml", "data.height=64",
               "data.width=96", "train.steps=2", "train.checkpoint_every=2", "sample.steps=1",
               "views.motions=[orbit_left]", *extra, "${args_no_hyphens}"]
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "ctl", "program": "train.py", "method": "grid", "command": command,
                                    "parameters": parameters}))
    return path


def _mixed_manifest(tmp_path):
    path = tmp_path / "videos.yaml"
    path.write_text(yaml.safe_dump({"videos": [
        {"name": "still", "video": "synthetic", "mode": "static", "overrides": {"depth.source": "synthetic"}},
        {"name": "moving", "video": "synthetic", "mode": "dynamic", "overrides": {"depth.source": "synthetic"}}]}))
    return path


def test_metrics_are_checked_per_unit_mode_in_the_dry_run_and_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    base = [str(_tiny_sweep(tmp_path, {"train.masked": {"values": [True]}})), "--manifest", str(_mixed_manifest(tmp_path)),
            "--out", str(tmp_path / "out")]
    assert sweep.main(base + ["--dry-run", "--metrics", "met3r,nonsense"]) == 1
    printed = capsys.readouterr().out
    assert printed.count("INVALID: unknown metric(s) nonsense") == 2 and "2 invalid" in printed
    assert sweep.main(base + ["--dry-run", "--metrics", "met3r,sed"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert "to run" in next(line for line in lines if "video=still" in line)
    assert "INVALID: sed compare neighbouring views" in next(line for line in lines if "video=moving" in line)
    with pytest.raises(SweepError, match="cannot run as asked"):  # refused before anything trains
        sweep.main(base + ["--metrics", "tsed"])
    assert not (tmp_path / "out").exists()
    assert sweep.main(base + ["--dry-run", "--metrics", "met3r"]) == 0
    capsys.readouterr()
    assert sweep.main(base + ["--dry-run", "--metrics", "met3r,fid", "eval.source=start_frames"]) == 1
    assert "start_frames scores met3r, sed, tsed only, not fid" in capsys.readouterr().out


def test_online_wandb_mode_is_refused_for_csv_units(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    args = [str(_tiny_sweep(tmp_path, {"train.masked": {"values": [True]}})), "--out", str(tmp_path / "out"),
            "--dry-run", "--wandb-mode", "online"]
    assert sweep.main(args) == 1
    assert "--wandb-mode online has no effect: the unit logs with logger.kind=csv" in capsys.readouterr().out
    assert sweep.main(args + ["logger.kind=wandb"]) == 0


def test_retry_of_a_unit_failed_in_evaluation_keeps_its_training(tmp_path, tiny_model_dir, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    args = [str(_tiny_sweep(tmp_path, {"train.masked": {"values": [True]}}, ["inpaint.enabled=false"])),
            "--out", str(tmp_path / "out"), "--metrics", "temporal_flickering",
            f"run.cache_dir={tiny_model_dir.parent.parent}"]
    run_unit = sweep.run_unit

    def samples_lost_before_evaluation(*a, on_stage, **k):  # the evaluation fails: nothing to evaluate
        def lose_samples(stage, log):
            if stage == "eval":
                shutil.rmtree(log.parent / "samples")
            on_stage(stage, log)

        return run_unit(*a, on_stage=lose_samples, **k)

    monkeypatch.setattr(sweep, "run_unit", samples_lost_before_evaluation)
    assert sweep.main(args) == 1
    printed = capsys.readouterr().out
    unit_dir, = [p for p in (tmp_path / "out" / "trials").iterdir() if p.is_dir()]
    first = json.loads((unit_dir / RESULT).read_text())
    assert first["status"] == "failed" and first["stage"] == "eval"
    assert f"[1/1] {unit_dir.name}" in printed and f": train ... (log: {unit_dir / LOG})" in printed
    assert f": eval ... (log: {unit_dir / LOG})" in printed
    ckpt = unit_dir / "checkpoints" / "last.ckpt"
    trained = ckpt.stat().st_mtime_ns

    monkeypatch.setattr(sweep, "run_unit", run_unit)
    assert sweep.main(args) == 1  # without --retry-failed: the failure is kept
    assert json.loads((unit_dir / RESULT).read_text()) == first
    capsys.readouterr()
    assert sweep.main(args + ["--retry-failed"]) == 1  # the samples are still gone: the evaluation fails again ...
    printed = capsys.readouterr().out
    again = json.loads((unit_dir / RESULT).read_text())
    assert again["stage"] == "eval" and ": train ..." not in printed and ": eval ..." in printed
    assert ckpt.stat().st_mtime_ns == trained  # ... and the training was not run again
    assert again["stage_seconds"]["train"] == first["stage_seconds"]["train"]
    log = (unit_dir / LOG).read_text()
    assert log.count("train.py --config") == 1 and log.count("-m eval --run") == 2
