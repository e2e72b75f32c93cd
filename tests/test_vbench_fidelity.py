"""Per-video VBench scores against VBench's own definitions (vbench 0.1.5: ``utils.load_video`` returns
float32 0-255 frames; ``dino_transform`` / ``clip_transform`` / imaging quality's ``'longer'`` transform
resize those floats; dynamic degree pads with RAFT's ``InputPadder`` and ranks the padded flow),
re-implemented here as VBench writes its loops, at our videos' size (480 x 720, 49 frames) and at a size
that is not a multiple of 8. Goal: <= 1e-5 per video (raw MUSIQ <= 1e-3 on its 0-100 scale)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn
from torchvision import transforms as T

import eval.evaluate as engine
from eval.registry import EvalInputs
from reangle.models import vbench as vb

TOL = 1e-5
SIZES = [(49, 480, 720), (13, 180, 300)]


def _video(n, h, w, seed):
    """A smooth moving pattern plus noise, on the 8-bit grid as decoded from a video: [n, 3, h, w] in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n).view(n, 1, 1, 1).float()
    y = torch.linspace(0, 1, h).view(1, 1, h, 1)
    x = torch.linspace(0, 1, w).view(1, 1, 1, w)
    phase = torch.rand(1, 3, 1, 1, generator=g) * 6
    base = 0.5 + 0.35 * torch.sin(9 * x + 5 * y + phase + 0.15 * t)
    return ((base + 0.1 * torch.rand(n, 3, h, w, generator=g)).clamp(0, 1) * 255).round() / 255


def _load_video(frames):
    """What ``vbench.utils.load_video`` returns for a decoded video: float32 0-255 [T, 3, H, W]."""
    return (frames * 255).round().float()


def _ours(frames, metric, models, **settings):
    inputs = EvalInputs(videos={"v": frames}, fps=8.0, mode="static",
                        settings=OmegaConf.create({"batch_size": 16, "models": models, **settings}))
    result = engine.evaluate(inputs, [metric], device=torch.device("cpu"), cache_dir="unused", progress=False)
    return result.videos["v"][metric]


def _vbench_consistency(features):
    """VBench's loop: L2-normalised features, per frame max(0, cos) to the previous and the first, summed in Python."""
    features = F.normalize(features, dim=-1, p=2)
    total = 0.0
    for i in range(1, len(features)):
        previous = max(0.0, F.cosine_similarity(features[i - 1:i], features[i:i + 1]).item())
        first = max(0.0, F.cosine_similarity(features[:1], features[i:i + 1]).item())
        total += (previous + first) / 2
    return total / (len(features) - 1)


@pytest.mark.parametrize("n,h,w", SIZES)
def test_subject_consistency_equals_vbench(n, h, w):
    frames = _video(n, h, w, seed=1)
    model = vb.load_subject_model("tiny")
    dino_transform = T.Compose([T.Resize(size=224, antialias=False), T.Lambda(lambda x: x.float().div(255.0)),
                                T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    images = dino_transform(_load_video(frames))
    with torch.no_grad():
        features = torch.cat([model.dino(images[i:i + 1]) for i in range(len(images))])  # one frame at a time
    with torch.no_grad():
        torch.testing.assert_close(model(frames), features, rtol=0, atol=TOL)
    expected = _vbench_consistency(features)
    assert abs(_ours(frames, "subject_consistency", {"subject": "tiny"}) - expected) <= TOL


def _clip_transform():
    return T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC, antialias=False), T.CenterCrop(224),
                      T.Lambda(lambda x: x.float().div(255.0)), T.Normalize(vb.CLIP_MEAN, vb.CLIP_STD)])


@pytest.mark.parametrize("n,h,w", SIZES)
def test_background_consistency_equals_vbench(n, h, w):
    frames = _video(n, h, w, seed=2)
    model = vb.load_background_model("tiny")
    with torch.no_grad():  # on the CPU clip.load runs the model in float32
        features = model.visual(_clip_transform()(_load_video(frames)).float())
        torch.testing.assert_close(model(frames), features, rtol=0, atol=TOL)
    expected = _vbench_consistency(features)
    assert abs(_ours(frames, "background_consistency", {"background": "tiny"}) - expected) <= TOL


@pytest.mark.parametrize("n,h,w", SIZES)
def test_aesthetic_quality_equals_vbench(n, h, w):
    frames = _video(n, h, w, seed=3)
    model = vb.load_aesthetic_model("tiny", "tiny")
    videos = _load_video(frames)
    scores, features = [], []
    with torch.no_grad():
        for i in range(0, len(videos), 32):  # VBench's batch size
            feats = model.clip.visual(_clip_transform()(videos[i:i + 32])).to(torch.float32)
            features.append(F.normalize(feats, dim=-1, p=2))
            scores.append(model.head(features[-1]).squeeze(dim=-1))
        torch.testing.assert_close(F.normalize(model.clip(frames), dim=-1), torch.cat(features), rtol=0, atol=1e-6)
    expected = torch.mean(torch.cat(scores) / 10, dim=0, keepdim=True).item()
    ours = _ours(frames, "aesthetic_quality", {"aesthetic_clip": "tiny", "aesthetic_head": "tiny"})
    assert abs(ours - expected) <= TOL


