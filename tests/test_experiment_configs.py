"""Ablation configs: the `experiment` key, every file in configs/experiment, unseen views."""
from pathlib import Path

import pytest

from reangle.config import CONFIG_DIR, ConfigError, load_config, save_config
from reangle.data.omega import INPUT_VIEW
from reangle.geometry.trajectory import TrajectoryError
from reangle.sampling.plan import plan_views
from reangle.training import build

EXPERIMENT_DIR = CONFIG_DIR / "experiment"
VIDEO = ["data.video=synthetic"]


def _experiments():
    names = sorted(p.stem for p in EXPERIMENT_DIR.glob("*.yaml"))
    assert {"input_only", "unmasked", "independent_inpainting", "unseen_views", "lora_rank"} <= set(names)
    return names


@pytest.mark.parametrize("mode_file", ["static.yaml", "dynamic.yaml"])
def test_every_experiment_file_validates_on_both_modes(mode_file):
    for name in _experiments():
        by_key = load_config([CONFIG_DIR / mode_file], [*VIDEO, f"experiment=[{name}]"])
        by_file = load_config([CONFIG_DIR / mode_file, EXPERIMENT_DIR / f"{name}.yaml"], VIDEO)
        by_key.experiment = []
        assert by_key == by_file, name


def test_experiments_set_what_the_paper_ablates():
    base = load_config([CONFIG_DIR / "static.yaml"], VIDEO)
    assert base.train.views is None and base.train.masked and list(base.train.exclude_motions) == []

    def cfg(*names, extra=()):
        return load_config([CONFIG_DIR / "static.yaml"], [*VIDEO, f"experiment=[{','.join(names)}]", *extra])

    assert list(cfg("input_only").train.views) == [INPUT_VIEW]
    assert cfg("unmasked").train.masked is False
    assert base.inpaint.guidance and cfg("independent_inpainting").inpaint.guidance is False
    assert list(cfg("unseen_views").train.exclude_motions) == ["orbit_up", "orbit_down"]
    assert cfg("lora_rank", extra=["lora.rank=16"]).lora.alpha == 16
    both = cfg("unmasked", "unseen_views")
    assert both.train.masked is False and list(both.train.exclude_motions) == ["orbit_up", "orbit_down"]


def test_overrides_win_over_experiments_and_experiments_over_files(tmp_path):
    assert load_config([CONFIG_DIR / "static.yaml"], [*VIDEO, "experiment=[unmasked]", "train.masked=true"]).train.masked
    mode_file = tmp_path / "mine.yaml"
    mode_file.write_text("experiment: [unmasked]\ntrain:\n  masked: true\n")
    assert load_config([mode_file], VIDEO).train.masked is False


def test_a_saved_run_config_loads_back_to_the_same_values(tmp_path):
    cfg = load_config([CONFIG_DIR / "static.yaml"], [*VIDEO, "experiment=[unmasked,unseen_views]",
                                                     "train.exclude_motions=[dolly_in]"])
    path = save_config(cfg, tmp_path)
    assert path.read_text().startswith("# merged experiments: unmasked, unseen_views\n")
    again = load_config([path])
    assert list(again.experiment) == [] and again.train.masked is False
    assert list(again.train.exclude_motions) == ["dolly_in"]
    cfg.experiment = []
    assert again == cfg


def test_unknown_or_nested_experiments_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="experiment 'nope' not found.*unmasked"):
        load_config([], [*VIDEO, "experiment=[nope]"])
    nested = tmp_path / "nested.yaml"
    nested.write_text("experiment: [unmasked]\n")
    with pytest.raises(ConfigError, match="cannot name others"):
        load_config([], [*VIDEO, f"experiment=[{nested}]"])
    bad_key = tmp_path / "bad.yaml"
    bad_key.write_text("train:\n  maskd: false\n")
    with pytest.raises(ConfigError, match="train.maskd"):
        load_config([], [*VIDEO, f"experiment=[{bad_key}]"])


def _stage2_cfg(tmp_path, tiny_omega, tiny_model_dir, *extra):
    return load_config(["configs/presets/tiny.yaml"], ["data.height=64", "data.width=96", f"train.omega={tiny_omega}",
                                                        f"run.root={tmp_path}", f"run.cache_dir={tiny_model_dir.parent.parent}",
                                                        *extra])


def test_excluded_motions_are_not_trained_on_but_still_sampled(tmp_path, tiny_omega, tiny_model_dir):
    cfg = _stage2_cfg(tmp_path, tiny_omega, tiny_model_dir, "train.exclude_motions=[orbit_left]")
    dm = build.build_datamodule(cfg, build.build_spec(cfg))
    dm.prepare_data()
    dm.setup("fit")
    assert dm.dataset.names == [INPUT_VIEW]
    assert [job.name for job in plan_views(dm.omega(), cfg.mode, 0)] == ["orbit_left_0"]
    everything = _stage2_cfg(tmp_path, tiny_omega, tiny_model_dir)
    dm_all = build.build_datamodule(everything, build.build_spec(everything))
    dm_all.prepare_data()
    dm_all.setup("fit")
    assert dm_all.dataset.names == [INPUT_VIEW, "orbit_left_0"]


def test_an_unknown_excluded_motion_is_named_before_any_model_loads(tmp_path, tiny_omega, tiny_model_dir):
    cfg = _stage2_cfg(tmp_path, tiny_omega, tiny_model_dir, "train.exclude_motions=[orbit_sideways]")
    with pytest.raises(TrajectoryError, match="orbit_sideways"):
        build.build_datamodule(cfg, spec=None)
