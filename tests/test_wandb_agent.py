"""W&B agents and modes: trials started by `wandb agent` (its own command-line construction, run
for real on the tiny preset, offline) get their own run folder and W&B run; `auto` follows
wandb's own credential lookup; the evaluation logs into the training's run."""
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

from reangle.training import wandb_run
from reangle.training.wandb_run import RUN_RECORD, agent_overrides, recorded_run, resolve_mode

ROOT = Path(__file__).resolve().parent.parent
COMMAND = ["${env}", "${interpreter}", "${program}", "--config", "configs/presets/tiny.yaml", "data.height=64",
           "data.width=96", "train.steps=2", "train.checkpoint_every=2", "views.motions=[orbit_left]",
           "inpaint.enabled=false", "sample.at_train_end=false", "logger.kind=wandb", "logger.wandb_mode=offline",
           "${args_no_hyphens}"]


def _agent_commands(monkeypatch, tmp_path, trials):
    """The command lines and environments that wandb's own agent builds for ``trials``
    (``{run id: {key: value}}``), captured instead of started."""
    from wandb import wandb_agent

    started = []

    def capture(command=None, env=None, **kwargs):
        started.append((command, env))
        return types.SimpleNamespace()

    monkeypatch.setattr(wandb_agent, "AgentProcess", capture)
    agent = wandb_agent.Agent.__new__(wandb_agent.Agent)
    agent._sweep_command, agent._function, agent._in_jupyter = list(COMMAND), None, False
    agent._forward_signals, agent._run_processes = False, {}
    for run_id, params in trials.items():
        agent._command_run({"run_id": run_id, "program": "train.py",
                            "args": {key: {"value": value} for key, value in params.items()}})
    return started


def test_agent_trials_get_their_own_run_folder_and_wandb_run(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "agent"))
    monkeypatch.setenv("WANDB_SWEEP_ID", "swp0042")
    monkeypatch.setenv("WANDB_RUN_ID", "")  # set by the agent per trial; restored after the test
    monkeypatch.delenv("WANDB_MODE", raising=False)
    trials = {"trial0001": {"train.masked": True, "lora.rank": 2},
              "trial0002": {"train.masked": False, "lora.rank": 4}}
    started = _agent_commands(monkeypatch, tmp_path, trials)
    assert len(started) == 2
    for (command, env), run_id in zip(started, trials):
        assert command[:3] == ["/usr/bin/env", "python", "train.py"] and env["WANDB_RUN_ID"] == run_id
        env = {**env, "PATH": f"{Path(sys.executable).parent}:{env['PATH']}", "PYTHONPATH": str(ROOT)}
        command = command + [f"run.root={tmp_path / 'runs'}", f"run.cache_dir={tiny_model_dir.parent.parent}"]
        proc = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "W&B: offline (logger.wandb_mode=offline)" in proc.stdout
    folders = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert folders == ["tiny-trial0001", "tiny-trial0002"]
    for run_id, params in trials.items():
        run_dir = tmp_path / "runs" / f"tiny-{run_id}"
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert config["train"]["masked"] is params["train.masked"] and config["lora"]["rank"] == params["lora.rank"]
        assert config["logger"]["group"] == "sweep-swp0042" and config["run"]["name"] == f"tiny-{run_id}"
        assert config["logger"]["tags"] == ["sweep:swp0042", "video:synthetic",
                                            *(f"{k}={json.dumps(v)}" for k, v in params.items())]
        offline, = (run_dir / "wandb").glob("offline-run-*")
        assert offline.name.endswith(f"-{run_id}")
        assert recorded_run(run_dir) == {"id": run_id, "project": "reangle", "group": "sweep-swp0042",
                                         "mode": "offline"}
        assert (run_dir / "checkpoints" / "last.ckpt").is_file()


def test_agent_overrides_only_under_an_agent_and_keep_an_explicit_group(tmp_path):
    from reangle.config import load_config

    cfg = load_config([ROOT / "configs/presets/tiny.yaml"], ["logger.tags=[mine]"])
    assert agent_overrides(cfg, {}) == []
    assert agent_overrides(cfg, {"WANDB_RUN_ID": "r1"}) == []  # a plain resumed run, not a sweep trial
    params = tmp_path / "config-r1.yaml"  # what the agent writes for the trial
    params.write_text("wandb_version: 1\n\nlora.rank:\n  value: 8\ntrain.masked:\n  value: false\n")
    env = {"WANDB_SWEEP_ID": "s9", "WANDB_RUN_ID": "r1", "WANDB_SWEEP_PARAM_PATH": str(params)}
    tags = ["mine", "sweep:s9", "video:synthetic", "lora.rank=8", "train.masked=false"]
    assert agent_overrides(cfg, env) == ['run.name="tiny-r1"', f"logger.tags={json.dumps(tags)}",
                                         'logger.group="sweep-s9"']
    grouped = load_config([ROOT / "configs/presets/tiny.yaml"], ['run.name="tiny-r1"', "logger.group=mine"])
    assert agent_overrides(grouped, env)[0] == 'run.name="tiny-r1"' and len(agent_overrides(grouped, env)) == 2


