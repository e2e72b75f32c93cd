"""The offline sweep end to end on the tiny preset: 2 trials x 2 synthetic videos (+ one bad video),
interrupted and resumed, with its results table, CSV and plots."""
import csv
import json
from pathlib import Path

import yaml

from reangle import sweep
from reangle.experiments.trial import LOG, RESULT

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ROOT = Path(__file__).resolve().parent.parent


def _sweep_file(tmp_path):
    command = ["${env}", "${interpreter}", "${program}", "--config", "configs/presets/tiny.yaml", "data.height=64",
               "data.width=96", "train.steps=2", "train.checkpoint_every=2", "sample.steps=1",
               "views.motions=[orbit_left]", "${args_no_hyphens}"]
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "e2e", "program": "train.py", "method": "grid", "command": command,
                                    "parameters": {"train.masked": {"values": [True, False]}}}))
    return path


def _manifest(tmp_path):
    path = tmp_path / "videos.yaml"
    path.write_text(yaml.safe_dump({"videos": [
        {"name": "balls-0", "video": "synthetic", "overrides": {"data.synthetic.seed": 0, "depth.source": "synthetic"}},
        {"name": "balls-1", "video": "synthetic", "overrides": {"data.synthetic.seed": 1, "depth.source": "synthetic"}},
        {"name": "gone", "video": "clips/missing.mp4", "prompt": "nothing",
         "overrides": {"depth.source": "depth_anything", "depth.model": "tiny"}},
    ]}))
    return path


def _results(out):
    return {p.parent.name: json.loads(p.read_text()) for p in (out / "trials").glob(f"*/{RESULT}")}


