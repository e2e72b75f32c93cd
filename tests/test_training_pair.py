"""The stage II training step rebuilt from the formulas of paper.md ("Stage II") and CogVideoX's
image-to-video recipe, with the tiny model, against ``CogVideoXI2V.training_pair``.

The oracle draws its random numbers from a generator with the same seed, in the order the
step documents (video posterior, image posterior, image dropout, timestep, noise); the
schedule is checked against its closed form, the rotary embeddings come from diffusers'
image-to-video pipeline."""
import json

import pytest
import torch

from reangle.models.cogvideox import COMPONENTS, load_components
from reangle.models.cogvideox_i2v import CogVideoXI2V

B, F, C, H, W = 4, 3, 16, 8, 12  # latents of 9 frames of 64 x 96 (the tiny model's size)
DROPOUT = 0.5


@pytest.fixture(scope="module")
def spec(tiny_model_dir):
    spec = CogVideoXI2V("tiny", cache_dir=str(tiny_model_dir.parent.parent), weights_dtype="fp32", lora_rank=4,
                        lora_alpha=4, gradient_checkpointing=False, image_dropout=DROPOUT)
    spec.load_diffusion_model()
    return spec


def _batch():
    g = torch.Generator().manual_seed(123)
    return {"video_mean": torch.randn(B, F, C, H, W, generator=g),
            "video_logvar": torch.rand(B, F, C, H, W, generator=g) * 4 - 6,
            "image_mean": torch.randn(B, 1, C, H, W, generator=g),
            "image_logvar": torch.rand(B, 1, C, H, W, generator=g) * 4 - 6,
            "prompt_embeds": torch.randn(B, 226, 32, generator=g)}


def _alphas_cumprod(config):
    """DDPM "scaled_linear" betas, zero-terminal-SNR rescaled (Lin et al. 2024, Alg. 1), then
    CogVideoX's SNR shift a / (s + (1 - s) a); float64."""
    n = config["num_train_timesteps"]
    betas = torch.linspace(config["beta_start"] ** 0.5, config["beta_end"] ** 0.5, n, dtype=torch.float64) ** 2
    root = torch.cumprod(1 - betas, 0).sqrt()
    if config["rescale_betas_zero_snr"]:
        root = (root - root[-1]) * root[0] / (root[0] - root[-1])
    a = root ** 2
    s = config["snr_shift_scale"]
    return a / (s + (1 - s) * a)


def test_training_pair_matches_the_step_built_from_the_formulas(spec, tiny_model_dir):
    batch, seed = _batch(), 7
    pair = spec.training_pair(batch, torch.Generator().manual_seed(seed))

    vae_config = json.loads((tiny_model_dir / "vae" / "config.json").read_text())
    sched_config = json.loads((tiny_model_dir / "scheduler" / "scheduler_config.json").read_text())
    pipe = load_components(str(tiny_model_dir), COMPONENTS).pipeline()
    scheduler = spec.scheduler
    torch.testing.assert_close(scheduler.alphas_cumprod.double(), _alphas_cumprod(sched_config), rtol=0, atol=1e-6)

    g = torch.Generator().manual_seed(seed)
    scale = vae_config["scaling_factor"]
    # z = (mu + sigma * eps) * scaling_factor: a sample of the VAE posterior, scaled
    x0 = (batch["video_mean"] + (0.5 * batch["video_logvar"]).exp() * torch.randn(B, F, C, H, W, generator=g)) * scale
    image = (batch["image_mean"] + (0.5 * batch["image_logvar"]).exp() * torch.randn(B, 1, C, H, W, generator=g)) * scale
    keep = torch.rand(B, generator=g) >= DROPOUT                 # the image latent is dropped with p = 0.05 (here 0.5)
    assert keep.any() and not keep.all()                          # this seed exercises both
    image = torch.where(keep.view(B, 1, 1, 1, 1), image, torch.zeros_like(image))
    image = torch.cat([image, torch.zeros(B, F - 1, C, H, W)], dim=1)  # zero-padded to the latent length
    t = torch.randint(0, sched_config["num_train_timesteps"], (B,), generator=g)  # t ~ U{0, ..., T - 1}
    noise = torch.randn(B, F, C, H, W, generator=g)
    a = scheduler.alphas_cumprod[t].float().view(B, 1, 1, 1, 1)
    z_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    rope = pipe._prepare_rotary_positional_embeddings(H * 8, W * 8, F, torch.device("cpu"))
    with torch.no_grad():
        v = spec.transformer(hidden_states=torch.cat([z_t, image], dim=2), encoder_hidden_states=batch["prompt_embeds"],
                             timestep=t, image_rotary_emb=rope, return_dict=False)[0]
    x0_hat = a.sqrt() * z_t - (1 - a).sqrt() * v                 # v-prediction -> clean estimate
    weight = 1 / (1 - scheduler.alphas_cumprod[t].float())       # w_t = 1 / (1 - alphabar_t)

    assert torch.equal(pair.target, x0)
    assert torch.equal(pair.weight, weight)
    assert torch.equal(pair.prediction.detach(), x0_hat)
    assert pair.prediction.requires_grad  # the LoRA is trained through it


def test_the_step_depends_on_its_generator_only(spec):
    batch = _batch()
    one = spec.training_pair(batch, torch.Generator().manual_seed(1))
    again = spec.training_pair(batch, torch.Generator().manual_seed(1))
    other = spec.training_pair(batch, torch.Generator().manual_seed(2))
    assert torch.equal(one.prediction, again.prediction) and torch.equal(one.target, again.target)
    assert not torch.equal(one.target, other.target)
