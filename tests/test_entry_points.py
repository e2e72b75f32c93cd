"""Every entry point reports a user's mistake the same way: ``error: <one sentence>`` on stderr,
exit status 1, no traceback (reangle.errors.run_entry_point)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reangle.config import ConfigError
from reangle.errors import INPUT_ERROR_STATUS, InputError, MissingPackageError, run_entry_point

ROOT = Path(__file__).resolve().parents[1]
TINY = "configs/presets/tiny.yaml"


def entry_points(tmp):
    not_a_run = tmp / "not_a_run"
    not_a_run.mkdir(exist_ok=True)
    return {
        "train.py": (["train.py", "--config", TINY, "data.height=97"], "data.height"),
        "sample.py": (["sample.py", "--config", TINY, "--lora", str(tmp / "missing.safetensors")],
                      "LoRA file not found"),
        "reangle.warp": (["-m", "reangle.warp", "--config", TINY, "views.only_custom=true",
                          "views.custom=[{name: ../../x, motion: orbit_left, magnitude: 10}]"], "safe file name"),
        "reangle.inpaint": (["-m", "reangle.inpaint", "--run", str(not_a_run)], "not a run directory"),
        "eval": (["-m", "eval", "--run", str(not_a_run)], "not a run directory"),
        "reangle.sweep": (["-m", "reangle.sweep", str(tmp / "missing_sweep.yaml"), "--dry-run"], "not found"),
    }


@pytest.mark.parametrize("name", ["train.py", "sample.py", "reangle.warp", "reangle.inpaint", "eval", "reangle.sweep"])
def test_each_entry_point_reports_bad_input_in_one_line(tmp_path, name):
    argv, expected = entry_points(tmp_path)[name]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    err = proc.stderr.strip()
    assert proc.returncode == INPUT_ERROR_STATUS, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    last = err.splitlines()[-1]
    assert last.startswith("error: ") and expected in last, err[-3000:]


def test_run_entry_point_status_and_message(capsys):
    def bad():
        raise ConfigError("config key train.lr=0: must be > 0")
    assert run_entry_point(bad) == INPUT_ERROR_STATUS
    assert capsys.readouterr().err == "error: config key train.lr=0: must be > 0\n"
    assert run_entry_point(lambda: 3) == 3 and run_entry_point(lambda: object()) == 0
    with pytest.raises(RuntimeError):          # a bug keeps its traceback
        run_entry_point(lambda: (_ for _ in ()).throw(RuntimeError("bug")))
    assert issubclass(MissingPackageError, InputError) and issubclass(MissingPackageError, ImportError)
