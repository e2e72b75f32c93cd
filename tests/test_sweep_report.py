"""The results report: means over videos, the paper's rows beside matching settings, CSV, plots."""
import csv
import json

from omegaconf import OmegaConf

from reangle.config import CONFIG_DIR, load_config
from reangle.experiments.paper_figures import TABLE1, TABLE2, matches_paper
from reangle.experiments.report import SweepResults

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _unit(out, uid, params, video, status="ok", metrics=None, loss=0.5, config_overrides=None):
    folder = out / "trials" / uid
    folder.mkdir(parents=True)
    result = {"id": uid, "sweep": "s", "trial": 0, "video": video, "params": params, "status": status,
              "stage": None if status == "ok" else "train", "seconds": 10.0, "train_loss": loss,
              "metrics": metrics or {}, "error": None if status == "ok" else "error: video not found: x.mp4",
              "command": []}
    (folder / "result.json").write_text(json.dumps(result))
    if config_overrides is not None:
        cfg = OmegaConf.to_container(load_config([CONFIG_DIR / "static.yaml"], ["data.video=synthetic",
                                                                                 *config_overrides]))
        (folder / "config.yaml").write_text(OmegaConf.to_yaml(cfg))


def test_means_paper_rows_csv_and_plots(tmp_path):
    out = tmp_path / "sweep"
    paper = {"lora.rank": 128}
    small = {"lora.rank": 16}
    _unit(out, "000-a", paper, "a", metrics={"met3r": 0.1, "fid": 50.0, "warp_psnr": 20.0}, config_overrides=[])
    _unit(out, "000-b", paper, "b", metrics={"met3r": 0.3, "fid": 70.0, "warp_psnr": 22.0}, config_overrides=[])
    _unit(out, "001-a", small, "a", metrics={"met3r": 0.2, "fid": 60.0, "warp_psnr": 21.0}, loss=0.25,
          config_overrides=["lora.rank=16"])
    _unit(out, "001-b", small, "b", status="failed", loss=None)
    results = SweepResults(out)
    assert results.mean("lora.rank=128", "met3r") == 0.2 and results.mean("lora.rank=16", "met3r") == 0.2
    assert results.mean("lora.rank=16", "train_loss") == 0.25  # the failed video is left out
    paths = results.write()

    table = (out / "results.md").read_text()
    assert "| lora.rank=128 | 2 | 0 |" in table and "| lora.rank=16 | 1 | 1 |" in table
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    t1 = rows.index(next(r for r in rows if r.startswith("| setting | SubjC")))
    assert rows[t1 + 1].startswith("| lora.rank=128 |") and rows[t1 + 2].startswith("| *paper (static)* |")
    assert "| 53.448 | 2690.9 |" in rows[t1 + 2] and "| 0.2 | 60 |" in rows[t1 + 3]
    assert "warp_psnr" in table and "001-b" in table and "video not found" in table

    with open(out / "results.csv", newline="") as handle:
        csv_rows = list(csv.DictReader(handle))
    assert [r["id"] for r in csv_rows] == ["000-a", "000-b", "001-a", "001-b"]
    assert csv_rows[1]["met3r"] == "0.3" and csv_rows[3]["status"] == "failed" and csv_rows[0]["lora.rank"] == "128"

    names = {p.name for p in paths}
    assert {"met3r_by_setting.png", "met3r_vs_lora_rank.png", "train_loss_vs_lora_rank.png"} <= names
    assert all(p.read_bytes()[:8] == PNG_MAGIC for p in paths if p.suffix == ".png")


def test_paper_setting_and_tab2_rows_follow_the_resolved_config():
    static = OmegaConf.to_container(load_config([CONFIG_DIR / "static.yaml"], ["data.video=synthetic"]))
    dynamic = OmegaConf.to_container(load_config([CONFIG_DIR / "dynamic.yaml"], ["data.video=synthetic"]))
    assert matches_paper(static) and matches_paper(dynamic)
    for change in (["experiment=[unmasked]"], ["experiment=[input_only]"], ["views.per_motion=1"],
                   ["sample.steps=20"], ["experiment=[unseen_views]"]):
        assert not matches_paper(OmegaConf.to_container(
            load_config([CONFIG_DIR / "static.yaml"], ["data.video=synthetic", *change]))), change


def test_tab2_layout_shows_the_guidance_ablation_beside_the_paper(tmp_path):
    from reangle.experiments.paper_figures import paper_table2_row

    def config(mode_file, *overrides):
        return OmegaConf.to_container(load_config([CONFIG_DIR / mode_file], ["data.video=synthetic", *overrides]))

    assert paper_table2_row(config("static.yaml")) == TABLE2[True]
    assert paper_table2_row(config("static.yaml", "experiment=[independent_inpainting]")) == TABLE2[False]
    assert paper_table2_row(config("dynamic.yaml")) is None  # no stage III in dynamic mode
    assert paper_table2_row(config("static.yaml", "sample.steps=20")) is None
    assert paper_table2_row(config("static.yaml", "inpaint.candidates=4")) is None
    assert paper_table2_row(config("static.yaml", "inpaint.inpainter=fill")) is None


def test_a_timed_out_step_is_killed_with_the_processes_it_started(tmp_path):
    import sys
    import time

    from reangle.experiments.trial import _run

    marker = tmp_path / "child_alive"
    child = f"import time, pathlib; time.sleep(3); pathlib.Path({str(marker)!r}).write_text('still running')"
    parent = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(60)"
    started = time.monotonic()
    error = _run([sys.executable, "-c", parent], tmp_path / "trial.log", timeout=1.5)
    assert error == "timed out after 1.5 s" and time.monotonic() - started < 30
    time.sleep(4)
    assert not marker.exists()  # the child went with its parent's group
