"""MEt3R score: closed forms, focal estimation, gradients, input checks, batching and chunking."""
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from reangle.consistency import (
    MEt3R,
    FeatUpFeatures,
    canonical_point_map,
    estimate_focal,
    load_met3r,
    project_to_ndc,
)
from reangle.nets.featup import load_featup

SIZE = 64
RADIUS = 0.04  # 0.01 NDC (the reference, at 256 px) would leave holes at 64 px


def _pinhole_points(depth, focal):
    """Camera-frame point map (B, H, W, 3) of depth (B, H, W) seen by a pinhole with ``focal`` (fx, fy) px."""
    b, h, w = depth.shape
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    x = (cols - w / 2) / focal[0] * depth
    y = (rows - h / 2) / focal[1] * depth
    return torch.stack([x, y, depth], dim=-1)


class StubPointModel(nn.Module):
    """Depth from the image (so pairs differ); view 2's points = view 1's moved sideways by ``shift``."""

    def __init__(self, focal=SIZE, shift=0.0):
        super().__init__()
        self.focal, self.shift = focal, shift

    def forward(self, img1, img2):
        depth = 2.0 + 0.5 * img1.mean(1) + 0.25 * img2.mean(1)
        pts1 = _pinhole_points(depth, (self.focal, self.focal))
        pts2 = pts1 + torch.tensor([self.shift, 0.0, 0.0])
        conf = torch.full(depth.shape, 2.0)
        return SimpleNamespace(pts3d_1=pts1, conf_1=conf, pts3d_2=pts2, conf_2=conf * 1.5)


