"""The Evaluation callback: two gloo processes (videos and MEt3R pairs sharded, FID/FVD states
synced by torchmetrics) give the numbers of one process; config checks before training."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from callbacks.evaluation import Evaluation
from eval.models import EvalConfigError
from reangle.config import load_config
from reangle.io.video import write_mp4
from reangle.run_folder import run_fingerprint
from reangle.sampling.outputs import write_view

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "configs" / "presets" / "tiny.yaml"
METRICS = "[subject_consistency,temporal_flickering,met3r,fid,fvd]"


def _video(seed, n=9, h=64, w=96):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, h // 8, w // 8, generator=g)
    shift = torch.linspace(0, 0.3, n).view(-1, 1, 1, 1)
    return torch.nn.functional.interpolate((base + shift) % 1, size=(h, w), mode="bilinear")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalddp")
    run = run_fingerprint(load_config([TINY], [f"run.root={root}", "data.height=64", "data.width=96"]))
    for i, name in enumerate(["orbit_left_0", "orbit_right_0", "dolly_in_0"]):
        write_view(root / "samples", _video(i), {"view": name, "settings": {"fps": 8}, "run": run}, fps=8)
    for i in range(2):
        write_mp4(_video(10 + i), root / "reference" / f"ref{i}.mp4")
    return root


def _run(folders, devices):
    out = folders / f"out{devices}"
    cmd = [sys.executable, str(ROOT / "tests" / "callback_ddp_worker.py"), "evaluation", str(devices), f"run.root={folders}",
           f"run.cache_dir={folders / 'cache'}", f"eval.samples_dir={folders / 'samples'}",
           f"eval.reference={folders / 'reference'}", f"eval.out_dir={out}", f"eval.metrics={METRICS}",
           "eval.callback.enabled=true", "eval.batch_size=4", "data.height=64", "data.width=96"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "eval.json").read_text())


def test_two_processes_equal_one(folders):
    one, two = _run(folders, 1), _run(folders, 2)
    assert one["settings"]["world_size"] == 1 and two["settings"]["world_size"] == 2
    assert list(one["aggregate"]) == ["subject_consistency", "temporal_flickering", "met3r", "fid", "fvd"]
    assert two["aggregate"] == pytest.approx(one["aggregate"], rel=1e-6, abs=1e-9)
    assert sorted(two["videos"]) == sorted(one["videos"]) == ["dolly_in_0", "orbit_left_0", "orbit_right_0"]
    for view in one["videos"]:
        assert two["videos"][view] == pytest.approx(one["videos"][view], rel=1e-6, abs=1e-9)
    assert one["aggregate"]["fid"] > 0 and one["settings"]["num_reference"] == 2


def test_callback_checks_its_config_before_training():
    cfg = load_config([TINY], ["eval.callback.enabled=true", "eval.models.flow=null"])
    with pytest.raises(EvalConfigError, match="eval.models.flow is not set"):
        Evaluation.from_config(cfg)
    cfg = load_config([TINY], ["eval.callback.enabled=true", "eval.callback.every_n_steps=3", "sample.every_n_steps=2"])
    with pytest.raises(EvalConfigError, match="sample.every_n_steps"):
        Evaluation.from_config(cfg)
    assert Evaluation.from_config(load_config([TINY])) is None  # off unless enabled
