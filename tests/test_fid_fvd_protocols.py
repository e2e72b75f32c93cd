"""FID and FVD as the reference implementations compute them: FID's resize and levels against
torch-fidelity's own extractor, the I3D probe and clip length against a stand-in with I3D's
temporal strides, and each FVD protocol against a re-implementation of its source's preprocessing
(StyleGAN-V, common_metrics_on_video_quality) and covariance."""
import math
import random

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

import eval.evaluate as engine
from eval.fid import build_fid, update_fid
from eval.frechet import small_sample_warning
from eval.fvd import FVDSettingError, build_fvd, check_fvd_settings, load_i3d
from eval.registry import EvalInputs


def _frames(n, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, h, w, generator=g) * 255).round() / 255


# ----------------------------------------------------------------------------- FID = torch-fidelity

def _random_inception_file(tmp_path, monkeypatch):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    with monkeypatch.context() as patch:  # build once without loading any weights, save the random state dict
        patch.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        patch.setattr("torch_fidelity.feature_extractor_inceptionv3.load_state_dict_from_url", lambda *a, **k: {})
        torch.manual_seed(0)
        inception = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
        for module in inception.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    path = tmp_path / "pt_inception.pth"
    torch.save(inception.state_dict(), path)
    return path


def test_fid_features_are_torch_fidelitys_on_uint8_levels(tmp_path, monkeypatch):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    path = _random_inception_file(tmp_path, monkeypatch)
    reference = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path))
    frames = _frames(2, 480, 720, seed=1) * 0.999  # off the 8-bit grid: rounding and truncation differ
    levels = (frames * 255).round().to(torch.uint8)
    fid = build_fid(path)
    update_fid(fid, frames, real=True, batch_size=2)
    with torch.no_grad():
        expected = reference(levels)[0].double()
    torch.testing.assert_close(fid.real_features_sum, expected.sum(0), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(fid.real_features_cov_sum, expected.T @ expected, rtol=1e-5, atol=1e-4)


def test_fid_of_a_local_inception_file(tmp_path, monkeypatch):
    path = _random_inception_file(tmp_path, monkeypatch)
    fid = build_fid(path)
    frames = _frames(6, 40, 48, seed=1)
    update_fid(fid, frames, real=True, batch_size=4)
    update_fid(fid, frames, real=False, batch_size=4)
    assert abs(float(fid.compute())) < 1e-3  # identical sets
    fid.reset()
    update_fid(fid, frames, real=True, batch_size=4)
    update_fid(fid, frames.flip(-1) * 0.2, real=False, batch_size=4)
    assert float(fid.compute()) > 1e-2
    pickled = tmp_path / "pickled.pth"
    torch.save({"weights": object()}, pickled)
    with pytest.raises(ValueError, match="not a plain state dict"):
        build_fid(pickled)
    with pytest.raises(FileNotFoundError, match="not found"):
        build_fid(tmp_path / "missing.pth")


# ----------------------------------------------------------------------------- I3D's temporal strides

class StridedI3DStandIn(nn.Module):
    """I3D's time axis: three stride-2 stages with 'same' padding (Conv3d_1a, MaxPool3d_4a, MaxPool3d_5a),
    then an average pool over 2 frames (and 7 x 7) with no padding, on the 224 x 224 resize; 400-d."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.head = nn.Parameter(torch.randn(400, 3, generator=g))

    def forward(self, videos, rescale: bool = False, resize: bool = False, return_features: bool = False):
        x = videos.float()
        if rescale:
            x = x / 127.5 - 1
        if resize:
            x = F.interpolate(x, size=(x.shape[2], 224, 224), mode="trilinear", align_corners=False)
        x = F.avg_pool3d(x, (1, 32, 32))  # 224 -> 7
        for _ in range(3):
            x = F.max_pool3d(F.pad(x, (0, 0, 0, 0, 0, x.shape[2] % 2), mode="replicate"), (2, 1, 1), (2, 1, 1))
        x = F.avg_pool3d(x, (2, 7, 7)).flatten(2).mean(-1)
        return x @ self.head.T


def test_fvd_probe_and_clip_length_fit_i3ds_time_axis(tmp_path):
    detector = StridedI3DStandIn()
    with pytest.raises(RuntimeError):  # the old 8-frame probe: 8 -> 4 -> 2 -> 1 < 2
        detector(torch.zeros(1, 3, 8, 32, 32, dtype=torch.uint8), True, True, True)
    path = tmp_path / "i3d.pt"
    torch.jit.save(torch.jit.script(detector), str(path))
    metric = build_fvd(load_i3d(path))
    assert metric.num_features == 400
    opts = OmegaConf.create({"protocol": "clips", "clip_length": 9})
    with pytest.raises(FVDSettingError, match="clip_length=9 is below 10"):
        check_fvd_settings(opts, real_detector=True)
    check_fvd_settings(opts, real_detector=False)  # the tiny stand-in takes any length
    check_fvd_settings(OmegaConf.create({"protocol": "clips", "clip_length": 10}), real_detector=True)
    with pytest.raises(FVDSettingError, match="unknown eval.fvd.protocol"):
        check_fvd_settings(OmegaConf.create({"protocol": "fvd2048", "clip_length": 16}), real_detector=True)


# ----------------------------------------------------------------------------- protocols

class RecordingDetector(nn.Module):
    """Records what it is called with; features = per-channel means and stds of the first/last frame."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, videos, rescale=False, resize=False, return_features=False):
        self.calls.append((videos.clone(), rescale, resize, return_features))
        x = videos.float()
        return torch.cat([x[:, :, 0].mean((2, 3)), x[:, :, -1].mean((2, 3)), x[:, :, 0].std((2, 3)),
                          x.mean((2, 3, 4))], 1)


def _stylegan_v_reference(fake_videos, real_videos, detector, length, seed):
    """StyleGAN-V: generated clips from frame 0, real ones at random.randint(0, n - length); uint8 [B, 3, T, H, W];
    detector(rescale=True, resize=True); FeatureStats mean and cov = raw_cov / N - mu mu^T; scipy sqrtm."""
    rng = random.Random(seed)

    def stats(videos, real):
        feats = []
        for v in videos:
            start = rng.randint(0, v.shape[0] - length) if real else 0
            clip = (v[start:start + length] * 255).round().to(torch.uint8).permute(1, 0, 2, 3)[None]
            feats.append(detector(clip, rescale=True, resize=True, return_features=True).double().numpy())
        feats = np.concatenate(feats)
        mean = feats.sum(0) / len(feats)
        return mean, feats.T @ feats / len(feats) - np.outer(mean, mean)

    mu_gen, sigma_gen = stats(fake_videos, False)
    mu_real, sigma_real = stats(real_videos, True)
    s, _ = scipy.linalg.sqrtm(sigma_gen @ sigma_real, disp=False)
    return float(np.real(np.square(mu_gen - mu_real).sum() + np.trace(sigma_gen + sigma_real - s * 2)))


def _i2v_common_reference(fake_videos, real_videos, detector, length):
    """common_metrics_on_video_quality (fvd/styleganv/fvd.py): [0, 1] video CTHW, first `length` frames, shorter
    side to 224 (ceil), bilinear align_corners=False, centre crop, (x - 0.5) * 2, detector(rescale=False,
    resize=False); np.cov and scipy sqrtm."""
    def preprocess(video):
        video = video[:length].permute(1, 0, 2, 3)  # CTHW
        c, t, h, w = video.shape
        scale = 224 / min(h, w)
        size = (224, math.ceil(w * scale)) if h < w else (math.ceil(h * scale), 224)
        video = F.interpolate(video, size=size, mode="bilinear", align_corners=False)
        h, w = video.shape[-2:]
        video = video[:, :, (h - 224) // 2:(h - 224) // 2 + 224, (w - 224) // 2:(w - 224) // 2 + 224]
        return (video - 0.5) * 2

    def feats(videos):
        x = torch.stack([preprocess(v) for v in videos])
        return detector(x, rescale=False, resize=False, return_features=True).double().numpy()

    f1, f2 = feats(fake_videos), feats(real_videos)
    mu1, mu2, s1, s2 = f1.mean(0), f2.mean(0), np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    s, _ = scipy.linalg.sqrtm(s1 @ s2, disp=False)
    return float(np.real(np.square(mu1 - mu2).sum() + np.trace(s1 + s2 - s * 2)))


def _clips_reference(fake_videos, real_videos, detector, length, stride):
    def feats(videos):
        clips = [(v[s:s + length] * 255).round().to(torch.uint8).permute(1, 0, 2, 3)
                 for v in videos for s in range(0, v.shape[0] - length + 1, stride)]
        return detector(torch.stack(clips), rescale=True, resize=True, return_features=True).double().numpy()

    f1, f2 = feats(fake_videos), feats(real_videos)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    s, _ = scipy.linalg.sqrtm(s1 @ s2, disp=False)
    return float(np.real(np.square(f1.mean(0) - f2.mean(0)).sum() + np.trace(s1 + s2 - s * 2)))


@pytest.mark.parametrize("protocol", ["stylegan_v", "i2v_common", "clips"])
def test_fvd_protocols_equal_their_sources(monkeypatch, protocol):
    g = torch.Generator().manual_seed(4)
    fake = {f"v{i}": (torch.rand(20, 3, 48, 72, generator=g) * 255).round() / 255 for i in range(14)}
    real = [(torch.rand(24 + i, 3, 48, 72, generator=g) * 200).round() / 255 for i in range(15)]
    detector = RecordingDetector()
    expected = {"stylegan_v": lambda: _stylegan_v_reference(list(fake.values()), real, detector, 16, seed=3),
                "i2v_common": lambda: _i2v_common_reference(list(fake.values()), real, detector, 16),
                "clips": lambda: _clips_reference(list(fake.values()), real, detector, 10, 4)}[protocol]()
    settings = OmegaConf.create({"batch_size": 5, "models": {"i3d": "tiny"},
                                 "fvd": {"protocol": protocol, "clip_length": 10 if protocol == "clips" else 16,
                                         "clip_stride": 4, "seed": 3}})
    monkeypatch.setattr(engine, "load_model", lambda *args: build_fvd(detector, protocol))
    detector.calls.clear()
    inputs = EvalInputs(videos=fake, fps=8.0, mode="static", settings=settings, reference=real)
    result = engine.evaluate(inputs, ["fvd"], device=torch.device("cpu"), cache_dir="unused", progress=False)
    assert result.aggregate["fvd"] == pytest.approx(expected, rel=1e-6, abs=1e-8)
    clips, rescale, resize, _ = detector.calls[-1]
    if protocol == "i2v_common":
        assert clips.dtype == torch.float32 and clips.shape[-3:] == (16, 224, 224) and not (rescale or resize)
        assert clips.min() >= -1 and clips.max() <= 1
    else:
        assert clips.dtype == torch.uint8 and rescale and resize


def test_fewer_samples_than_dimensions_is_warned(monkeypatch, capsys):
    g = torch.Generator().manual_seed(5)
    fake = {f"v{i}": torch.rand(16, 3, 8, 8, generator=g) for i in range(3)}
    real = [torch.rand(16, 3, 8, 8, generator=g) for _ in range(3)]
    detector = RecordingDetector()  # 12-d features, 3 samples per side
    settings = OmegaConf.create({"batch_size": 4, "models": {"i3d": "tiny"},
                                 "fvd": {"protocol": "stylegan_v", "clip_length": 16, "clip_stride": 16, "seed": 0}})
    monkeypatch.setattr(engine, "load_model", lambda *args: build_fvd(detector, "stylegan_v"))
    inputs = EvalInputs(videos=fake, fps=8.0, mode="static", settings=settings, reference=real)
    result = engine.evaluate(inputs, ["fvd"], device=torch.device("cpu"), cache_dir="unused", progress=False)
    assert "3 reference and 3 generated samples for 12-d features" in capsys.readouterr().err
    assert result.settings["warnings"] and "fvd:" in result.settings["warnings"][0]
    assert small_sample_warning("fid", 400, 500, 400) is None
    assert "399 reference" in small_sample_warning("fvd", 399, 500, 400)
