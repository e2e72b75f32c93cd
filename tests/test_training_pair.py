"""The stage II training step rebuilt from the formulas of paper.md ("Stage II") and CogVideoX's
image-to-video recipe, with the tiny model, against ``CogVideoXI2V.training_pair``.

The oracle draws its random numbers from a generator with the same seed, in the order the
step documents (video posterior; the image latent: per step, sigma, pixel noise and the
posterior of diffusers' VAE encoding, or the cached posterior; image dropout; timestep;
noise); the schedule is checked against its closed form, the rotary embeddings come from
diffusers' image-to-video pipeline."""
import json

import pytest
import torch

from reangle.models.cogvideox import COMPONENTS, load_components
from reangle.models.cogvideox_i2v import CogVideoXI2V

B, F, C, H, W = 4, 3, 16, 8, 12  # latents of 9 frames of 64 x 96 (the tiny model's size)
DROPOUT = 0.5


@pytest.fixture(scope="module", params=["per_step", "cached"])
def spec(request, tiny_model_dir):
    spec = CogVideoXI2V("tiny", cache_dir=str(tiny_model_dir.parent.parent), weights_dtype="fp32", lora_rank=4,
                        lora_alpha=4, gradient_checkpointing=False, image_dropout=DROPOUT,
                        image_condition=request.param)
    spec.load_diffusion_model()
    spec.load_training_encoders(torch.device("cpu"))
    return spec


def _batch():
    g = torch.Generator().manual_seed(123)
    return {"video_mean": torch.randn(B, F, C, H, W, generator=g),
            "video_logvar": torch.rand(B, F, C, H, W, generator=g) * 4 - 6,
            "image_mean": torch.randn(B, 1, C, H, W, generator=g),
            "image_logvar": torch.rand(B, 1, C, H, W, generator=g) * 4 - 6,
            "first_frame_pm1": torch.rand(B, 3, 1, H * 8, W * 8, generator=g) * 2 - 1,
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
    batch, seed = {k: v for k, v in _batch().items() if k in (*spec.cached_video_tensors(), "prompt_embeds")}, 7
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
    if spec.image_condition == "per_step":
        # the first frame + Gaussian noise of sigma = exp(N(-3, 0.5)) per sample, VAE-encoded at every step
        sigma = torch.exp(-3.0 + 0.5 * torch.randn(B, generator=g))
        noisy = batch["first_frame_pm1"] + sigma.view(B, 1, 1, 1, 1) * torch.randn(B, 3, 1, H * 8, W * 8, generator=g)
        with torch.no_grad():
            posterior = pipe.vae.encode(noisy).latent_dist
        image_mean, image_logvar = posterior.mean.transpose(1, 2), posterior.logvar.transpose(1, 2)
    else:
        image_mean, image_logvar = batch["image_mean"], batch["image_logvar"]
    image = (image_mean + (0.5 * image_logvar).exp() * torch.randn(B, 1, C, H, W, generator=g)) * scale
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


def test_per_step_image_condition_encodes_a_new_noisy_frame_each_step(tiny_model_dir, monkeypatch):
    spec = CogVideoXI2V("tiny", cache_dir=str(tiny_model_dir.parent.parent), weights_dtype="fp32", lora_rank=4,
                        lora_alpha=4, gradient_checkpointing=False, image_dropout=0.0)
    spec.load_diffusion_model()
    batch = {k: v for k, v in _batch().items() if k != "image_mean" and k != "image_logvar"}
    with pytest.raises(RuntimeError, match="load_training_encoders"):
        spec.training_pair(batch, torch.Generator().manual_seed(1))
    spec.load_training_encoders(torch.device("cpu"))
    encoded = []
    real_encode = spec.image_vae.encode
    monkeypatch.setattr(spec.image_vae, "encode", lambda x: encoded.append(x.clone()) or real_encode(x))
    spec.training_pair(batch, torch.Generator().manual_seed(1))
    spec.training_pair(batch, torch.Generator().manual_seed(2))
    assert len(encoded) == 2 and encoded[0].shape == (B, 3, 1, 64, 96)
    noise = [e - batch["first_frame_pm1"] for e in encoded]
    assert not torch.equal(noise[0], noise[1])                       # a new draw every step
    sigmas = torch.stack([n.flatten(1).std(dim=1) for n in noise])   # one sigma per sample, around exp(-3)
    assert (sigmas > 0.005).all() and (sigmas < 0.5).all() and sigmas[0].unique().numel() == B
