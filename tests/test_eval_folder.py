"""`python -m eval --videos DIR`: videos of mixed sizes and frame rates evaluated as they are, per-metric
failures in eval.json with a non-zero exit, `--metrics` subsets merged into the file, debug detail,
cameras only where needed, and the explicit `--resize`."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eval.__main__ import main as eval_main
from eval.dynamic_degree import motion_threshold
from eval.models import EvalConfigError
from eval.results import MetricsFailed, merge_results
from eval.temporal_flickering import temporal_flickering
from reangle.io.video import read_all_frames, write_gif, write_mp4

ROOT = Path(__file__).resolve().parent.parent
TINY = ["eval.models.flow=tiny", "eval.models.imaging=tiny", "eval.models.subject=tiny", "eval.batch_size=8",
        "eval.device=cpu"]


def _moving(n, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(3, h, w + n, generator=g)
    return torch.stack([base[:, :, t:t + w] for t in range(n)])  # a pattern sliding left


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    write_mp4(_moving(6, 64, 96, 0), root / "baseline_a.mp4", fps=8)
    write_mp4(_moving(8, 48, 80, 1), root / "baseline_b.mp4", fps=16)
    write_gif(_moving(4, 40, 56, 2), root / "clip.gif", fps=10)  # GIF durations are in 10 ms units
    return root


def test_mixed_sizes_and_frame_rates_are_read_as_they_are(folder):
    eval_main(["--videos", str(folder), "--metrics", "temporal_flickering,dynamic_degree,imaging_quality", *TINY])
    data = json.loads((folder / "eval.json").read_text())
    assert sorted(data["videos"]) == ["baseline_a", "baseline_b", "clip"]
    assert data["settings"]["video_fps"] == pytest.approx({"baseline_a": 8, "baseline_b": 16, "clip": 10})
    for name, path in (("baseline_a", "baseline_a.mp4"), ("baseline_b", "baseline_b.mp4"), ("clip", "clip.gif")):
        frames = read_all_frames(folder / path)  # no resize: each video's own size
        assert data["videos"][name]["temporal_flickering"] == pytest.approx(temporal_flickering(frames))
        per_frame = data["details"]["imaging_quality"][name]["per_frame"]
        assert len(per_frame) == frames.shape[0]
        assert data["videos"][name]["imaging_quality"] == pytest.approx(sum(per_frame) / len(per_frame))
    dynamic = data["details"]["dynamic_degree"]
    assert dynamic["baseline_b"]["frame_step"] == 2 and len(dynamic["baseline_b"]["pair_motion"]) == 3  # 16 fps -> 8
    assert dynamic["baseline_a"]["frame_step"] == 1 and len(dynamic["baseline_a"]["pair_motion"]) == 5
    assert dynamic["baseline_a"]["threshold"] == pytest.approx(motion_threshold(64, 96))
    assert data["errors"] == {}


def test_a_failing_metric_is_recorded_and_the_others_kept(folder, capsys):
    with pytest.raises(MetricsFailed, match="fvd: eval.models.i3d is not set"):
        eval_main(["--videos", str(folder), "--metrics", "fvd,temporal_flickering", *TINY, "--reference",
                   str(folder)])
    assert "temporal_flickering:" in capsys.readouterr().out  # the scores that exist are printed
    data = json.loads((folder / "eval.json").read_text())
    assert "eval.models.i3d is not set" in data["errors"]["fvd"] and "fvd" not in data["aggregate"]
    assert set(data["aggregate"]) >= {"temporal_flickering", "imaging_quality"}  # merged with the earlier run
    assert "## Failed metrics" in (folder / "eval.md").read_text()
    # a re-run of the missing metric alone completes the file
    eval_main(["--videos", str(folder), "--metrics", "fvd", *TINY, "eval.models.i3d=tiny", "eval.fvd.clip_length=4",
               "--reference", str(folder)])
    data = json.loads((folder / "eval.json").read_text())
    assert data["errors"] == {} and data["aggregate"]["fvd"] is not None
    assert list(data["aggregate"]) == ["temporal_flickering", "dynamic_degree", "imaging_quality", "fvd"]
    assert data["settings"]["warnings"]  # 3 samples per side in 16 dimensions
    proc = subprocess.run([sys.executable, "-m", "eval", "--videos", str(folder), "--metrics", "fid",
                           "--out", str(folder / "out")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "error: 1 metric(s) failed (fid:" in proc.stderr and "Traceback" not in proc.stderr


def test_cameras_only_where_a_metric_needs_them(folder, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(MetricsFailed, match="sed: sed compares frames across videos, which must share one"):
        eval_main(["--videos", str(folder), "--metrics", "sed", "--out", str(out)])
    same_size = ["--videos", str(folder), "--metrics", "sed,temporal_flickering", "--resize", "40x56", "--out", str(out)]
    with pytest.raises(MetricsFailed, match="sed: SED needs the cameras of every view.*cameras.json"):
        eval_main(same_size)
    assert json.loads((out / "eval.json").read_text())["aggregate"]["temporal_flickering"] is not None

    def camera(x):
        w2c = torch.eye(4)
        w2c[0, 3] = x
        return {"K": [[50.0, 0, 28], [0, 50.0, 20], [0, 0, 1]], "w2c": [w2c.tolist()] * 8}

    cameras = {"baseline_a": camera(0.0), "baseline_b": camera(0.1), "clip": camera(0.3)}
    (folder / "cameras.json").write_text(json.dumps(cameras))
    try:
        eval_main(same_size)
    finally:
        (folder / "cameras.json").unlink()
    data = json.loads((out / "eval.json").read_text())
    assert data["errors"] == {} and "sed" in data["aggregate"]
    assert {(d["view_a"], d["view_b"]) for d in data["details"]["sed"]} >= {("baseline_a", "baseline_b")}


def test_resize_is_explicit_and_printed(folder, tmp_path, capsys):
    out = tmp_path / "out"
    eval_main(["--videos", str(folder), "--metrics", "temporal_flickering", "--resize", "32x48", "--out", str(out)])
    assert "resizing every video to 32x48" in capsys.readouterr().out
    data = json.loads((out / "eval.json").read_text())
    assert data["settings"]["resize"] == [32, 48]
    with pytest.raises(EvalConfigError, match="not HEIGHTxWIDTH"):
        eval_main(["--videos", str(folder), "--resize", "big", "--out", str(out)])
    with pytest.raises(EvalConfigError, match="videos folder not found"):
        eval_main(["--videos", str(tmp_path / "none")])


def test_merge_keeps_other_metrics_only_for_the_same_videos():
    old = {"aggregate": {"fid": 1.0, "met3r": 0.2}, "videos": {"a": {"met3r": 0.2}}, "errors": {"fvd": "x"},
           "details": {}, "settings": {"metrics": ["fid", "met3r", "fvd"]}}
    new = {"aggregate": {"met3r": 0.3}, "videos": {"a": {"met3r": 0.3}}, "errors": {}, "details": {},
           "settings": {"metrics": ["met3r"]}}
    merged = merge_results(old, new)
    assert merged["aggregate"] == {"met3r": 0.3, "fid": 1.0} and merged["errors"] == {"fvd": "x"}
    assert merged["settings"]["metrics"] == ["met3r", "fid", "fvd"]
    other_videos = {**new, "videos": {"b": {"met3r": 0.3}}}
    assert merge_results(old, other_videos) == other_videos
