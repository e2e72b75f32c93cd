"""`python -m eval` on a tiny trained run: eval.json / eval.md with the expected keys and finite
values, the same numbers through the engine, and clear errors for bad input."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

import train
from eval.__main__ import main as eval_main
from eval.models import EvalConfigError

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--config", "configs/presets/tiny.yaml"]
ALL = ["subject_consistency", "background_consistency", "temporal_flickering", "motion_smoothness",
       "dynamic_degree", "aesthetic_quality", "imaging_quality", "met3r", "fid", "fvd", "sed", "tsed",
       "camera_rot_err", "camera_trans_err", "warp_psnr", "warp_lpips"]
SET_SCORES = {"fid", "fvd"}


@pytest.fixture(scope="module")
def run_dir(tiny_omega, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    train.main([*TINY, f"run.root={root}", f"run.cache_dir={root}/cache", f"train.omega={tiny_omega}",
                "data.height=64", "data.width=96", "train.steps=1", "train.checkpoint_every=1", "sample.steps=2",
                "sample.views=[input,orbit_left_0]", "sample.every_n_steps=1", "eval.callback.enabled=true",
                "eval.callback.every_n_steps=1", "eval.metrics=[temporal_flickering]"])
    return root / "tiny"


def test_training_evaluates_its_samples_when_the_callback_is_on(run_dir):
    data = json.loads((run_dir / "eval.json").read_text())  # written by the Evaluation callback
    assert list(data["aggregate"]) == ["temporal_flickering"] and sorted(data["videos"]) == ["input", "orbit_left_0"]
    assert "(step 1)" in (run_dir / "eval.md").read_text()
    during = json.loads((run_dir / "samples" / "step_000001" / "eval.json").read_text())  # every k steps
    assert sorted(during["videos"]) == ["input", "orbit_left_0"]
    assert during["settings"]["eval"]["samples_dir"].endswith("step_000001")


def test_eval_cli_writes_json_and_markdown(run_dir):
    result = eval_main(["--run", str(run_dir), "--metrics", ",".join(ALL)])  # tiny networks (the tiny preset)
    data = json.loads((run_dir / "eval.json").read_text())
    assert set(data) == {"aggregate", "videos", "settings", "errors", "details"} and data["errors"] == {}
    details = data["details"]  # what a score is made of
    assert set(details) == {"dynamic_degree", "aesthetic_quality", "imaging_quality", "met3r", "sed", "tsed",
                            "camera_rot_err", "camera_trans_err"}
    assert set(details["dynamic_degree"]["orbit_left_0"]) == {"pair_motion", "threshold", "pairs_needed", "frame_step"}
    assert len(details["imaging_quality"]["orbit_left_0"]["per_frame"]) == 9
    assert {"view_a", "frame_a", "view_b", "frame_b", "score"} == set(details["met3r"][0])
    assert list(data["aggregate"]) == ALL and data["aggregate"] == pytest.approx(result.aggregate)
    # the test Omega's views share one fixed camera: no view pair has a baseline, no view a translation (null)
    undefined = {"sed", "tsed", "camera_trans_err"}
    assert all(math.isfinite(v) for k, v in data["aggregate"].items() if k not in undefined)
    assert all(data["aggregate"][k] is None for k in undefined)
    agg = data["aggregate"]  # metrics sharing a formula but not a network are scored separately
    assert agg["subject_consistency"] != agg["background_consistency"]
    assert agg["aesthetic_quality"] != agg["imaging_quality"]
    assert sorted(data["videos"]) == ["input", "orbit_left_0"]
    per_view = set(ALL) - SET_SCORES - undefined
    assert set(data["videos"]["orbit_left_0"]) >= per_view  # FID / FVD are set scores, not per video
    assert all(math.isfinite(data["videos"]["orbit_left_0"][k]) for k in per_view)
    assert set(data["videos"]["input"]) >= per_view - {"camera_rot_err", "camera_trans_err", "warp_psnr",
                                                         "warp_lpips"}  # the input is not a target view
    for name in ALL[:5]:
        assert 0 <= data["aggregate"][name] <= 1
    assert 0 <= data["aggregate"]["met3r"] <= 2 and data["aggregate"]["fid"] >= 0
    assert data["settings"]["num_reference"] == 1 and data["settings"]["eval"]["met3r"]["pairing"] == "auto"
    table = (run_dir / "eval.md").read_text()
    assert "| static view transport | SubjC↑ | BackC↑ | Flick↑ | Smooth↑ | Dyn↑ | Aesth↑ | Imag↑ | MEt3R↓ | FID↓ | FVD↓ |" in table and "| orbit_left_0 |" in table
    assert not list(run_dir.glob(".eval*"))  # no temporary files left


def test_eval_module_entry_point_and_reference_folder(run_dir, tmp_path):
    """The installed entry point in a fresh process, with a reference folder of videos and an out_dir."""
    ref = tmp_path / "ref"
    ref.mkdir()
    for name in ("a.mp4", "b.mp4"):
        (ref / name).write_bytes((run_dir / "samples" / "input.mp4").read_bytes())
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "eval", "--run", str(run_dir), "--metrics", "fid",
                           "--reference", str(ref), f"eval.out_dir={out}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((out / "eval.json").read_text())
    assert data["settings"]["num_reference"] == 2 and math.isfinite(data["aggregate"]["fid"])


def test_eval_bad_inputs(run_dir, tmp_path):
    with pytest.raises(EvalConfigError, match="not a run directory"):
        eval_main(["--run", str(tmp_path)])
    with pytest.raises(EvalConfigError, match="unknown metric"):
        eval_main(["--run", str(run_dir), "--metrics", "sharpness"])
    with pytest.raises(EvalConfigError, match="eval.models.i3d is not set"):
        eval_main(["--run", str(run_dir), "--metrics", "fvd", "eval.models.i3d=null"])
    with pytest.raises(EvalConfigError, match="checkpoint not found for eval.models.inception"):
        eval_main(["--run", str(run_dir), "--metrics", "fid", "eval.models.inception=missing/pt_inception.pth"])
    with pytest.raises(EvalConfigError, match="reference folder not found"):
        eval_main(["--run", str(run_dir), "--metrics", "fid", "--reference", str(tmp_path / "nowhere")])
    with pytest.raises(EvalConfigError, match="SED/TSED compare neighbouring views of static view transport"):
        eval_main(["--run", str(run_dir), "--metrics", "sed", "mode=dynamic"])
    with pytest.raises(EvalConfigError, match="samples folder not found"):
        eval_main(["--run", str(run_dir), f"eval.samples_dir={tmp_path / 'none'}"])
    proc = subprocess.run([sys.executable, "-m", "eval", "--run", str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0 and proc.stderr.strip().startswith("error:") and "Traceback" not in proc.stderr


class RecordingLogger:
    """Stands in for a Lightning logger with W&B's ``log_table``."""

    def __init__(self):
        self.metrics, self.tables = [], []

    def log_metrics(self, metrics, step=None):
        self.metrics.append((metrics, step))

    def log_table(self, key, columns, data, step=None):
        self.tables.append((key, columns, data, step))


