"""Sweep files: every shipped sweep's dry run, grid and random draws, sharding, unit ids."""
import itertools
import math
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from reangle import sweep
from reangle.config import CONFIG_DIR
from reangle.experiments.manifest import load_manifest
from reangle.experiments.plan import parse_shard, plan_units, shard
from reangle.experiments.sweep_spec import SweepError, draw_trials, load_sweep

SWEEPS = sorted((CONFIG_DIR / "sweeps").glob("*.yaml"))
SYNTHETIC = CONFIG_DIR / "benchmark" / "synthetic.yaml"
COMMAND = ["${env}", "${interpreter}", "${program}", "--config", "configs/presets/tiny.yaml", "${args_no_hyphens}"]


def _expected_trials(path):
    """The parameter sets a sweep file asks for, read from the YAML directly."""
    data = yaml.safe_load(Path(path).read_text())
    if data["method"] == "random":
        return data["run_cap"]
    sizes = [len(p["values"]) if "values" in p else 1 for p in data["parameters"].values()]
    return math.prod(sizes)


def test_the_paper_sweeps_are_shipped():
    names = {load_sweep(p).name: load_sweep(p) for p in SWEEPS}
    assert {"ablations", "lora-rank-x-views"} <= set(names)
    assert {s.method for s in names.values()} == {"grid", "random"}


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_dry_run_lists_every_trial_on_every_video_and_validates_it(path, tmp_path, capsys):
    code = sweep.main([str(path), "--manifest", str(SYNTHETIC), "--dry-run", "--out", str(tmp_path)])
    lines = capsys.readouterr().out.splitlines()
    videos = [v.name for v in load_manifest(SYNTHETIC).videos]
    units = lines[:-1]
    assert len(units) == _expected_trials(path) * len(videos)
    assert all(line.split()[0].split("-", 1)[1].startswith(tuple(videos)) for line in units)
    assert [line for line in units if "INVALID" in line] == []
    assert code == 0
    assert not (tmp_path / "trials").exists()


def test_units_resolve_to_the_swept_settings_on_the_manifest_videos(tmp_path):
    spec = load_sweep(CONFIG_DIR / "sweeps" / "lora_rank_views.yaml")
    manifest = load_manifest(SYNTHETIC)
    units = plan_units(spec, manifest)
    pairs = {(u.params["lora.rank"], u.params["views.per_motion"]) for u in units}
    assert pairs == set(itertools.product([16, 32, 64, 128, 256], [1, 2, 3]))
    for unit in units[:: len(manifest.videos) + 1]:
        cfg = sweep.unit_config(spec, unit, tmp_path / "trials", "offline")
        assert cfg.lora.rank == cfg.lora.alpha == unit.params["lora.rank"]
        assert cfg.views.per_motion == unit.params["views.per_motion"]
        assert cfg.data.synthetic.seed == unit.video.overrides["data.synthetic.seed"]
        assert cfg.run.dir == f"{tmp_path / 'trials'}/{unit.id}"
        assert cfg.logger.group == "lora-rank-x-views" and cfg.logger.wandb_mode == "offline"


def test_unit_ids_are_stable_and_change_with_the_settings():
    spec = load_sweep(CONFIG_DIR / "sweeps" / "tiny.yaml")
    manifest = load_manifest(SYNTHETIC)
    first = [u.id for u in plan_units(spec, manifest)]
    assert first == [u.id for u in plan_units(spec, manifest)] and len(set(first)) == len(first)
    edited = replace(spec, parameters={**spec.parameters, "lora.rank": {"values": [2, 8]}})
    kept = {i for i in first if i.startswith(("000-", "002-"))}  # rank 2 keeps its place in the grid
    assert {u.id for u in plan_units(edited, manifest)} & set(first) == kept