class SignedFeatures(nn.Module):
    """A fixed feature field times each image's mean value (its sign flips the features)."""

    def __init__(self, channels=8):
        super().__init__()
        self.field = torch.randn(1, channels, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 100

    def forward(self, images):
        return self.field * images.mean((1, 2, 3)).view(-1, 1, 1, 1)


@pytest.fixture(scope="module")
def featup_features():
    torch.manual_seed(0)
    featup = load_featup({"dino": {"embed_dim": 32, "depth": 2, "num_heads": 2}, "key_dim": 8})
    return FeatUpFeatures(featup)


def _pairs(b, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 2, 3, SIZE, SIZE, generator=g) * 2 - 1


def test_identical_features_score_zero_and_negated_features_score_two():
    metric = MEt3R(StubPointModel(), SignedFeatures(), img_size=SIZE, radius=RADIUS)
    same = torch.full((2, 2, 3, SIZE, SIZE), 0.5)
    out = metric(same, return_maps=True)
    torch.testing.assert_close(out.score, torch.zeros(2), atol=1e-6, rtol=0)
    assert out.overlap_mask.mean() > 0.9  # identical geometry: both renders cover the same pixels
    opposite = same.clone()
    opposite[:, 1] = -0.5
    torch.testing.assert_close(metric(opposite), torch.full((2,), 2.0), atol=1e-6, rtol=0)


def test_overlap_mask_excludes_pixels_only_one_view_covers():
    metric = MEt3R(StubPointModel(shift=0.5), SignedFeatures(), img_size=SIZE, radius=RADIUS)
    out = metric(torch.full((1, 2, 3, SIZE, SIZE), 0.5), return_maps=True)
    covered = out.overlap_mask[0, 0].bool()
    assert 0.3 < covered.float().mean() < 0.95  # view 2 shifted sideways: partial overlap
    assert torch.all(out.score_map[0, 0][~covered] == 1)  # uncovered pixels render 0 features


@pytest.mark.parametrize("mode", ["median", "weiszfeld"])
def test_point_map_from_known_focal_gives_it_back(mode):
    depth = 1 + torch.rand(2, 24, 32, generator=torch.Generator().manual_seed(1)) * 3
    pts = _pinhole_points(depth, (41.5, 41.5))
    torch.testing.assert_close(estimate_focal(pts, mode), torch.full((2, 2), 41.5))
    if mode == "median":  # per-axis estimates
        torch.testing.assert_close(estimate_focal(_pinhole_points(depth, (30.0, 50.0)), mode), torch.tensor([[30.0, 50.0]] * 2))


def test_canonical_map_is_confidence_weighted():
    p1, p2 = torch.zeros(1, 2, 2, 3), torch.ones(1, 2, 2, 3)
    c1, c2 = torch.full((1, 2, 2), 1.999), torch.full((1, 2, 2), 3.999)
    torch.testing.assert_close(canonical_point_map(p1, c1, p2, c2), torch.full((1, 2, 2, 3), 0.75))


def test_projection_follows_pytorch3d_axes():
    """OpenCV +x (right) maps to NDC -x (PyTorch3D +X is left); +y (down) to NDC -y."""
    ndc = project_to_ndc(torch.tensor([[[1.0, 2.0, 4.0]]]), torch.tensor([[2.0, 3.0]]))
    torch.testing.assert_close(ndc, torch.tensor([[[-0.5, -1.5, 4.0]]]))


def test_gradients_reach_the_images(featup_features):
    metric = MEt3R(StubPointModel(shift=0.05), featup_features, img_size=SIZE, radius=RADIUS)
    images = _pairs(2).requires_grad_(True)
    score = metric(images)
    score.sum().backward()
    assert torch.isfinite(images.grad).all() and images.grad[:, 0].abs().sum() > 0 and images.grad[:, 1].abs().sum() > 0
    assert all(p.grad is None for p in featup_features.parameters())


def test_batched_chunked_and_symmetric_agree_with_single_pairs(featup_features):
    images = _pairs(3, seed=2)
    make = lambda **kw: MEt3R(StubPointModel(shift=0.05), featup_features, img_size=SIZE, radius=RADIUS, **kw)
    with torch.no_grad():
        batched = make(max_pairs_per_chunk=8)(images)
        chunked = make(max_pairs_per_chunk=2)(images)
        single = torch.cat([make()(images[i:i + 1]) for i in range(3)])
        swapped = make()(images.flip(1))
        symmetric = make(symmetric=True, max_pairs_per_chunk=2)(images)
    assert torch.all((batched >= 0) & (batched <= 2)) and batched.std() > 0
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(chunked, batched, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(symmetric, (batched + swapped) / 2, atol=1e-5, rtol=1e-5)


def test_inputs_are_resized_to_img_size():
    seen = []

    class Recorder(StubPointModel):
        def forward(self, img1, img2):
            seen.append(img1.shape[-2:])
            return super().forward(img1, img2)

    metric = MEt3R(Recorder(), SignedFeatures(), img_size=SIZE, radius=RADIUS)
    score = metric(torch.full((1, 2, 3, 48, 80), 0.5))
    assert seen == [torch.Size([SIZE, SIZE])] and score.shape == (1,)


@pytest.mark.parametrize(
    "images,match",
    [
        (torch.zeros(2, 3, SIZE, SIZE), r"shape \(B, 2, 3, H, W\)"),
        (torch.zeros(1, 3, 3, SIZE, SIZE), r"shape \(B, 2, 3, H, W\)"),
        (torch.zeros(1, 2, 1, SIZE, SIZE), r"shape \(B, 2, 3, H, W\)"),
        (torch.full((1, 2, 3, SIZE, SIZE), 255.0), r"\[-1, 1\].*max 255"),
        (torch.full((1, 2, 3, SIZE, SIZE), -1.5), r"\[-1, 1\].*min -1.5"),
        (torch.full((1, 2, 3, SIZE, SIZE), float("nan")), "NaN"),
        (torch.zeros(1, 2, 3, SIZE, SIZE, dtype=torch.uint8), "floating-point"),
        ([[0.0]], "torch.Tensor"),
    ],
)
def test_bad_input_is_a_clear_error(images, match):
    metric = MEt3R(StubPointModel(), SignedFeatures(), img_size=SIZE, radius=RADIUS)
    with pytest.raises(ValueError, match=match):
        metric(images)


def test_native_resolution_needs_patch_multiples():
    metric = MEt3R(StubPointModel(), SignedFeatures(), img_size=None)
    with pytest.raises(ValueError, match="multiple of 16"):
        metric(torch.zeros(1, 2, 3, 60, 64))


def test_reference_settings_cover_view_one_at_256_px():
    """At 256 px with radius 0.01 NDC and f = W (where MEt3R's f_ndc = 1 + f/W equals 2f/W),
    view 1's own points land on its pixel grid and cover it without holes."""
    metric = MEt3R(StubPointModel(focal=256), lambda x: torch.ones(x.shape[0], 4, 256, 256))
    out = metric(torch.zeros(1, 2, 3, 256, 256), return_maps=True)
    assert out.overlap_mask.mean() > 0.99
    torch.testing.assert_close(out.score, torch.zeros(1), atol=1e-4, rtol=0)


def test_load_met3r_with_tiny_models_scores_and_differentiates():
    torch.manual_seed(0)
    tiny_dust3r = dict(
        enc_embed_dim=32, enc_depth=2, enc_num_heads=2, dec_embed_dim=32, dec_depth=2, dec_num_heads=2,
        head_type="linear", img_size=(SIZE, SIZE),
    )
    tiny_featup = {"dino": {"embed_dim": 32, "depth": 2, "num_heads": 2}, "key_dim": 8}
    metric = load_met3r(point_source=tiny_dust3r, featup_source=tiny_featup, img_size=SIZE, radius=RADIUS)
    images = _pairs(2, seed=3).requires_grad_(True)
    out = metric(images, return_maps=True)
    assert torch.all((out.score >= 0) & (out.score <= 2)) and out.overlap_mask.sum() > 0
    out.score.sum().backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="unknown MEt3R backbone"):
        load_met3r("vggt")


@pytest.mark.parametrize("symmetric", [False, True])
def test_precomputed_features_and_encodings_give_the_same_scores(featup_features, symmetric):
    """Each image's features and DUSt3R encoder tokens computed once (banks indexed per pair) = computed per pair."""
    from reangle.nets.dust3r import load_dust3r

    torch.manual_seed(1)
    dust3r = load_dust3r(dict(enc_embed_dim=32, enc_depth=1, enc_num_heads=2, dec_embed_dim=32, dec_depth=1,
                              dec_num_heads=2, head_type="linear", img_size=(SIZE, SIZE)))
    metric = MEt3R(dust3r, featup_features, img_size=SIZE, radius=RADIUS, max_pairs_per_chunk=2, symmetric=symmetric)
    images = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7)) * 2 - 1
    index = torch.tensor([[0, 1], [2, 0], [1, 2]])
    with torch.no_grad():
        plain = metric(images[index])
        banked = metric(images[index], features=(metric.image_features(images), index),
                        encodings=(metric.image_encodings(images), index))
    torch.testing.assert_close(banked, plain, atol=1e-5, rtol=0)
    assert MEt3R(StubPointModel(), featup_features, img_size=SIZE).image_encodings(images) is None