def test_scores_and_per_view_table_go_to_the_loggers():
    from eval.evaluate import EvalResult
    from eval.run import log_table

    result = EvalResult(aggregate={"fid": 3.0, "sed": None, "met3r": 0.2},
                        videos={"a": {"met3r": 0.1}, "b": {"met3r": 0.3}}, settings={})
    logger = RecordingLogger()
    log_table([logger], result, step=7)
    assert logger.metrics == [({"eval/fid": 3.0, "eval/met3r": 0.2}, 7)]  # undefined scores are not logged
    assert logger.tables == [("eval/videos", ["view", "met3r"], [["a", 0.1], ["b", 0.3]], 7)]


def test_runs_are_pooled_with_unique_view_names(run_dir, tmp_path):
    import shutil

    for name in ("scene_a", "scene_b"):
        shutil.copytree(run_dir, tmp_path / name)
    out = tmp_path / "pooled"
    eval_main(["--runs", str(tmp_path / "scene_a"), str(tmp_path / "scene_b"), "--out", str(out), "--metrics",
               "temporal_flickering,fid", *TINY, "data.height=64", "data.width=96"])  # the runs' size over the preset's
    data = json.loads((out / "eval.json").read_text())
    assert sorted(data["videos"]) == ["scene_a/input", "scene_a/orbit_left_0", "scene_b/input", "scene_b/orbit_left_0"]
    assert data["settings"]["num_reference"] == 2  # every run's input video
    assert data["videos"]["scene_a/input"] == data["videos"]["scene_b/input"]
    with pytest.raises(EvalConfigError, match="folder names must differ"):
        eval_main(["--runs", str(tmp_path / "scene_a"), str(tmp_path / "scene_a"), "--out", str(out)])
    with pytest.raises(EvalConfigError, match="--runs needs --out"):
        eval_main(["--runs", str(tmp_path / "scene_a")])


def test_evaluation_resumes_the_recorded_wandb_run(tmp_path):
    from omegaconf import OmegaConf

    from reangle.training.build import build_loggers
    from reangle.training.wandb_run import record_run

    cfg = OmegaConf.create({"run": {"dir": str(tmp_path), "name": "tiny"}, "logger": {
        "kind": "wandb", "wandb_mode": "offline", "project": "p", "entity": None, "group": None, "tags": []}})
    record_run(tmp_path, "abc123", "p", None, "offline")
    wandb_logger = build_loggers(cfg, resume_recorded=True)[0]
    assert wandb_logger._wandb_init["id"] == "abc123" and wandb_logger._wandb_init["resume"] == "allow"
    assert build_loggers(cfg)[0]._wandb_init["id"] != "abc123"  # training opens a run of its own


def test_a_copied_run_is_evaluated_in_its_own_folder(run_dir, tmp_path):
    import shutil

    copy = tmp_path / "moved" / "tiny"
    shutil.copytree(run_dir, copy)
    (copy / "eval.json").unlink()
    before = (run_dir / "eval.json").read_bytes()
    (copy / "samples" / "orbit_left_0.json").rename(copy / "samples" / "orbit_left_0.skip")  # only in the copy
    eval_main(["--run", str(copy), "--metrics", "temporal_flickering"])
    assert sorted(json.loads((copy / "eval.json").read_text())["videos"]) == ["input"]  # the copy's samples
    assert (run_dir / "eval.json").read_bytes() == before  # the original run is untouched