def _mode_in_fresh_process(tmp_path, env):
    """``resolve_mode("auto")`` in a new process with ``HOME`` = ``tmp_path`` and ``env``."""
    code = "from reangle.training.wandb_run import resolve_mode; print(resolve_mode('auto')[0])"
    base = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k not in ("NETRC", "HOME")}
    proc = subprocess.run([sys.executable, "-c", code], env={**base, "HOME": str(tmp_path), "PYTHONPATH": str(ROOT),
                                                             **env}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def test_auto_mode_goes_online_with_a_wandb_login_in_netrc(tmp_path):
    from wandb.sdk import wandb_setup

    assert _mode_in_fresh_process(tmp_path, {}) == "offline"
    host = wandb_setup.singleton().settings.base_url.split("://", 1)[1]
    netrc = tmp_path / ".netrc"  # what `wandb login` writes
    netrc.write_text(f"machine {host}\n  login user\n  password {'0123456789' * 4}\n")
    netrc.chmod(0o600)
    assert _mode_in_fresh_process(tmp_path, {}) == "online"
    assert _mode_in_fresh_process(tmp_path, {"WANDB_MODE": "offline"}) == "offline"
    (tmp_path / "nothing").mkdir()
    assert _mode_in_fresh_process(tmp_path / "nothing", {"WANDB_API_KEY": "0123456789" * 4}) == "online"


def test_explicit_modes_are_kept():
    assert resolve_mode("offline")[0] == "offline" and resolve_mode("disabled")[0] == "disabled"


def test_csv_logger_with_online_mode_warns(tmp_path):
    from reangle.config import load_config
    from reangle.training.build import build_loggers

    cfg = load_config([ROOT / "configs/presets/tiny.yaml"], [f"run.root={tmp_path}", "logger.wandb_mode=online"])
    with pytest.warns(UserWarning, match="logger.wandb_mode=online has no effect with logger.kind=csv"):
        loggers = build_loggers(cfg)
    assert [type(lg).__name__ for lg in loggers] == ["CSVLogger"]


def test_evaluation_logs_into_the_recorded_run(tmp_path, monkeypatch):
    from reangle.config import load_config
    from reangle.training.build import build_loggers

    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = load_config([ROOT / "configs/presets/tiny.yaml"], [f"run.root={tmp_path}", "logger.kind=wandb",
                                                             "logger.wandb_mode=offline"])
    first = build_loggers(cfg)[0]
    recorded = json.loads((tmp_path / "tiny" / RUN_RECORD).read_text())
    assert recorded["id"] == first.version
    again = build_loggers(cfg, resume_recorded=True)[0]
    assert again.version == first.version
    assert build_loggers(cfg)[0].version != first.version  # a new training run is a new W&B run
    assert wandb_run.recorded_run(tmp_path / "nowhere") is None


def test_a_resumed_training_continues_its_wandb_run(tmp_path, monkeypatch):
    from reangle.config import load_config
    from reangle.training.build import build_trainer

    monkeypatch.delenv("WANDB_MODE", raising=False)
    overrides = [f"run.root={tmp_path}", "logger.kind=wandb", "logger.wandb_mode=offline"]
    first = build_trainer(load_config([ROOT / "configs/presets/tiny.yaml"], overrides)).loggers[0]
    resumed = build_trainer(load_config([ROOT / "configs/presets/tiny.yaml"], [*overrides, "train.resume=last"]))
    assert resumed.loggers[0].version == first.version


def test_python_m_eval_logs_into_the_training_run(tmp_path, tiny_omega, tiny_model_dir):
    # WANDB_SERVICE: a W&B service this test process started would be shared by both commands
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_MODE", "WANDB_SERVICE")}
    env["PYTHONPATH"] = str(ROOT)
    train = [sys.executable, "train.py", "--config", "configs/presets/tiny.yaml", f"run.root={tmp_path}",
             f"run.cache_dir={tiny_model_dir.parent.parent}", f"train.omega={tiny_omega}", "data.height=64",
             "data.width=96", "train.steps=1", "train.checkpoint_every=1", "sample.steps=1",
             "sample.views=[orbit_left_0]", "logger.kind=wandb", "logger.wandb_mode=offline"]
    proc = subprocess.run(train, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = tmp_path / "tiny"
    run_id = recorded_run(run_dir)["id"]
    proc = subprocess.run([sys.executable, "-m", "eval", "--run", str(run_dir), "--metrics", "temporal_flickering"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.name.endswith(f"-{run_id}") for r in runs)  # training, then evaluation
    assert any(list(r.glob("files/media/table/eval/videos_*.table.json")) for r in runs)
