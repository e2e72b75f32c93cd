"""Two-process FSDP on the CPU (gloo, through Lightning's FSDP strategy): the LoRA export gathers
the full weights on every rank, and sampling at the end runs with full parameters, giving the
videos that sampling the exported LoRA without FSDP gives."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import sample
from reangle.io.video import read_video

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # two processes, about 75 s on a shared 2-core CPU; fast tests: test_full_params.py
def test_fsdp_export_and_sampling_use_the_full_weights(tmp_path, tiny_omega, tiny_model_dir):
    out = tmp_path / "fsdp.json"
    cmd = [sys.executable, str(ROOT / "tests" / "fsdp_worker.py"), str(out), "data.height=64", "data.width=96",
           f"train.omega={tiny_omega}", f"run.root={tmp_path}", "run.name=fsdp",
           f"run.cache_dir={tiny_model_dir.parent.parent}", "trainer.devices=2", "trainer.accelerator=cpu",
           "trainer.precision=32-true", "train.gradient_checkpointing=false", "train.steps=2",
           "train.checkpoint_every=2", "train.lr=1e-2", "sample.steps=2", "sample.views=[input,orbit_left_0]"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["world_size"] == 2 and result["steps"] == 2
    assert result["same_keys"] and result["max_diff"] == 0.0 and result["trained"]
    a_shapes = [s for k, s in result["shapes"].items() if "lora_A" in k]
    assert a_shapes and all(len(s) == 2 and s[0] == 4 for s in a_shapes)  # full [rank, in] matrices, not shards
    # the sharded checkpoint holds every LoRA weight (under the names FSDP's state dict uses)
    stored = {k.removeprefix("model.") for k in result["checkpoint_keys"] if k.startswith("model.")}
    assert len(result["trainable_keys"]) == 2 * len(a_shapes)
    assert stored == set(result["trainable_keys"]), result["checkpoint_keys"][:6]

    # each rank sampled one view during training; sample.py with the exported LoRA and no FSDP agrees
    run = tmp_path / "fsdp"
    reference = tmp_path / "reference"
    sample.main(["--run", str(run), f"sample.out_dir={reference}"])
    for view in ("input", "orbit_left_0"):
        during = read_video(run / "samples" / f"{view}.mp4", 9, 64, 96)
        after = read_video(reference / f"{view}.mp4", 9, 64, 96)
        assert (during - after).abs().mean() < 0.01, view