def _write_sweep(tmp_path, method="random", parameters=None, **extra):
    data = {"program": "train.py", "method": method, "command": COMMAND, **extra,
            "parameters": parameters or {"train.lr": {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-3}}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_random_draws_are_seeded_and_within_their_distributions(tmp_path):
    spec = load_sweep(_write_sweep(tmp_path, run_cap=200, parameters={
        "train.lr": {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-3},
        "train.steps": {"distribution": "int_uniform", "min": 2, "max": 4},
        "train.image_dropout": {"distribution": "uniform", "min": 0.0, "max": 0.1},
        "lora.rank": {"values": [4, 8]},
        "train.masked": {"value": False}}))
    trials = draw_trials(spec, seed=3)
    assert len(trials) == 200 and trials == draw_trials(spec, seed=3) and trials != draw_trials(spec, seed=4)
    lrs = [t["train.lr"] for t in trials]
    assert all(1e-5 <= v <= 1e-3 for v in lrs)
    assert sum(v < 1e-4 for v in lrs) > 60  # log-uniform: half the draws below the geometric middle
    assert {t["train.steps"] for t in trials} == {2, 3, 4}
    assert all(0.0 <= t["train.image_dropout"] <= 0.1 for t in trials)
    assert {t["lora.rank"] for t in trials} == {4, 8} and all(t["train.masked"] is False for t in trials)
    assert len(draw_trials(spec, count=5)) == 5


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="random"), "run_cap"),
    (dict(method="bayes"), "cannot run offline"),
    (dict(method="grid"), "grid sweep needs 'value' or 'values'"),
    (dict(parameters={"lora": {"parameters": {"rank": {"values": [1]}}}}), "nested parameters"),
    (dict(parameters={"lora.rank": {"distribution": "beta"}}), "not supported offline"),
    (dict(command=["${env}", "${interpreter}", "${program}", "${args}"]), "args_no_hyphens"),
])
def test_sweeps_the_runner_cannot_run_are_clear_errors(tmp_path, kwargs, message):
    with pytest.raises(SweepError, match=message):
        draw_trials(load_sweep(_write_sweep(tmp_path, **kwargs)))


def test_shards_split_every_unit_exactly_once():
    units = plan_units(load_sweep(CONFIG_DIR / "sweeps" / "lora_rank_views.yaml"), load_manifest(SYNTHETIC))
    parts = [shard(units, i, 3) for i in range(3)]
    ids = [u.id for part in parts for u in part]
    assert sorted(ids) == sorted(u.id for u in units) and len(ids) == len(set(ids))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert parse_shard("2/3") == (2, 3)
    for bad in ("3/3", "1", "a/b"):
        with pytest.raises(ValueError, match="i/n"):
            parse_shard(bad)


def test_a_sweep_started_outside_the_project_root_is_refused(tmp_path, monkeypatch):
    path = _write_sweep(tmp_path, run_cap=1)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SweepError, match="run the sweep from the project root"):
        sweep.main([str(path), "--dry-run"])


def test_metrics_without_the_evaluation_package_are_refused_before_any_trial(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "has_eval_cli", lambda: False)
    with pytest.raises(SweepError, match="needs the evaluation package"):
        sweep.main([str(CONFIG_DIR / "sweeps" / "tiny.yaml"), "--manifest", str(SYNTHETIC), "--out", str(tmp_path),
                    "--metrics", "met3r"])
    assert not (tmp_path / "trials").exists()


def test_an_override_of_a_swept_key_is_refused_before_any_trial(tmp_path):
    with pytest.raises(SweepError, match="train.masked conflicts with the sweep's own parameter"):
        sweep.main([str(CONFIG_DIR / "sweeps" / "tiny.yaml"), "--manifest", str(SYNTHETIC), "--out", str(tmp_path),
                    "train.masked=true", "train.steps=2"])
    assert not (tmp_path / "trials").exists()


def test_the_command_runs_the_program_with_the_overrides_in_place(tmp_path):
    spec = load_sweep(_write_sweep(tmp_path, run_cap=1))
    argv = spec.argv(["a=1", "b=2"])
    assert argv[1:] == ["train.py", "--config", "configs/presets/tiny.yaml", "a=1", "b=2"]
    assert Path(argv[0]).name.startswith("python")


def test_units_log_to_wandb_offline_grouped_by_the_sweep(tmp_path):
    from lightning.pytorch.loggers import WandbLogger

    from reangle.training.build import build_loggers

    spec = load_sweep(CONFIG_DIR / "sweeps" / "ablations.yaml")
    unit = plan_units(spec, load_manifest(SYNTHETIC))[0]
    cfg = sweep.unit_config(spec, unit, tmp_path / "trials", "offline")
    wandb_logger = next(lg for lg in build_loggers(cfg) if isinstance(lg, WandbLogger))
    assert wandb_logger._wandb_init["group"] == "ablations" and wandb_logger._wandb_init["mode"] == "offline"
    assert wandb_logger._wandb_init["name"] == unit.id
    assert wandb_logger._wandb_init["tags"] == ["sweep:ablations", f"video:{unit.video.name}", "experiment=[]"]
