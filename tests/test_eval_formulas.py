"""The evaluation formulas against closed forms and independent oracles (scipy, torchmetrics)."""
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from eval import dynamic_degree as dyn
from eval.feature_consistency import frame_consistency, video_consistency
from eval.frechet import feature_statistics, frechet_distance, frechet_distance_of_features
from eval.fvd import build_fvd, load_i3d, video_clips
from eval.met3r_pairs import FramePair, met3r_pairs
from eval.motion_smoothness import interpolate_midpoints, midpoint_pairs, smoothness_score
from eval.registry import Item, weighted_scores
from eval.temporal_flickering import temporal_flickering


def _alternating(levels, n, h=8, w=12):
    """A video whose frame t is the uniform grey levels[t % 2] / 255."""
    return torch.stack([torch.full((3, h, w), levels[t % 2] / 255.0) for t in range(n)])


# --- subject / background consistency -------------------------------------------------------

def test_constant_video_is_fully_consistent():
    score, weight = video_consistency(torch.randn(1, 7).repeat(5, 1))
    assert score == pytest.approx(1.0) and weight == 4


def test_alternating_features_by_hand():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.6, 0.8])  # cos = 0.6
    feats = torch.stack([a, b, a, b]) * torch.tensor([[2.0], [3.0], [0.5], [1.0]])  # scale is irrelevant
    # s1 = (0.6 + 0.6) / 2, s2 = (0.6 + 1) / 2, s3 = (0.6 + 0.6) / 2
    torch.testing.assert_close(frame_consistency(feats), torch.tensor([0.6, 0.8, 0.6], dtype=torch.float64))
    opposite = torch.stack([a, -a, a, -a])  # negative cosines count as 0
    assert video_consistency(opposite)[0] == pytest.approx((0 + 0.5 + 0) / 3)


def test_consistency_needs_two_frames():
    with pytest.raises(ValueError, match="N >= 2"):
        frame_consistency(torch.randn(1, 4))


# --- temporal flickering --------------------------------------------------------------------

def test_flickering_constant_and_alternating():
    assert temporal_flickering(torch.rand(3, 5, 7).expand(6, 3, 5, 7)) == pytest.approx(1.0)
    assert temporal_flickering(_alternating((100, 130), 5)) == pytest.approx((255 - 30) / 255)
    # one change among three steps: mean |diff| = 30 / 3
    video = _alternating((100, 100), 4)
    video[3] = 130 / 255
    assert temporal_flickering(video) == pytest.approx((255 - 10) / 255)


# --- motion smoothness ----------------------------------------------------------------------

def _blend(img0, img1, embt):
    return img0 * (1 - embt) + img1 * embt


@pytest.mark.parametrize("n", [5, 6])
def test_smoothness_of_an_alternating_video_by_hand(n):
    video = _alternating((100, 130), n, h=10, w=13)
    img0, img1 = midpoint_pairs(video)
    assert img0.shape[0] == (n + 1) // 2 - 1
    mids = interpolate_midpoints(_blend, img0, img1)
    assert mids.shape == img0.shape
    # kept frames are all level 100, so every midpoint is 100 while the originals are 130
    assert smoothness_score(video, mids) == pytest.approx((255 - 30) / 255)
    assert smoothness_score(video, torch.zeros_like(mids)) == pytest.approx((255 - 130) / 255)


def test_smooth_motion_scores_one():
    ramp = torch.linspace(0, 0.8, 7).view(-1, 1, 1, 1).expand(7, 3, 16, 16).contiguous()
    ramp = ramp.mul(255).round() / 255
    img0, img1 = midpoint_pairs(ramp)
    assert smoothness_score(ramp, interpolate_midpoints(_blend, img0, img1)) == pytest.approx(1.0)


def test_interpolator_gets_the_midpoint_time():
    seen = {}

    def spy(img0, img1, embt):
        seen["embt"] = embt
        return img0

    interpolate_midpoints(spy, torch.rand(2, 3, 20, 33), torch.rand(2, 3, 20, 33))
    assert seen["embt"].shape == (2, 1, 1, 1) and torch.all(seen["embt"] == 0.5)


