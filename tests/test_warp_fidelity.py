"""Warp fidelity: masked PSNR in closed form, masked LPIPS independent of hidden pixels, LPIPS loading."""
import math

import lpips
import pytest
import torch
import torchvision

from eval.warp_fidelity import load_lpips, masked_lpips, masked_psnr, warp_fidelity


@pytest.fixture(scope="module")
def tiny_lpips():
    torch.manual_seed(0)
    return load_lpips("tiny")


def _videos(seed=0, n=3, h=64, w=64):
    g = torch.Generator().manual_seed(seed)
    warped = 0.2 + 0.6 * torch.rand(n, 3, h, w, generator=g)
    mask = torch.rand(n, h, w, generator=g) > 0.3
    mask[:, :, : w // 4] = False       # a hole band, as a warp leaves them
    return warped, mask


def test_identical_videos_have_infinite_psnr_and_zero_lpips(tiny_lpips):
    warped, mask = _videos()
    assert warp_fidelity(warped, warped.clone(), mask, tiny_lpips) == {"psnr": math.inf, "lpips": 0.0}


def test_uniform_error_on_visible_pixels_gives_the_closed_form_psnr_whatever_lies_under_the_mask(tiny_lpips):
    warped, mask = _videos(seed=1)
    error = 0.1
    visible = mask.unsqueeze(1)
    hidden = torch.rand(warped.shape, generator=torch.Generator().manual_seed(2))
    generated = torch.where(visible, warped + error, hidden)
    other = torch.where(visible, generated, torch.zeros_like(warped))
    expected = 10 * math.log10(1.0 / error ** 2)        # 20 dB
    assert masked_psnr(generated, warped, mask) == pytest.approx(expected, abs=1e-4)
    assert masked_psnr(other, warped, mask) == pytest.approx(expected, abs=1e-4)
    assert masked_psnr(generated * 255, warped * 255, mask, max_value=255.0) == pytest.approx(expected, abs=1e-4)
    first, second = masked_lpips(tiny_lpips, generated, warped, mask), masked_lpips(tiny_lpips, other, warped, mask)
    assert first > 0 and first == pytest.approx(second, rel=1e-6)
    # hidden pixels count for nothing: a different error under the mask leaves both scores unchanged
    assert masked_psnr(warped + error * visible, warped, mask) == pytest.approx(expected, abs=1e-4)


def test_full_mask_lpips_equals_the_package_image_score(tiny_lpips):
    warped, _ = _videos(seed=3)
    generated = (warped + 0.05 * torch.randn(warped.shape, generator=torch.Generator().manual_seed(4))).clamp(0, 1)
    full = torch.ones(warped.shape[0], *warped.shape[2:], dtype=torch.bool)
    image_lpips = lpips.LPIPS(net="alex", pretrained=False, pnet_rand=True, verbose=False).eval()
    image_lpips.load_state_dict(tiny_lpips.state_dict())   # the package's per-image (spatially averaged) score
    reference = image_lpips(generated, warped, normalize=True).mean().item()
    # equal up to the bilinear upsampling of the coarse layers' maps
    assert masked_lpips(tiny_lpips, generated, warped, full, batch_size=2) == pytest.approx(reference, rel=1e-3)


def test_nothing_visible_is_nan_and_shapes_are_checked(tiny_lpips):
    warped, mask = _videos()
    hidden = torch.zeros_like(mask)
    assert math.isnan(masked_psnr(warped, warped * 0.5, hidden))
    assert math.isnan(masked_lpips(tiny_lpips, warped, warped * 0.5, hidden))
    with pytest.raises(ValueError, match="one size"):
        masked_psnr(warped, warped[:, :, :32], mask)
    with pytest.raises(ValueError, match="mask must be"):
        masked_psnr(warped, warped, mask[:2])


def test_local_torchvision_checkpoint_loads_into_the_lpips_backbone(tmp_path):
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), tmp_path / "alexnet.pth")
    torch.manual_seed(0)   # the package builds the same random torchvision AlexNet first
    reference = lpips.LPIPS(net="alex", pnet_rand=True, spatial=True, verbose=False).eval()
    model = load_lpips(tmp_path / "alexnet.pth")
    warped, _ = _videos(seed=5, n=2)
    generated = warped.flip(-1)
    torch.testing.assert_close(model(generated, warped, normalize=True), reference(generated, warped, normalize=True))
    assert not torch.equal(load_lpips("tiny").net.slice1[0].weight, model.net.slice1[0].weight)


def test_bad_lpips_sources_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="torchvision"):
        load_lpips(tmp_path / "missing.pth")
    torch.save({"classifier.1.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not a torchvision alex checkpoint"):
        load_lpips(tmp_path / "other.pth")
    with pytest.raises(ValueError, match="unknown LPIPS network"):
        load_lpips("tiny", net="squeeze")
