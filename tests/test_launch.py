"""Launch scripts in configs/launch: the commands they run (fast, with stand-in launchers on PATH)
and a real two-node torchrun launch on the CPU (slow)."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from reangle.config import load_config, split_config_tokens

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = ROOT / "configs" / "launch"
PRINT_ARGV = "#!/bin/sh\nexec {python} -c 'import json, sys; print(json.dumps(sys.argv[1:]))' \"$@\"\n"


def _stub_bin(tmp_path, *names):
    """A folder of executables that print their arguments as JSON instead of launching anything."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for name in names:
        path = folder / name
        path.write_text(PRINT_ARGV.format(python=sys.executable))
        path.chmod(0o755)
    return folder


def _run(script, env, *args):
    proc = subprocess.run(["bash", str(LAUNCH / script), *args], env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _train_config(argv):
    """The config train.py would build from ``argv`` (everything after ``train.py``)."""
    tokens = argv[argv.index("train.py") + 1:]
    assert tokens[0] == "--config"
    return load_config(*split_config_tokens(tokens[1:]))


def test_torchrun_script_sets_devices_and_nodes_to_match_the_launch(tmp_path):
    stub = _stub_bin(tmp_path, "python")
    argv = _run("torchrun.sh", {"PATH": f"{stub}:{os.environ['PATH']}", "NNODES": "2", "NODE_RANK": "1",
                                "MASTER_ADDR": "10.0.0.1"}, "4", "data.video=clip.mp4", "train.steps=10")
    assert argv[:2] == ["-m", "torch.distributed.run"]
    assert {"--nnodes=2", "--node-rank=1", "--nproc-per-node=4", "--master-addr=10.0.0.1"} <= set(argv)
    cfg = _train_config(argv)
    assert (cfg.trainer.devices, cfg.trainer.num_nodes, cfg.train.steps, cfg.views.per_motion) == (4, 2, 10, 2)


def test_slurm_script_runs_one_task_per_gpu_on_every_node(tmp_path):
    stub = _stub_bin(tmp_path, "srun")
    env = {"PATH": f"{stub}:{os.environ['PATH']}", "SLURM_SUBMIT_DIR": str(ROOT), "SLURM_NTASKS_PER_NODE": "4",
           "SLURM_NNODES": "2", "SLURM_JOB_ID": "77"}
    argv = _run("slurm.sbatch", env, "data.video=clip.mp4", 'data.prompt="a dog: runs"', "train.lr=2e-4")
    assert argv[:2] == ["python", "train.py"]
    cfg = _train_config(argv)
    assert (cfg.trainer.devices, cfg.trainer.num_nodes, cfg.run.name) == (4, 2, "reangle-77")
    assert cfg.data.video == "clip.mp4" and cfg.data.prompt == "a dog: runs" and cfg.train.lr == 2e-4
    text = (LAUNCH / "slurm.sbatch").read_text()
    assert "#SBATCH --nodes=2" in text and "#SBATCH --ntasks-per-node=4" in text


def test_sweep_array_script_runs_one_shard_per_array_task(tmp_path):
    stub = _stub_bin(tmp_path, "python")
    env = {"PATH": f"{stub}:{os.environ['PATH']}", "SLURM_SUBMIT_DIR": str(ROOT), "SLURM_ARRAY_TASK_ID": "3",
           "SLURM_ARRAY_TASK_COUNT": "8", "SWEEP": "configs/sweeps/ablations.yaml",
           "MANIFEST": "configs/benchmark/synthetic.yaml", "METRICS": "met3r,sed"}
    argv = _run("sweep_array.sbatch", env)
    assert argv == ["-m", "reangle.sweep", "configs/sweeps/ablations.yaml", "--manifest",
                    "configs/benchmark/synthetic.yaml", "--shard", "3/8", "--metrics", "met3r,sed"]


def _array_shards(tmp_path, array_env, ids):
    """The ``--shard`` of each task of a job array (``array_env``: SLURM_ARRAY_TASK_{MIN,MAX,STEP,COUNT})."""
    stub = _stub_bin(tmp_path, "python")
    shards = []
    for task in ids:
        env = {"PATH": f"{stub}:{os.environ['PATH']}", "SLURM_SUBMIT_DIR": str(ROOT), "SLURM_ARRAY_TASK_ID": str(task),
               "SWEEP": "configs/sweeps/ablations.yaml", "MANIFEST": "configs/benchmark/synthetic.yaml", **array_env}
        argv = _run("sweep_array.sbatch", env)
        shards.append(argv[argv.index("--shard") + 1])
    return shards


@pytest.mark.parametrize("first, last, step", [(0, 7, 1), (1, 8, 1), (3, 17, 2)])
def test_sweep_array_shards_cover_every_unit_whatever_the_array_range(tmp_path, first, last, step):
    ids = list(range(first, last + 1, step))
    env = {"SLURM_ARRAY_TASK_MIN": str(first), "SLURM_ARRAY_TASK_MAX": str(last),
           "SLURM_ARRAY_TASK_COUNT": str(len(ids)), **({"SLURM_ARRAY_TASK_STEP": str(step)} if step > 1 else {})}
    assert _array_shards(tmp_path, env, ids) == [f"{i}/{len(ids)}" for i in range(len(ids))]


def test_sweep_array_refuses_a_list_without_a_regular_step(tmp_path):
    env = {**os.environ, "SLURM_SUBMIT_DIR": str(ROOT), "SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "1",
           "SLURM_ARRAY_TASK_MAX": "9", "SLURM_ARRAY_TASK_COUNT": "3", "SWEEP": "s.yaml", "MANIFEST": "m.yaml"}
    proc = subprocess.run(["bash", str(LAUNCH / "sweep_array.sbatch")], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "no regular place" in proc.stderr


def test_slurm_script_with_ntasks_instead_of_ntasks_per_node(tmp_path):
    stub = _stub_bin(tmp_path, "srun")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update({"PATH": f"{stub}:{os.environ['PATH']}", "SLURM_SUBMIT_DIR": str(ROOT), "SLURM_NTASKS": "8",
                "SLURM_NNODES": "2", "SLURM_JOB_ID": "78"})
    proc = subprocess.run(["bash", str(LAUNCH / "slurm.sbatch"), "data.video=clip.mp4"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    cfg = _train_config(json.loads(proc.stdout))
    assert (cfg.trainer.devices, cfg.trainer.num_nodes) == (4, 2)
    env["SLURM_NTASKS"] = "7"
    proc = subprocess.run(["bash", str(LAUNCH / "slurm.sbatch")], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "does not split evenly" in proc.stderr


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_join_one_process_group_through_the_torchrun_script(tmp_path, tiny_omega, tiny_model_dir):
    port = str(_free_port())
    args = ["1", "data.height=64", "data.width=96", f"train.omega={tiny_omega}", "train.steps=2",
            "train.checkpoint_every=2", "sample.at_train_end=false", "trainer.accelerator=cpu", "trainer.strategy=ddp",
            f"run.root={tmp_path}", "run.name=two-nodes", f"run.cache_dir={tiny_model_dir.parent.parent}"]
    procs = []
    for rank in range(2):
        env = {**os.environ, "NNODES": "2", "NODE_RANK": str(rank), "MASTER_PORT": port, "OMP_NUM_THREADS": "1",
               "CONFIG": "configs/presets/tiny.yaml", "PYTHON": sys.executable}
        procs.append(subprocess.Popen(["bash", str(LAUNCH / "torchrun.sh"), *args], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    joined = "".join(logs)
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in joined and "GLOBAL_RANK: 1, MEMBER: 2/2" in joined
    assert (tmp_path / "two-nodes" / "lora" / "final" / "pytorch_lora_weights.safetensors").is_file()
