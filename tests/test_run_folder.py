"""The run-folder lifecycle (reangle.run_folder) and the pieces that keep runs and processes apart:
fingerprints, claiming a folder, resume checks, the Omega a config names, samples of one run,
resumable sampling, stale staging files, the cache lock, non-finite LoRA weights."""
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from conftest import write_test_omega
from reangle.config import load_config
from reangle.data.omega import Omega
from reangle.run_folder import CHECKPOINT_KEY, RunFolderError, claim, run_fingerprint
from reangle.training.build import resume_path
from reangle.utils import cache_lock, clean_stale_staging, temporary_path

TINY = "configs/presets/tiny.yaml"


def _cfg(tmp_path, *overrides, name="a"):
    return load_config([TINY], [f"run.root={tmp_path}", f"run.name={name}", *overrides])


def test_the_fingerprint_ignores_logging_location_and_devices_but_not_what_changes_results(tmp_path):
    base = run_fingerprint(_cfg(tmp_path))
    for same in (["logger.kind=wandb"], ["trainer.log_every_n_steps=7"], ["train.resume=last"], ["sample.device=cpu"],
                 ["eval.metrics=[met3r]"],
                 ["run.cache_dir=/elsewhere"]):
        assert run_fingerprint(_cfg(tmp_path, *same)) == base, same
    # a moved run (another root and name): its paths under run.dir move with it
    assert run_fingerprint(_cfg(tmp_path / "moved", name="b")) == base
    for other in (["train.lr=0.001"], ["data.prompt=another"], ["sample.steps=9"], ["data.synthetic.seed=3"]):
        assert run_fingerprint(_cfg(tmp_path, *other)) != base, other


def test_a_folder_of_another_config_is_refused_and_its_config_kept(tmp_path):
    claim(_cfg(tmp_path))
    run = tmp_path / "a"
    saved = (run / "config.yaml").read_bytes()
    assert json.loads((run / "run.json").read_text())["fingerprint"] == run_fingerprint(_cfg(tmp_path))
    with pytest.raises(RunFolderError, match=r"another config \(train.lr: 0.0001 -> 0.01\)"):
        claim(_cfg(tmp_path, "train.lr=1e-2"))
    assert (run / "config.yaml").read_bytes() == saved
    claim(_cfg(tmp_path, "logger.kind=wandb"))  # the same run: logging is not part of it


def test_the_same_config_over_checkpoints_needs_resume_and_a_foreign_folder_is_refused(tmp_path):
    claim(_cfg(tmp_path))
    (tmp_path / "a" / "checkpoints").mkdir()
    (tmp_path / "a" / "checkpoints" / "last.ckpt").write_bytes(b"")
    with pytest.raises(RunFolderError, match="continue it with train.resume=last"):
        claim(_cfg(tmp_path))
    claim(_cfg(tmp_path, "train.resume=last"))
    (tmp_path / "b" / "samples").mkdir(parents=True)  # outputs of a run that has no run.json
    with pytest.raises(RunFolderError, match="holds run outputs but no run.json"):
        claim(_cfg(tmp_path, name="b"))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "trial.log").write_text("a sweep's log")  # other files are fine
    claim(_cfg(tmp_path, name="c"))


def test_resume_needs_a_checkpoint_of_the_same_config(tmp_path):
    cfg = _cfg(tmp_path)
    ckpt = tmp_path / "x.ckpt"
    torch.save({CHECKPOINT_KEY: run_fingerprint(cfg), "state_dict": {}}, ckpt)
    assert resume_path(_cfg(tmp_path, f"train.resume={ckpt}")) == str(ckpt)
    with pytest.raises(RunFolderError, match="written by a run of another config"):
        resume_path(_cfg(tmp_path, f"train.resume={ckpt}", "train.lr=1e-2"))
    torch.save({"state_dict": {}}, ckpt)  # no identity at all
    with pytest.raises(RunFolderError, match="another config"):
        resume_path(_cfg(tmp_path, f"train.resume={ckpt}"))


def test_sampling_and_eval_use_the_omega_of_the_config_not_a_stale_pointer(tmp_path, tiny_omega):
    from reangle.sampling.run import find_omega

    old = write_test_omega(tmp_path / "old_omega", warped_views=2)
    run = tmp_path / "a"
    run.mkdir()
    (run / "omega.json").write_text(json.dumps({"path": str(old.root), "key": old.key}))
    assert find_omega(_cfg(tmp_path, f"train.omega={tiny_omega}")).root == Path(tiny_omega)


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_staging_files_of_dead_processes_are_cleaned_and_live_ones_kept(tmp_path):
    dead = _dead_pid()
    stale_dir, stale_file = tmp_path / f".key.tmp{dead}", tmp_path / f".view.tmp{dead}.mp4"
    stale_dir.mkdir()
    (stale_dir / "video.mp4").write_bytes(b"x")
    stale_file.write_bytes(b"x")
    live = [tmp_path / f".other.tmp{os.getppid()}.mp4", temporary_path(tmp_path / "mine.json"), tmp_path / ".k.lock",
            tmp_path / "view.mp4"]
    for path in live:
        path.write_bytes(b"x")
    assert sorted(clean_stale_staging(tmp_path)) == sorted([stale_dir, stale_file])
    assert all(p.exists() for p in live) and not stale_dir.exists() and not stale_file.exists()


