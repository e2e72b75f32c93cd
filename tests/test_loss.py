"""The masked v-prediction loss: plain loss when all visible, blind to masked-out positions."""
import pytest
import torch
from diffusers import CogVideoXDDIMScheduler

from reangle.models.cogvideox import SCHEDULER_CONFIG
from reangle.training.loss import masked_loss, x0_from_velocity

SHAPE = (2, 3, 4, 6, 8)  # [B, F, C, h, w]


def masked_v_loss(velocity, noisy, x0, a, mask=None, normalize="all"):
    """The CogVideoX composition: x0 estimate from v, weight 1 / (1 - alphabar)."""
    return masked_loss(x0_from_velocity(velocity, noisy, a), x0, 1 / (1 - a), mask, normalize)


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(0)
    sched = CogVideoXDDIMScheduler(**SCHEDULER_CONFIG)
    t = torch.tensor([10, 700])
    x0, noise = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    noisy = sched.add_noise(x0, noise, t)
    velocity = torch.randn(SHAPE, generator=g, requires_grad=True)
    return sched, t, x0, noisy, velocity


def test_x0_estimate_matches_the_scheduler(inputs):
    sched, t, _, noisy, velocity = inputs
    expected = sched.get_velocity(velocity.detach(), noisy, t)  # diffusers' training-script idiom
    assert torch.allclose(x0_from_velocity(velocity.detach(), noisy, sched.alphas_cumprod[t]), expected, atol=1e-5)


def test_true_velocity_gives_zero_loss(inputs):
    sched, t, x0, noisy, _ = inputs
    a = sched.alphas_cumprod[t].reshape(-1, 1, 1, 1, 1)
    noise = (noisy - a.sqrt() * x0) / (1 - a).sqrt()
    v = a.sqrt() * noise - (1 - a).sqrt() * x0
    assert masked_v_loss(v, noisy, x0, sched.alphas_cumprod[t]).abs().max() < 1e-4


@pytest.mark.parametrize("normalize", ["all", "visible"])
def test_all_ones_mask_equals_the_plain_loss(inputs, normalize):
    sched, t, x0, noisy, velocity = inputs
    ones = torch.ones(SHAPE[0], SHAPE[1], *SHAPE[3:], dtype=torch.bool)
    masked = masked_v_loss(velocity, noisy, x0, sched.alphas_cumprod[t], ones, normalize)
    plain = masked_v_loss(velocity, noisy, x0, sched.alphas_cumprod[t], None)
    assert torch.allclose(masked, plain)
    # and it is the diffusers recipe: mean((x0_hat - x0)^2) / (1 - alphabar)
    x0_hat = sched.get_velocity(velocity, noisy, t)
    recipe = ((x0_hat - x0) ** 2).flatten(1).mean(1) / (1 - sched.alphas_cumprod[t])
    assert torch.allclose(plain, recipe.float(), rtol=1e-5)


@pytest.mark.parametrize("normalize", ["all", "visible"])
def test_target_changes_under_the_mask_change_neither_loss_nor_gradient(inputs, normalize):
    sched, t, x0, noisy, velocity = inputs
    g = torch.Generator().manual_seed(1)
    mask = torch.rand(SHAPE[0], SHAPE[1], *SHAPE[3:], generator=g) > 0.4
    changed = x0 + 5 * torch.randn(SHAPE, generator=g) * (~mask).unsqueeze(2)
    losses, grads = [], []
    for target in (x0, changed):
        v = velocity.detach().clone().requires_grad_(True)
        loss = masked_v_loss(v, noisy, target, sched.alphas_cumprod[t], mask, normalize).sum()
        loss.backward()
        losses.append(loss.detach())
        grads.append(v.grad)
    assert torch.equal(losses[0], losses[1]) and torch.equal(grads[0], grads[1])
    assert (grads[0].abs().sum(dim=2)[~mask] == 0).all() and (grads[0].abs().sum(dim=2)[mask] > 0).all()
    # an unmasked loss does see the change
    plain = masked_v_loss(velocity, noisy, changed, sched.alphas_cumprod[t])
    assert not torch.allclose(plain, masked_v_loss(velocity, noisy, x0, sched.alphas_cumprod[t]))


def test_visible_normalisation_divides_by_the_visible_count(inputs):
    sched, t, x0, noisy, velocity = inputs
    mask = torch.zeros(SHAPE[0], SHAPE[1], *SHAPE[3:], dtype=torch.bool)
    mask[:, :, :3] = True  # half the rows visible
    all_ = masked_v_loss(velocity, noisy, x0, sched.alphas_cumprod[t], mask, "all")
    visible = masked_v_loss(velocity, noisy, x0, sched.alphas_cumprod[t], mask, "visible")
    assert torch.allclose(visible, 2 * all_)


def test_unknown_normalisation_and_misfit_masks_are_rejected(inputs):
    sched, t, x0, noisy, velocity = inputs
    with pytest.raises(ValueError, match="normalisation"):
        masked_v_loss(velocity, noisy, x0, sched.alphas_cumprod[t], None, "mean")
    with pytest.raises(ValueError, match="does not fit"):
        masked_v_loss(velocity, noisy, x0, sched.alphas_cumprod[t], torch.ones(2, 3, 6, 7, dtype=torch.bool))
