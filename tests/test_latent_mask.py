"""Latent masks: nearest /8 in space, first frame kept then AND over groups of 4 in time."""
import pytest
import torch

from reangle.data.latent_mask import latent_mask


def test_49_frames_of_480x720_give_13_latent_frames_of_60x90():
    assert latent_mask(torch.ones(49, 480, 720, dtype=torch.bool)).shape == (13, 60, 90)


def test_first_frame_alone_then_and_over_groups_of_four():
    mask = torch.ones(9, 8, 8, dtype=torch.bool)
    mask[0] = False          # latent frame 0 is frame 0 alone
    mask[3] = False          # one hole in frames 1..4 hides latent frame 1
    out = latent_mask(mask)
    assert out.shape == (3, 1, 1)
    assert out[:, 0, 0].tolist() == [False, False, True]


def test_a_hole_in_one_frame_hides_only_its_own_group():
    mask = torch.ones(9, 16, 16, dtype=torch.bool)
    mask[8, 0, 8] = False    # frame 8 (group 2), the pixel that latent (0, 1) samples
    out = latent_mask(mask)
    expected = torch.ones(3, 2, 2, dtype=torch.bool)
    expected[2, 0, 1] = False
    assert torch.equal(out, expected)


def test_spatial_downsampling_is_nearest_not_any_or_all():
    mask = torch.zeros(1, 16, 16, dtype=torch.bool)
    mask[0, 0, 0] = True     # nearest samples the top-left pixel of each 8x8 cell
    mask[0, 9:16, 9:16] = True  # the rest of a cell, without its sampled pixel
    out = latent_mask(mask)
    assert out[0].tolist() == [[True, False], [False, False]]


def test_batched_masks_keep_their_own_values():
    a = torch.ones(5, 8, 8, dtype=torch.bool)
    b = a.clone()
    b[2] = False
    out = latent_mask(torch.stack([a, b]))
    assert out.shape == (2, 2, 1, 1)
    assert out[0].all() and out[1, 0].all() and not out[1, 1].any()


def test_sizes_off_the_vae_grid_are_rejected():
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        latent_mask(torch.ones(8, 16, 16, dtype=torch.bool))
