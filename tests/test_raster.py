"""Point rasterizer and alpha compositor: agreement with a brute-force loop of PyTorch3D's rules."""
import pytest
import torch

from reangle.nets.raster import AlphaCompositor, PointsRasterizer, ndc_ranges, rasterize_points


def _pixel_ndc(i, size, other):
    """PyTorch3D's PixToNonSquareNdc for pixel ``size - 1 - i`` (flipped axes), in float32."""
    rng = torch.tensor(2.0 * size / other if size > other else 2.0, dtype=torch.float32)
    off = rng / 2
    return float(-off + (rng * (size - 1 - i) + off) / size)


def _brute_force(points, height, width, radius, k):
    """Loop over pixels and points: keep the K smallest (z, index) covering points, z >= 0."""
    b, p, _ = points.shape
    idx = torch.full((b, height, width, k), -1, dtype=torch.long)
    zbuf = torch.full((b, height, width, k), -1.0)
    dists = torch.full((b, height, width, k), -1.0)
    r2 = torch.tensor(radius, dtype=torch.float32).square()
    for n in range(b):
        for yi in range(height):
            yf = _pixel_ndc(yi, height, width)
            for xi in range(width):
                xf = _pixel_ndc(xi, width, height)
                hits = []
                for q in range(p):
                    px, py, pz = points[n, q]
                    if pz < 0:
                        continue
                    d2 = (px - xf) ** 2 + (py - yf) ** 2
                    if d2 < r2:
                        hits.append((float(pz), n * p + q, float(d2)))
                for slot, (z, i, d2) in enumerate(sorted(hits)[:k]):
                    idx[n, yi, xi, slot], zbuf[n, yi, xi, slot], dists[n, yi, xi, slot] = i, z, d2
    return idx, zbuf, dists


def _composite_loop(idx, alphas, feats):
    b, h, w, k = idx.shape
    out = torch.zeros(b, feats.shape[-1], h, w)
    for n in range(b):
        for y in range(h):
            for x in range(w):
                keep = 1.0
                for s in range(k):
                    i = idx[n, y, x, s]
                    if i < 0:
                        continue
                    a = alphas[n, y, x, s]
                    out[n, :, y, x] += keep * a * feats[i]
                    keep = keep * (1 - a)
    return out


@pytest.mark.parametrize("height,width", [(6, 6), (5, 8), (7, 4)])
def test_matches_brute_force_loop(height, width):
    torch.manual_seed(height * 10 + width)
    xr, yr = ndc_ranges(height, width)
    b, p, k, radius = 2, 40, 3, 0.35
    pts = torch.rand(b, p, 3)
    pts[..., 0] = (pts[..., 0] - 0.5) * (xr + 0.4)
    pts[..., 1] = (pts[..., 1] - 0.5) * (yr + 0.4)
    pts[..., 2] = pts[..., 2] * 2 - 0.3  # some behind the camera
    pts[0, 5, 2] = pts[0, 6, 2]  # a z tie: lower index first
    pts[0, 5, :2] = pts[0, 6, :2]
    frags = rasterize_points(pts, (height, width), radius, k, max_candidates=300)  # several chunks
    idx, zbuf, dists = _brute_force(pts, height, width, radius, k)
    assert torch.equal(frags.idx, idx)
    torch.testing.assert_close(frags.zbuf, zbuf)
    torch.testing.assert_close(frags.dists, dists)
    assert (frags.idx >= 0).sum() > b * height * width  # the test exercises several points per pixel

    feats = torch.randn(b * p, 4)
    comp = AlphaCompositor()(frags, feats, radius)
    alphas = (1 - dists / radius**2).clamp(0, 1)
    torch.testing.assert_close(comp, _composite_loop(idx, alphas, feats))


def test_ndc_orientation_x_left_y_up():
    """A point at NDC (+0.9, +0.9) lands in the top-left pixel; (-0.9, -0.9) bottom-right."""
    pts = torch.tensor([[[0.9, 0.9, 1.0], [-0.9, -0.9, 2.0]]])
    frags = PointsRasterizer(10, radius=0.05, points_per_pixel=1)(pts)
    assert frags.idx[0, 0, 0, 0] == 0 and frags.idx[0, 9, 9, 0] == 1
    assert (frags.idx >= 0).sum() == 2


def test_background_color_and_gradients():
    pts = torch.tensor([[[0.1, 0.2, 1.0]]], requires_grad=True)
    feats = torch.ones(1, 2, requires_grad=True)
    frags = rasterize_points(pts, 4, radius=0.6, points_per_pixel=2)
    img = AlphaCompositor(background_color=[-5.0, -5.0])(frags, feats, 0.6)
    covered = frags.idx[..., 0] >= 0
    assert torch.all(img[:, :, ~covered[0]] == -5.0)
    img[:, :, covered[0]].sum().backward()
    assert feats.grad.abs().sum() > 0 and pts.grad.abs().sum() > 0