# --- dynamic degree -------------------------------------------------------------------------

def test_subsampling_to_eight_fps():
    assert dyn.subsample_indices(10, 8) == list(range(10))
    assert dyn.subsample_indices(10, 24) == [0, 3, 6, 9]
    assert dyn.subsample_indices(9, 30) == [0, 4, 8]  # round(30 / 8) = 4
    assert dyn.subsample_indices(5, 2) == list(range(5))  # never slower than every frame


def test_top_five_percent_flow_magnitude():
    flow = torch.zeros(2, 2, 20, 20)
    flow[:, 0] = 1.0  # magnitude 1 everywhere; 400 pixels -> top 20
    flow[0, 0, 0, :20], flow[0, 1, 0, :20] = 3.0, 4.0  # 20 pixels of magnitude 5
    flow[1, 0, 0, :10], flow[1, 1, 0, :10] = 3.0, 4.0  # 10 pixels of 5, then pixels of 1
    torch.testing.assert_close(dyn.pair_motion(flow), torch.tensor([5.0, 3.0]))


def test_dynamic_threshold_and_count():
    assert dyn.motion_threshold(256, 512) == 6.0 and dyn.motion_threshold(480, 720) == 11.25
    # 16 frames: at least round(4 * 16 / 16) = 4 pairs above 6 px
    three = torch.tensor([7.0] * 3 + [6.0] * 12)
    assert not dyn.is_dynamic(three, 16, 256, 256)
    assert dyn.is_dynamic(torch.tensor([7.0] * 4 + [0.0] * 11), 16, 256, 256)
    assert dyn.is_dynamic(torch.tensor([0.0]), 2, 64, 64)  # round(0.5) = 0 pairs needed
    assert not dyn.is_dynamic(torch.zeros(0), 1, 64, 64)


# --- Fréchet distance, FID, FVD -------------------------------------------------------------

