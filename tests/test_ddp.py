"""Two-process DDP on the CPU (gloo): training runs and both ranks hold the same LoRA after each step."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_two_process_ddp_keeps_ranks_in_sync(tmp_path, tiny_omega, tiny_model_dir):
    out = tmp_path / "ddp.json"
    cmd = [sys.executable, str(ROOT / "tests" / "ddp_worker.py"), str(out), "data.height=64", "data.width=96",
           f"train.omega={tiny_omega}", f"run.root={tmp_path}", "run.name=ddp",
           f"run.cache_dir={tiny_model_dir.parent.parent}", "trainer.devices=2", "trainer.strategy=ddp",
           "train.steps=2", "train.checkpoint_every=2", "train.lr=1e-2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["world_size"] == 2 and result["steps"] == 2
    assert len(result["diffs"]) == 2 and max(result["diffs"]) == 0.0
    # the two ranks trained on different views (the two-view Omega is split between them)
    assert all(ranks[0] != ranks[1] for ranks in result["visited"])
    assert (tmp_path / "ddp" / "lora" / "final" / "pytorch_lora_weights.safetensors").is_file()
