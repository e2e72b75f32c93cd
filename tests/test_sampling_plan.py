"""View selection, start frames, per-view seeds and sharding of the sampling plan; clear errors."""
import json

import pytest
import torch
from PIL import Image

from conftest import write_test_omega
from reangle.data.omega import Omega
from reangle.io.video import read_video
from reangle.sampling.plan import INPAINTED_DIR, SCORES_FILE, SamplingInputError, plan_views, view_seed
from reangle.sampling.shard import gather, shard


@pytest.fixture(scope="module")
def omega(tiny_omega):
    return Omega.load(tiny_omega)


def _first(omega, name):
    return read_video(omega.root / omega.view(name).video, 1, omega.height, omega.width)[0]


def test_static_start_frames_user_over_inpainted_over_warped(omega, tmp_path):
    warped = plan_views(omega, "static", 0, run_dir=tmp_path)
    assert [j.name for j in warped] == ["orbit_left_0"]  # the input is not a target by default
    assert warped[0].start_frame_source == "warped_first_frame" and warped[0].start_frame_path is None
    assert torch.equal(warped[0].start_frame, _first(omega, "orbit_left_0"))
    _inpainted(tmp_path, omega.key)
    inpainted = plan_views(omega, "static", 0, run_dir=tmp_path)[0]
    assert inpainted.start_frame_source == "inpainted" and inpainted.start_frame[0].min() > 0.99
    Image.new("RGB", (192, 128), (0, 0, 255)).save(tmp_path / "mine.png")
    user = plan_views(omega, "static", 0, run_dir=tmp_path, user_frames={"orbit_left_0": str(tmp_path / "mine.png")})[0]
    assert user.start_frame_source == "user" and user.start_frame[2].min() > 0.99
    assert user.start_frame.shape == (3, 64, 96) and user.seed == warped[0].seed


def _inpainted(run_dir, omega_key, views=("orbit_left_0",)):
    """Stage III's output in ``run_dir``: a red start frame per view and the record naming its Omega."""
    (run_dir / INPAINTED_DIR).mkdir(exist_ok=True)
    for view in views:
        Image.new("RGB", (96, 64), (255, 0, 0)).save(run_dir / INPAINTED_DIR / f"{view}.png")
    (run_dir / INPAINTED_DIR / SCORES_FILE).write_text(json.dumps({"omega": omega_key, "views": {v: {} for v in views}}))


def test_a_start_frame_of_another_omega_or_unfinished_is_never_used(omega, tmp_path):
    _inpainted(tmp_path, "key-of-another-video")  # a run on another video left its frame here
    job = plan_views(omega, "static", 0, run_dir=tmp_path)[0]
    assert job.start_frame_source == "warped_first_frame" and torch.equal(job.start_frame, _first(omega, "orbit_left_0"))
    _inpainted(tmp_path, omega.key, views=())  # this Omega's record, but the view is not finished
    assert plan_views(omega, "static", 0, run_dir=tmp_path)[0].start_frame_source == "warped_first_frame"
    (tmp_path / INPAINTED_DIR / SCORES_FILE).unlink()  # an image without any record
    assert plan_views(omega, "static", 0, run_dir=tmp_path)[0].start_frame_source == "warped_first_frame"


def test_dynamic_mode_starts_every_view_from_the_input_first_frame(tmp_path):
    omega = write_test_omega(tmp_path / "omega", mode="dynamic")
    jobs = plan_views(omega, "dynamic", 0, names=["orbit_left_0", "input"])
    assert [j.start_frame_source for j in jobs] == ["input_first_frame"] * 2
    for job in jobs:
        assert torch.equal(job.start_frame, _first(omega, "input"))
    assert jobs[0].prompt == omega.view("orbit_left_0").prompt and "orbit left" in jobs[0].prompt
    assert jobs[0].camera["w2c"] == omega.read_camera(omega.view("orbit_left_0"))["w2c"].tolist()


def test_view_seeds_are_stable_and_distinct():
    assert view_seed(42, "orbit_left_0") == view_seed(42, "orbit_left_0")
    seeds = {view_seed(s, v) for s in (0, 1, 42) for v in ("orbit_left_0", "orbit_left_1", "input")}
    assert len(seeds) == 9 and all(0 <= s < 2 ** 63 for s in seeds)
    assert view_seed(42, "orbit_left_0") == 2017724260992463535  # fixed forever: outputs stay reproducible


@pytest.mark.parametrize("count,world", [(7, 2), (2, 3), (0, 2), (5, 1)])
def test_shards_cover_every_view_exactly_once(count, world):
    items = [f"v{i}" for i in range(count)]
    parts = [shard(items, r, world) for r in range(world)]
    assert sorted(x for p in parts for x in p) == sorted(items)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert gather(parts[0]) == parts[0]  # no process group: nothing to gather
    with pytest.raises(ValueError, match="rank"):
        shard(items, world, world)


def test_bad_inputs_give_clear_errors(omega, tmp_path):
    with pytest.raises(SamplingInputError, match="unknown view name.*'nope'"):
        plan_views(omega, "static", 0, names=["nope"])
    with pytest.raises(SamplingInputError, match="start frame of view 'orbit_left_0' not found"):
        plan_views(omega, "static", 0, user_frames={"orbit_left_0": str(tmp_path / "missing.png")})
    with pytest.raises(SamplingInputError, match="unknown view"):
        plan_views(omega, "static", 0, user_frames={"nope": str(tmp_path / "x.png")})
    (tmp_path / "broken.png").write_text("not an image")
    with pytest.raises(SamplingInputError, match="cannot read start frame image"):
        plan_views(omega, "static", 0, user_frames={"orbit_left_0": str(tmp_path / "broken.png")})
    with pytest.raises(SamplingInputError, match="unknown mode"):
        plan_views(omega, "sideways", 0)


def test_sample_grid_tiles_are_labelled_with_the_view_names(omega, tmp_path, monkeypatch):
    """sample_views passes the input and view names to the grid (the drawing itself: test_video.py)."""
    from reangle.sampling import outputs
    from reangle.sampling.multiview import sample_views
    from reangle.sampling.sampler import SamplingSettings

    class Sampler:  # stands in for the diffusion model: grey videos
        scheduler = None

        def encode_prompts(self, prompts):
            return {}

        def release_text_encoder(self):
            pass

        def sample(self, requests, embeddings, settings):
            return [torch.full((omega.num_frames, 3, omega.height, omega.width), 0.5) for _ in requests]

    seen = []
    monkeypatch.setattr(outputs, "tile_videos", lambda videos, **kw: seen.append(kw["labels"]) or videos[0])
    jobs = plan_views(omega, "static", 0, ["input", "orbit_left_0"], run_dir=tmp_path)
    sample_views(Sampler(), jobs, SamplingSettings(steps=1), omega.num_frames, tmp_path, 8,
                 input_video=torch.zeros(omega.num_frames, 3, omega.height, omega.width))
    assert seen == [["source", "input", "orbit_left_0"]]