def test_frechet_distance_closed_form_for_gaussians():
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]).double(), torch.tensor([1.0, 1.0, 0.0]).double()
    a, b = torch.tensor([1.0, 4.0, 9.0]).double(), torch.tensor([4.0, 1.0, 1.0]).double()
    expected = 1 + 0 + 4 + ((a + b - 2 * (a * b).sqrt()).sum()).item()
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    # a common rotation keeps the distance (rotate both means and covariances)
    got = frechet_distance(q @ mu1, q @ torch.diag(a) @ q.T, q @ mu2, q @ torch.diag(b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu1, torch.diag(a), mu1, torch.diag(a)) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_matches_scipy_sqrtm():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(50, 6, generator=g, dtype=torch.float64), torch.randn(40, 6, generator=g, dtype=torch.float64) * 2 + 1
    m1, s1 = np.mean(x.numpy(), 0), np.cov(x.numpy(), rowvar=False)
    m2, s2 = np.mean(y.numpy(), 0), np.cov(y.numpy(), rowvar=False)
    expected = ((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance_of_features(x, y) == pytest.approx(expected, rel=1e-8)


class FlattenFeatures(nn.Module):
    """Images [B, 3, 2, 2] are their own 12-d features."""

    num_features = 12

    def forward(self, images):
        return images.flatten(1)


def test_frechet_distance_equals_torchmetrics_fid_on_the_same_features():
    g = torch.Generator().manual_seed(2)
    real, fake = torch.rand(30, 3, 2, 2, generator=g), torch.rand(25, 3, 2, 2, generator=g) ** 2
    fid = FrechetInceptionDistance(feature=FlattenFeatures(), normalize=True)
    fid.update(real, real=True)
    fid.update(fake, real=False)
    assert frechet_distance_of_features(fake.flatten(1), real.flatten(1)) == pytest.approx(float(fid.compute()), rel=1e-6)


class ClipStandIn(nn.Module):
    """An I3D stand-in: features = per-channel, per-frame means of the rescaled clip; it refuses
    anything but uint8 input and the StyleGAN-V keyword arguments."""

    def forward(self, videos: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        assert videos.dtype == torch.uint8 and rescale and resize and return_features
        x = videos.float() / 127.5 - 1
        return x.mean(dim=(3, 4)).flatten(1)[:, :6]


def test_fvd_with_a_torchscript_stand_in(tmp_path):
    path = tmp_path / "i3d.pt"
    torch.jit.save(torch.jit.script(ClipStandIn()), str(path))
    metric = build_fvd(load_i3d(path))
    g = torch.Generator().manual_seed(3)
    fake_videos = [torch.rand(10, 3, 8, 8, generator=g) for _ in range(3)]
    real_videos = [torch.rand(10, 3, 8, 8, generator=g) * 0.5 for _ in range(2)]
    fake = torch.cat([video_clips(v, 4, 3) for v in fake_videos])
    real = torch.cat([video_clips(v, 4, 3) for v in real_videos])
    assert fake.shape == (9, 3, 4, 8, 8) and fake.dtype == torch.uint8  # starts 0, 3, 6
    metric.update(fake, real=False)
    metric.update(real, real=True)
    features = ClipStandIn()
    expected = frechet_distance_of_features(features(fake, True, True, True), features(real, True, True, True))
    assert float(metric.compute()) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="clip_length"):
        video_clips(torch.rand(3, 3, 8, 8), 4, 1)


def test_frechet_needs_two_samples_per_set():
    with pytest.raises(ValueError, match="at least 2"):
        feature_statistics(torch.randn(1, 3))


# --- MEt3R pairing and aggregation ----------------------------------------------------------

def test_met3r_pairs():
    views = met3r_pairs("views", ["a", "b", "c"], 5, frame_stride=2)
    assert len(views) == 3 * 3 and FramePair("a", 2, "c", 2) in views
    assert all(p.frame_a == p.frame_b and p.view_a != p.view_b for p in views)
    frames = met3r_pairs("frames", ["a", "b"], 5, frame_stride=2)
    assert frames == [FramePair("a", 0, "a", 2), FramePair("a", 2, "a", 4),
                      FramePair("b", 0, "b", 2), FramePair("b", 2, "b", 4)]
    assert len(met3r_pairs("both", ["a", "b"], 5)) == 5 + 8
    with pytest.raises(ValueError, match="pairing"):
        met3r_pairs("all", ["a"], 5)


def test_weighted_aggregation():
    items = [Item(("a",), 4.0, None), Item(("b",), 2.0, None), Item(("a", "b"), 1.0, None)]
    aggregate, per_view = weighted_scores(items, [1.0, 0.0, 0.5])
    assert aggregate == pytest.approx(4.5 / 7)
    assert per_view == pytest.approx({"a": 4.5 / 5, "b": 0.5 / 3})
    assert not math.isnan(aggregate)


# --- registry wiring of SED / TSED -----------------------------------------------------------

def test_sed_through_the_registry_equals_sed_tsed_video():
    from omegaconf import OmegaConf

    from eval.evaluate import evaluate
    from eval.registry import EvalInputs
    from eval.sed import MAX_ERROR, MIN_MATCHES, sed_tsed_video

    g = torch.Generator().manual_seed(4)
    texture = torch.nn.functional.interpolate(torch.rand(1, 3, 12, 16, generator=g), size=(96, 128), mode="bicubic")
    names = ["a", "b", "c"]
    videos, cameras = {}, {}
    for k, name in enumerate(names):  # the same texture shifted: many SIFT matches, cameras apart on x
        frames = torch.roll(texture, shifts=3 * k, dims=-1).clamp(0, 1).repeat(3, 1, 1, 1)
        w2c = torch.eye(4, dtype=torch.float64).repeat(3, 1, 1)
        w2c[:, 0, 3] = -0.1 * k ** 1.5
        videos[name] = frames
        cameras[name] = {"K": torch.tensor([[100.0, 0, 64], [0, 100.0, 48], [0, 0, 1]], dtype=torch.float64), "w2c": w2c}
    settings = OmegaConf.create({"batch_size": 4, "sed": {"frame_stride": 2}})
    inputs = EvalInputs(videos=videos, fps=8, mode="static", settings=settings, cameras=cameras)
    result = evaluate(inputs, ["sed", "tsed"], device=torch.device("cpu"), cache_dir="unused", progress=False)
    oracle = sed_tsed_video(torch.stack(list(videos.values())), cameras["a"]["K"],
                            torch.stack([cameras[n]["w2c"] for n in names]), pairs=[(0, 1), (1, 2)], frames=[0, 2])
    enough = oracle.num_matches >= MIN_MATCHES
    assert enough.any()
    assert result.aggregate["sed"] == pytest.approx(oracle.medians[enough].mean().item())
    assert result.aggregate["tsed"] == pytest.approx(oracle.tsed)
    assert set(result.videos["b"]) == {"sed", "tsed"}  # b is in both nearest pairs
    assert MAX_ERROR == 1.25


def test_dynamic_degree_through_the_registry_with_given_flows(monkeypatch):
    """A stand-in flow model (uniform flow of 100 x the brightness change): 24 fps videos are
    subsampled to every 3rd frame; the static video is not dynamic, the brightening one is."""
    from omegaconf import OmegaConf

    import eval.evaluate as engine
    from eval.registry import EvalInputs

    pairs_seen = []

    class BrightnessFlow(nn.Module):
        def forward(self, a, b, padded=False):
            pairs_seen.append(a.shape[0])
            shift = 100 * (b.mean((1, 2, 3)) - a.mean((1, 2, 3)))
            return shift.view(-1, 1, 1, 1).expand(-1, 2, *a.shape[-2:]) / math.sqrt(2)

    monkeypatch.setattr(engine, "load_model", lambda *args: BrightnessFlow())
    static = torch.full((12, 3, 32, 32), 0.5)
    moving = torch.linspace(0, 0.9, 12).view(-1, 1, 1, 1).expand(12, 3, 32, 32).contiguous()
    settings = OmegaConf.create({"batch_size": 3, "models": {"flow": "tiny"}})
    inputs = EvalInputs(videos={"static": static, "moving": moving}, fps=24, mode="static", settings=settings)
    result = engine.evaluate(inputs, ["dynamic_degree"], device=torch.device("cpu"), cache_dir="unused", progress=False)
    assert sum(pairs_seen) == 2 * 3  # frames 0, 3, 6, 9 of each video: 3 pairs each
    # moving: 100 * 0.9 * 3 / 11 = 24.5 px per pair > 6 * 32 / 256 = 0.75 px, in all 3 >= round(4 * 4 / 16) pairs
    assert result.videos == {"static": {"dynamic_degree": 0.0}, "moving": {"dynamic_degree": 1.0}}
    assert result.aggregate["dynamic_degree"] == 0.5


def test_batches_that_cross_videos_give_the_per_video_formula(monkeypatch):
    """Frames of all videos go through the network in batches of 4 (crossing video boundaries);
    each view's score is still its own frames' consistency, the dataset score weights by N - 1."""
    from omegaconf import OmegaConf

    import eval.evaluate as engine
    from eval.registry import EvalInputs

    class PooledColour(nn.Module):
        def forward(self, frames):
            return frames.mean((2, 3)) - 0.5

    monkeypatch.setattr(engine, "load_model", lambda *args: PooledColour())
    g = torch.Generator().manual_seed(5)
    videos = {"a": torch.rand(5, 3, 8, 8, generator=g), "b": torch.rand(7, 3, 8, 8, generator=g)}
    settings = OmegaConf.create({"batch_size": 4, "models": {"subject": "tiny"}})
    inputs = EvalInputs(videos=videos, fps=8, mode="static", settings=settings)
    result = engine.evaluate(inputs, ["subject_consistency"], device=torch.device("cpu"), cache_dir="unused",
                             progress=False)
    expected = {k: video_consistency(PooledColour()(v))[0] for k, v in videos.items()}
    assert {k: s["subject_consistency"] for k, s in result.videos.items()} == pytest.approx(expected)
    assert result.aggregate["subject_consistency"] == pytest.approx((4 * expected["a"] + 6 * expected["b"]) / 10)