def _imaging_transform(images):
    """VBench's imaging-quality ``'longer'`` preprocessing of float32 0-255 frames."""
    _, _, h, w = images.size()
    if max(h, w) > 512:
        scale = 512. / max(h, w)
        images = T.Resize(size=(int(scale * h), int(scale * w)), antialias=False)(images)
    return images / 255.


@pytest.mark.parametrize("n,h,w", [(49, 480, 720), (5, 180, 300)])
def test_imaging_quality_equals_vbench(n, h, w):
    frames = _video(n, h, w, seed=4)
    model = vb.load_imaging_model("tiny")
    images = _imaging_transform(_load_video(frames))
    assert images.shape[-2:] == ((341, 512) if h == 480 else (h, w))
    with torch.no_grad():
        per_frame = torch.tensor([float(model.musiq(images[i:i + 1])) for i in range(len(images))])
        torch.testing.assert_close(100 * model(frames), per_frame, rtol=0, atol=1e-4)
    raw = sum(per_frame.tolist()) / len(images)
    ours = _ours(frames, "imaging_quality", {"imaging": "tiny"})
    assert abs(100 * ours - raw) <= 1e-3
    assert abs(ours - raw / 100) <= TOL


class StandInRAFT(nn.Module):
    """A cheap deterministic flow network with RAFT's interface: a fixed random 5x5 conv of both images
    and their difference, plus a position-dependent term (so the padded border matters) -> [N, 2, H, W]."""

    def __init__(self, scale):
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.weight = nn.Parameter(torch.randn(2, 9, 5, 5, generator=g) * 0.2)
        self.scale = scale

    def forward(self, image1, image2, num_flow_updates=20):
        x = torch.cat((image1, image2, image2 - image1), 1)
        h, w = x.shape[-2:]
        ramp = torch.linspace(-1, 1, w).view(1, 1, 1, w) * torch.linspace(0, 2, h).view(1, 1, h, 1)
        return [self.scale * (F.conv2d(x, self.weight, padding=2) + ramp)]


def _vbench_dynamic(raft, video):
    """VBench's ``DynamicDegree.infer`` on float32 0-255 frames (already at 8 fps): per pair the mean of
    the top int(0.05 H W) flow magnitudes of the padded flow; moving when round(4 n / 16) pairs exceed
    6 min(H, W) / 256 (the unpadded frame's)."""
    frames = [f[None] for f in _load_video(video)]
    thres, count_num = 6.0 * (min(frames[0].shape[-2:]) / 256.0), round(4 * (len(frames) / 16.0))
    scores = []
    for image1, image2 in zip(frames[:-1], frames[1:]):
        ht, wd = image1.shape[-2:]
        pad_ht, pad_wd = (((ht // 8) + 1) * 8 - ht) % 8, (((wd // 8) + 1) * 8 - wd) % 8
        pad = [pad_wd // 2, pad_wd - pad_wd // 2, pad_ht // 2, pad_ht - pad_ht // 2]
        image1, image2 = (F.pad(x, pad, mode="replicate") for x in (image1, image2))
        flow = raft(2 * (image1 / 255.0) - 1.0, 2 * (image2 / 255.0) - 1.0)[-1]
        flo = flow[0].permute(1, 2, 0).numpy()
        rad = np.sqrt(np.square(flo[:, :, 0]) + np.square(flo[:, :, 1]))
        cut_index = int(rad.shape[0] * rad.shape[1] * 0.05)
        scores.append(np.mean(abs(np.sort(-rad.flatten()))[:cut_index]).item())
    moving = sum(s > thres for s in scores) >= count_num
    return scores, thres, moving


@pytest.mark.parametrize("n,h,w,scale", [(49, 480, 720, 4.0), (13, 180, 300, 1.0), (13, 180, 300, 0.35)])
def test_dynamic_degree_equals_vbench(monkeypatch, n, h, w, scale):
    frames = _video(n, h, w, seed=5)
    flow_model = vb.OpticalFlow(StandInRAFT(scale)).eval()
    with torch.no_grad():
        scores, thres, moving = _vbench_dynamic(flow_model.raft, frames)
    monkeypatch.setattr(engine, "load_model", lambda *args: flow_model)
    assert _ours(frames, "dynamic_degree", {"flow": "tiny"}) == float(moving)
    from eval import dynamic_degree as dyn
    with torch.no_grad():
        ours = dyn.pair_motion(flow_model(frames[:-1], frames[1:], padded=True))
    np.testing.assert_allclose(ours.numpy(), scores, rtol=0, atol=TOL * max(1.0, max(scores)))
    assert dyn.motion_threshold(h, w) == thres