def test_publishing_never_deletes_an_omega_another_process_may_read(tmp_path):
    first = write_test_omega(tmp_path / "omega")
    video = first.root / first.view("input").video
    with open(video, "rb") as reader:
        second = write_test_omega(tmp_path / "omega")  # published over the first
        assert reader.read(16)
    aside = temporary_path(tmp_path / "omega.old")
    assert (aside / "input" / "video.mp4").is_file() and Omega.load(second.root).key == first.key


def test_a_build_waits_for_the_cache_lock_and_cleans_stale_staging(tmp_path):
    from reangle.data.build import build_omega, omega_dir

    cfg = load_config([TINY], [f"run.cache_dir={tmp_path / 'cache'}", "data.height=64", "data.width=96",
                               "data.num_frames=5", "views.motions=[orbit_left]", "warp.preview=false"])
    final = omega_dir(cfg)
    final.parent.mkdir(parents=True)
    stale = final.parent / f".{final.name}.tmp{_dead_pid()}"
    stale.mkdir()
    result = {}
    with cache_lock(final):
        worker = threading.Thread(target=lambda: result.update(omega=build_omega(cfg)))
        worker.start()
        time.sleep(2.0)
        assert worker.is_alive() and not final.exists() and stale.exists()  # waiting for the lock
    worker.join(timeout=300)
    assert result["omega"].root == final and (final / "manifest.json").is_file() and not stale.exists()


def test_eval_scores_only_the_samples_of_its_run(tmp_path):
    from eval.models import EvalConfigError
    from eval.run import sampled_views
    from reangle.sampling.outputs import write_view

    video = torch.rand(5, 3, 64, 96)
    write_view(tmp_path, video, {"view": "orbit_left_0", "run": "this-run"}, fps=8)
    write_view(tmp_path, video, {"view": "orbit_left_9", "run": "an-older-run"}, fps=8)
    videos, metadata = sampled_views(tmp_path, 64, 96, run_id="this-run")
    assert list(videos) == ["orbit_left_0"] and [m["view"] for m in metadata] == ["orbit_left_0"]
    with pytest.raises(EvalConfigError, match="of this run .*2 of another run are not scored"):
        sampled_views(tmp_path, 64, 96, run_id="a-new-run")


class _CountingSampler:
    """A stand-in for CogVideoXSampler that records which views it was asked to sample."""

    scheduler = object()

    def __init__(self):
        self.sampled = []

    def encode_prompts(self, prompts):
        return prompts

    def release_text_encoder(self):
        pass

    def sample(self, requests, embeddings, settings):
        self.sampled += [r.prompt for r in requests]
        return [r.image[None].expand(r.num_frames, -1, -1, -1).clone() for r in requests]


def test_sampling_keeps_the_views_already_written_and_samples_only_the_rest(tmp_path, tiny_omega):
    from reangle.sampling.multiview import sample_views
    from reangle.sampling.plan import plan_views
    from reangle.sampling.sampler import SamplingSettings

    omega = Omega.load(write_test_omega(tmp_path / "omega", warped_views=2).root)
    jobs = plan_views(omega, "static", 0, ["orbit_left_0", "orbit_left_1"])
    for job, prompt in zip(jobs, ("first", "second")):
        job.prompt = prompt
    out = tmp_path / "samples"
    sampler = _CountingSampler()
    sample_views(sampler, jobs, SamplingSettings(steps=2), 9, out, 8, extra_metadata={"run": "r"})
    assert sampler.sampled == ["first", "second"]
    kept = (out / "orbit_left_0.mp4").stat().st_mtime_ns
    (out / "orbit_left_1.json").unlink()  # killed before its metadata (the completion mark) was written
    sampler = _CountingSampler()
    result = sample_views(sampler, jobs, SamplingSettings(steps=2), 9, out, 8, extra_metadata={"run": "r"})
    assert sampler.sampled == ["second"] and [v.name for v in result.views] == ["orbit_left_0", "orbit_left_1"]
    assert (out / "orbit_left_0.mp4").stat().st_mtime_ns == kept
    sampler = _CountingSampler()  # other settings (or another run): everything again
    sample_views(sampler, jobs, SamplingSettings(steps=3), 9, out, 8, extra_metadata={"run": "r"})
    assert sampler.sampled == ["first", "second"]


def test_non_finite_lora_weights_are_refused_on_export_and_on_load(tmp_path):
    from peft import LoraConfig
    from safetensors.torch import save_file

    from reangle.models.lora import LoraFileError, load_lora, save_lora

    state = {"transformer_blocks.0.attn1.to_q.lora_A.weight": torch.tensor([[1.0, float("nan")]]),
             "transformer_blocks.0.attn1.to_q.lora_B.weight": torch.ones(2, 1)}
    with pytest.raises(LoraFileError, match="1 of 2 LoRA weight tensors are not finite"):
        save_lora(tmp_path / "lora", state, LoraConfig(r=1, target_modules=["to_q"]))
    assert not (tmp_path / "lora").exists()
    stale = tmp_path / f".lora.tmp{_dead_pid()}"  # the staging folder of a killed export
    stale.mkdir()
    finite = {**state, "transformer_blocks.0.attn1.to_q.lora_A.weight": torch.ones(1, 2)}
    save_lora(tmp_path / "lora", finite, LoraConfig(r=1, target_modules=["to_q"]))
    assert (tmp_path / "lora" / "pytorch_lora_weights.safetensors").is_file() and not stale.exists()
    path = tmp_path / "bad.safetensors"
    save_file({f"transformer.{k}": v for k, v in state.items()}, str(path))
    with pytest.raises(LoraFileError, match="not finite"):
        load_lora(torch.nn.Linear(1, 1), path)
