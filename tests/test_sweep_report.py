"""The results report: means over videos, the paper's rows beside matching settings, CSV, plots."""
import csv
import json

from omegaconf import OmegaConf

from reangle.config import CONFIG_DIR, load_config
from reangle.experiments.paper_figures import TABLE1, TABLE2, matches_paper
from reangle.experiments.report import SweepResults

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _unit(out, uid, params, video, status="ok", metrics=None, loss=0.5, config_overrides=None, mode="static",
          source="samples", views=None, config_file="static.yaml"):
    folder = out / "trials" / uid
    folder.mkdir(parents=True)
    result = {"id": uid, "sweep": "s", "trial": 0, "video": video, "params": params, "status": status,
              "mode": mode, "source": source, "stage": None if status == "ok" else "train", "seconds": 10.0,
              "train_loss": loss, "metrics": metrics or {}, "views": views or {},
              "error": None if status == "ok" else "error: video not found: x.mp4", "command": []}
    (folder / "result.json").write_text(json.dumps(result))
    if config_overrides is not None:
        cfg = OmegaConf.to_container(load_config([CONFIG_DIR / config_file], ["data.video=synthetic",
                                                                               *config_overrides]))
        (folder / "config.yaml").write_text(OmegaConf.to_yaml(cfg))


def _rows(table, header):
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    start = rows.index(next(r for r in rows if r.startswith(header)))
    return rows[start + 1:]


def _section(table, title):
    """The text of a ``## `` section of ``table``, up to the next one."""
    start = table.index(title)
    end = table.find("\n## ", start + 1)
    return table[start:end if end > 0 else None]


def test_settings_are_compared_over_common_videos_with_paper_rows_csv_and_plots(tmp_path):
    out = tmp_path / "sweep"
    paper = {"lora.rank": 128}
    small = {"lora.rank": 16}
    _unit(out, "000-a", paper, "a", metrics={"met3r": 0.1, "fid": 50.0, "warp_psnr": 20.0}, config_overrides=[],
          views={"orbit_left_00": {"met3r": 0.05, "warp_psnr": 19.0}, "orbit_up_00": {"met3r": 0.15}})
    _unit(out, "000-b", paper, "b", metrics={"met3r": 0.3, "fid": 70.0, "warp_psnr": 22.0}, config_overrides=[])
    _unit(out, "001-a", small, "a", metrics={"met3r": 0.2, "fid": 60.0, "warp_psnr": 21.0}, loss=0.25,
          config_overrides=["lora.rank=16"])
    _unit(out, "001-b", small, "b", status="failed", loss=None)
    results = SweepResults(out)
    group = ("static", "samples")
    assert list(results.groups) == [group] and results.common_videos(group) == ["a"]
    assert results.values(group, "lora.rank=128", "met3r", ["a"]) == [0.1]
    assert results.values(group, "lora.rank=128", "met3r", None) == [0.1, 0.3]
    paths = results.write()

    table = (out / "results.md").read_text()
    assert "compared over the 1 video(s) every setting finished: a." in table
    assert "Left out of the comparison (not finished by every setting): lora.rank=128: b." in table
    assert "| lora.rank=128 | 2 | 0 | 0.5 (masked) |" in table and "| lora.rank=16 | 1 | 1 | 0.25 (masked) |" in table
    t1 = _rows(table, "| setting | n | SubjC")
    assert t1[0].startswith("| lora.rank=128 | 1 |") and "| 0.1 | 50 |" in t1[0]  # video a only, not (a + b) / 2
    assert t1[1].startswith("| *paper (static, full method)* | 28 |") and "| 53.448 | 2690.9 |" in t1[1]
    assert t1[2].startswith("| lora.rank=16 | 1 |") and "| 0.2 | 60 |" in t1[2]
    assert "warp_psnr" in table and "001-b" in table and "video not found" in table

    with open(out / "results.csv", newline="") as handle:
        csv_rows = list(csv.DictReader(handle))
    assert [(r["id"], r["view"]) for r in csv_rows] == [("000-a", "all"), ("000-a", "orbit_left_00"),
                                                        ("000-a", "orbit_up_00"), ("000-b", "all"), ("001-a", "all"),
                                                        ("001-b", "all")]
    assert csv_rows[1]["met3r"] == "0.05" and csv_rows[1]["warp_psnr"] == "19.0" and csv_rows[2]["warp_psnr"] == ""
    assert csv_rows[3]["met3r"] == "0.3" and csv_rows[5]["status"] == "failed" and csv_rows[0]["lora.rank"] == "128"
    assert csv_rows[0]["mode"] == "static" and csv_rows[0]["source"] == "samples"

    names = {p.name for p in paths}
    assert {"met3r_by_setting.png", "met3r_vs_lora_rank.png", "train_loss_vs_lora_rank.png"} <= names
    assert all(p.read_bytes()[:8] == PNG_MAGIC for p in paths if p.suffix == ".png")