def test_precomputed_features_give_the_same_scores(featup_features):
    """Features of each image computed once (a bank) and indexed per pair = features computed per pair."""
    metric = MEt3R(StubPointModel(shift=0.05), featup_features, img_size=SIZE, radius=RADIUS, max_pairs_per_chunk=2)
    images = torch.rand(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(6)) * 2 - 1
    index = torch.tensor([[0, 1], [0, 2], [3, 1], [2, 0], [1, 1]])
    pairs = images[index]
    with torch.no_grad():
        plain = metric(pairs, return_maps=True)
        banked = metric(pairs, return_maps=True, features=(metric.image_features(images), index))
    torch.testing.assert_close(banked.score, plain.score, atol=1e-5, rtol=0)
    torch.testing.assert_close(banked.overlap_mask, plain.overlap_mask)
    with pytest.raises(ValueError, match="features must be"):
        metric(pairs, features=(metric.image_features(images), index[:2]))


def test_tiny_sources_build_the_same_small_random_networks_every_time():
    first, second = (load_met3r(point_source="tiny", featup_source="tiny", img_size=32, radius=0.05) for _ in range(2))
    a, b = first.state_dict(), second.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert sum(v.numel() for v in a.values()) < 2_000_000
    pair = torch.rand(1, 2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert torch.isfinite(first(pair)).all()
