"""Config loading: merge order, overrides, unknown/missing keys, instantiate, saving."""
import pytest
from omegaconf import OmegaConf

from reangle.config import ConfigError, instantiate, load_config, save_config


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_files_then_overrides_win_in_order(tmp_path):
    a = _write(tmp_path, "a.yaml", "data:\n  video: a.mp4\n  num_frames: 17\n")
    b = _write(tmp_path, "b.yaml", "data:\n  num_frames: 25\n")
    cfg = load_config([a, b], ["data.height=64", "run.name=x", "model.pretrained=tiny"])
    assert cfg.data.video == "a.mp4"
    assert cfg.data.num_frames == 25
    assert cfg.data.height == 64
    assert cfg.run.dir == "runs/x"  # interpolation resolved after overrides


def test_unknown_key_in_file_names_it(tmp_path):
    a = _write(tmp_path, "a.yaml", "data:\n  video: a.mp4\n  num_frame: 17\n")
    with pytest.raises(ConfigError, match="data.num_frame"):
        load_config([a])


def test_unknown_override_names_it():
    with pytest.raises(ConfigError, match="warp.bogus"):
        load_config([], ["data.video=x.mp4", "warp.bogus=1"])


def test_missing_key_names_it():
    with pytest.raises(ConfigError, match="data.video"):
        load_config([])


def test_override_without_equals_is_rejected():
    with pytest.raises(ConfigError, match="key=value"):
        load_config([], ["data.video"])


def test_missing_file_is_clear(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config([tmp_path / "nope.yaml"])


def test_instantiate_builds_and_checks_params():
    node = OmegaConf.create({"target": "string.Template", "params": {"template": "$a!"}})
    assert instantiate(node).substitute(a="hi") == "hi!"
    with pytest.raises(ConfigError, match="templ"):
        instantiate({"target": "string.Template", "params": {"templ": "$a"}})
    with pytest.raises(ConfigError, match="cannot import"):
        instantiate({"target": "no_such_module.Thing"})


def test_saved_config_round_trips(tmp_path):
    cfg = load_config([], ["data.video=clip.mp4"])
    path = save_config(cfg, tmp_path / "run")
    assert load_config([path]) == cfg
    assert not list((tmp_path / "run").glob("*.tmp*"))


def test_a_saved_run_config_is_re_rooted_at_the_folder_it_is_loaded_from(tmp_path):
    import shutil

    from reangle.config import load_run_config, save_config

    cfg = load_config([], ["data.video=synthetic", f"run.root={tmp_path / 'runs'}", "run.name=a"])
    save_config(cfg, tmp_path / "runs" / "a")
    moved = tmp_path / "elsewhere" / "b"
    shutil.copytree(tmp_path / "runs" / "a", moved)
    loaded = load_run_config(moved, overrides=["eval.out_dir=/somewhere"])
    assert loaded.run.dir == str(moved) and loaded.sample.out_dir == str(moved / "samples")
    assert loaded.eval.samples_dir == str(moved / "samples") and loaded.eval.out_dir == "/somewhere"
    assert loaded.run.cache_dir == cfg.run.cache_dir  # paths outside the run folder stay


def test_a_repeated_config_flag_appends_its_files(tmp_path):
    import argparse

    from reangle.config import add_config_arguments, config_from_args

    a = _write(tmp_path, "a.yaml", "data:\n  video: a.mp4\n  num_frames: 17\n")
    b = _write(tmp_path, "b.yaml", "data:\n  num_frames: 25\n")
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    args = parser.parse_args(["--config", str(a), "--config", str(b), "data.fps=12", "model.pretrained=tiny",
                              "data.height=64", "data.width=96"])
    assert args.config[:2] == [str(a), str(b)]  # an override after --config is read as one (split later)
    cfg = config_from_args(args)
    assert (cfg.data.video, cfg.data.num_frames, cfg.data.fps) == ("a.mp4", 25, 12)