def test_a_mixed_static_dynamic_sweep_reports_the_modes_apart_with_n(tmp_path):
    out = tmp_path / "sweep"
    for i, (masked, label) in enumerate(((True, "train.masked=True"), (False, "train.masked=False"))):
        params = {"train.masked": masked}
        over = [f"train.masked={str(masked).lower()}"]
        _unit(out, f"00{i}-still", params, "still", metrics={"met3r": 0.1 + i}, loss=1.0 + i, config_overrides=over)
        _unit(out, f"00{i}-moving", params, "moving", mode="dynamic", metrics={"met3r": 0.5 + i}, loss=2.0 + i,
              config_overrides=over, config_file="dynamic.yaml")
    _unit(out, "000-still2", {"train.masked": True}, "still2", metrics={"met3r": 0.3}, config_overrides=[])
    results = SweepResults(out)
    assert set(results.groups) == {("static", "samples"), ("dynamic", "samples")}
    table = (out / "results.md").read_text() if results.write() else ""
    static, dynamic = (_section(table, "## static view transport"), _section(table, "## dynamic camera control"))
    assert "still" in static and "moving" not in static and "moving" in dynamic and "still" not in dynamic
    assert "0.1 (n=1)" not in static  # row n is 1, so no per-cell n
    row = _rows(static, "| setting | n | SubjC")[0]
    assert row.startswith("| train.masked=True | 1 |") and "| 0.1 |" in row  # over 'still' only
    assert "Left out of the comparison (not finished by every setting): train.masked=True: still2." in static
    assert "(masked)" in static and "(plain)" in static and "different quantities" in static
    for section, mode in ((static, "static"), (dynamic, "dynamic")):  # only the masked (paper) setting has one
        rows = _rows(section, "| setting | n | SubjC")
        assert [r.split(" |")[0] for r in rows[:3]] == ["| train.masked=True", f"| *paper ({mode}, full method)*",
                                                        "| train.masked=False"]
        assert not any("*paper" in r for r in rows[3:])
    plots = {p.name for p in (out / "plots").iterdir()}
    assert {"train_loss_by_setting_static_samples_masked.png", "train_loss_by_setting_static_samples_plain.png",
            "met3r_by_setting_dynamic_samples.png"} <= plots
    assert not any(name.startswith("train_loss_by_setting_static_samples.") for name in plots)


def test_the_paper_rows_follow_only_the_settings_the_paper_reports(tmp_path):
    out = tmp_path / "sweep"
    _unit(out, "000-a", {"experiment": []}, "a", metrics={"met3r": 0.1, "sed": 1.2}, config_overrides=[])
    _unit(out, "001-a", {"experiment": ["independent_inpainting"]}, "a", metrics={"met3r": 0.2, "sed": 1.3},
          config_overrides=["experiment=[independent_inpainting]"])
    table = SweepResults(out).markdown()
    t1 = _rows(table, "| setting | n | SubjC")
    assert t1[1].startswith("| *paper (static, full method)*") and t1[2].startswith("| experiment=independent")
    assert not t1[3].startswith("| *paper")  # the paper's Tab. 1 has no independent-inpainting row
    t2 = _rows(table, "| setting | n | MEt3R")
    assert not any("*paper" in r for r in t2[:3])  # sampled videos: the paper's Tab. 2 scores start frames
    # start frames (the start_frames sweep): both Tab. 2 rows, no Tab. 1
    out2 = tmp_path / "frames"
    _unit(out2, "000-a", {"experiment": []}, "a", metrics={"met3r": 0.1, "sed": 1.2}, config_overrides=[],
          source="start_frames")
    _unit(out2, "001-a", {"experiment": ["independent_inpainting"]}, "a", metrics={"met3r": 0.2, "sed": 1.3},
          config_overrides=["experiment=[independent_inpainting]"], source="start_frames")
    table = SweepResults(out2).markdown()
    assert "SubjC" not in table and "scores of stage III's start frames" in table
    t2 = _rows(table, "| setting | n | MEt3R")
    assert t2[1] == "| *paper (stage III)* | 28 | 0.1184 | 1.1844 | 0.5588 |"
    assert t2[3] == "| *paper (stage III)* | 28 | 0.1431 | 1.1966 | 0.5241 |"


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


def test_the_sweep_table_goes_to_wandb_with_n(tmp_path, monkeypatch):
    from reangle import sweep
    from reangle.experiments.sweep_spec import load_sweep

    monkeypatch.delenv("WANDB_MODE", raising=False)
    out = tmp_path / "sweep"
    _unit(out, "000-a", {"lora.rank": 16}, "a", metrics={"met3r": 0.1}, config_overrides=[])
    _unit(out, "000-b", {"lora.rank": 16}, "b", metrics={"met3r": 0.3}, config_overrides=[])
    _unit(out, "001-a", {"lora.rank": 32}, "a", metrics={"met3r": 0.2}, config_overrides=[])
    results = SweepResults(out)
    columns, rows = results.summary()
    assert columns == ["mode", "source", "setting", "n", "failed", "train_loss", "met3r"]
    assert rows == [["static", "samples", "lora.rank=16", 1, 0, 0.5, 0.1], ["static", "samples", "lora.rank=32", 1, 0, 0.5, 0.2]]
    spec = load_sweep(CONFIG_DIR / "sweeps" / "tiny.yaml")
    csv_cfg = load_config([CONFIG_DIR / "presets" / "tiny.yaml"])
    assert sweep.log_summary(results, spec, csv_cfg, "offline") is None  # the units do not log to W&B
    wandb_cfg = load_config([CONFIG_DIR / "presets" / "tiny.yaml"], ["logger.kind=wandb"])
    assert sweep.log_summary(results, spec, wandb_cfg, "disabled") is None
    run_dir = sweep.log_summary(results, spec, wandb_cfg, "offline")
    table, = (out / "wandb").glob("offline-run-*/files/media/table/sweep/results_*.table.json")
    assert str(table).startswith(run_dir)
    logged = json.loads(table.read_text())
    assert logged["columns"] == columns and logged["data"] == rows