def test_sweep_runs_resumes_records_failures_and_reports(tmp_path, tiny_model_dir, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # the sweep's command names train.py and configs/ relative to the project root
    out = tmp_path / "out"
    args = [str(_sweep_file(tmp_path)), "--manifest", str(_manifest(tmp_path)), "--out", str(out),
            f"run.cache_dir={tiny_model_dir.parent.parent}"]

    # first machine: shard 0 of 2 = units 0, 2, 4 of [masked x (balls-0, balls-1, gone), unmasked x (...)]
    assert sweep.main(args + ["--shard", "0/2"]) == 1
    first = _results(out)
    assert sorted((r["params"]["train.masked"], r["video"], r["status"]) for r in first.values()) == [
        (False, "balls-1", "ok"), (True, "balls-0", "ok"), (True, "gone", "failed")]
    finished_before = {k: (out / "trials" / k / RESULT).stat().st_mtime_ns for k, r in first.items()
                       if r["status"] == "ok"}

    # an interrupted unit: its folder exists with partial output but no result
    capsys.readouterr()  # drop the output of the first run
    sweep.main(args + ["--dry-run"])
    listing = capsys.readouterr().out.splitlines()[:-1]
    to_run = [line.split()[0] for line in listing if line.endswith("to run")]
    interrupted = next(u for u in to_run if "balls" in u)
    (out / "trials" / interrupted / "checkpoints").mkdir(parents=True)
    (out / "trials" / interrupted / "checkpoints" / "last.ckpt").write_text("half a checkpoint")

    assert sweep.main(args) == 1
    printed = capsys.readouterr().out
    results = _results(out)
    assert len(results) == 6
    ok = {k: r for k, r in results.items() if r["status"] == "ok"}
    failed = {k: r for k, r in results.items() if r["status"] != "ok"}
    assert sorted((r["params"]["train.masked"], r["video"]) for r in ok.values()) == [
        (False, "balls-0"), (False, "balls-1"), (True, "balls-0"), (True, "balls-1")]
    assert {k: (out / "trials" / k / RESULT).stat().st_mtime_ns for k in finished_before} == finished_before
    assert (out / "trials" / interrupted / RESULT).is_file()
    assert not (out / "trials" / interrupted / "checkpoints" / "last.ckpt").read_bytes().startswith(b"half")
    assert sorted(r["video"] for r in failed.values()) == ["gone", "gone"]
    for key, result in failed.items():
        assert result["stage"] == "train" and "missing.mp4" in result["error"] and key in printed
    recorded_failure = next(k for k, r in first.items() if r["status"] != "ok")
    assert results[recorded_failure]["seconds"] == first[recorded_failure]["seconds"]  # kept, not run again
    for key, result in ok.items():
        assert (out / "trials" / key / "lora" / "final").is_dir() and (out / "trials" / key / "samples").is_dir()
        assert result["train_loss"] > 0 and result["seconds"] > 0 and result["metrics"] == {}
        logged = (out / "trials" / key / "logs" / "version_0" / "metrics.csv").read_text().splitlines()
        header = logged[0].split(",")
        last = [row.split(",")[header.index("train/loss")] for row in logged[1:]]
        assert float([v for v in last if v][-1]) == result["train_loss"]
        assert "run.name=" + json.dumps(key) in result["command"] and (out / "trials" / key / LOG).is_file()
        assert f"run.cache_dir={tiny_model_dir.parent.parent}" in result["command"]

    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6 and {"train.masked", "video", "status", "train_loss", "error"} <= set(rows[0])
    assert {r["train.masked"] for r in rows} == {"True", "False"}
    assert sorted(r["status"] for r in rows) == ["failed"] * 2 + ["ok"] * 4
    table = (out / "results.md").read_text()
    assert "| train.masked=True | 2 | 1 |" in table and "| train.masked=False | 2 | 1 |" in table
    assert "## Failures" in table and all(k in table for k in failed)
    plot = out / "plots" / "train_loss_by_setting_masked.png"  # masked and plain losses are plotted apart
    assert plot.read_bytes()[:8] == PNG_MAGIC and (out / "plots" / "train_loss_by_setting_plain.png").is_file()
    assert not (out / "plots" / "train_loss_by_setting.png").exists()

    plot.unlink()
    assert sweep.main(["report", str(out)]) == 1
    assert plot.read_bytes()[:8] == PNG_MAGIC


def test_sweep_with_metrics_records_the_evaluation_aggregate(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.chdir(ROOT)
    spec = yaml.safe_load(_sweep_file(tmp_path).read_text())
    spec["parameters"] = {"train.masked": {"value": True}}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(spec))
    manifest = tmp_path / "one.yaml"
    manifest.write_text(yaml.safe_dump({"videos": [
        {"name": "balls", "video": "synthetic", "overrides": {"depth.source": "synthetic"}}]}))
    out = tmp_path / "out"
    assert sweep.main([str(tmp_path / "sweep.yaml"), "--manifest", str(manifest), "--out", str(out),
                       "--metrics", "temporal_flickering,warp_psnr", f"run.cache_dir={tiny_model_dir.parent.parent}"]) == 0
    (key, result), = _results(out).items()
    evaluated = json.loads((out / "trials" / key / "eval.json").read_text())["aggregate"]
    assert result["status"] == "ok" and set(result["metrics"]) == {"temporal_flickering", "warp_psnr"}
    assert result["metrics"] == {m: evaluated[m] for m in result["metrics"]}
    assert 0 < result["metrics"]["temporal_flickering"] <= 1
    per_view = json.loads((out / "trials" / key / "eval.json").read_text())["videos"]
    with open(out / "results.csv", newline="") as handle:
        row, *view_rows = list(csv.DictReader(handle))
    assert row["view"] == "all" and float(row["temporal_flickering"]) == result["metrics"]["temporal_flickering"]
    assert {r["view"]: float(r["temporal_flickering"]) for r in view_rows} == {
        view: scores["temporal_flickering"] for view, scores in per_view.items()} and view_rows


def test_a_sweep_over_the_wan_backbone_trains_samples_and_reports_its_unit(tmp_path, tiny_wan_dir, monkeypatch):
    """The sweep machinery is backbone-independent: the same runner over the tiny Wan preset (one unit)."""
    monkeypatch.chdir(ROOT)
    command = ["${env}", "${interpreter}", "${program}", "--config", "configs/presets/tiny_wan.yaml",
               "train.steps=2", "sample.steps=1", "views.motions=[orbit_left]", "inpaint.enabled=false",
               "${args_no_hyphens}"]
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "wan", "program": "train.py", "method": "grid", "command": command,
                                    "parameters": {"lora.rank": {"values": [2]}}}))
    manifest = tmp_path / "videos.yaml"
    manifest.write_text(yaml.safe_dump({"videos": [
        {"name": "balls", "video": "synthetic", "overrides": {"depth.source": "synthetic"}}]}))
    out = tmp_path / "out"
    assert sweep.main([str(path), "--manifest", str(manifest), "--out", str(out),
                       f"run.cache_dir={tiny_wan_dir.parent.parent}"]) == 0
    results = _results(out)
    assert [(r["params"]["lora.rank"], r["status"]) for r in results.values()] == [(2, "ok")]
    for key, result in results.items():
        written = json.loads(next((out / "trials" / key / "samples").glob("*.json")).read_text())
        assert result["train_loss"] > 0 and written["run"] and (out / "trials" / key / "lora" / "final").is_dir()
    assert "| lora.rank=2 | 1 | 0 |" in (out / "results.md").read_text()
