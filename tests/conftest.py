"""Test-wide settings (never touch the network, deterministic CPU runs) and shared fixtures:
the tiny random CogVideoX-I2V, Wan2.1-I2V and Wan2.2-TI2V and a two-view test Omega, written once per session."""
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import pytest  # noqa: E402

GOLDEN_ROOT = Path(__file__).parent / "golden"


@pytest.fixture(scope="session")
def golden_dir():
    """The in-repo golden vectors (``tests/golden``); a missing folder fails the test, never skips it."""
    if not (GOLDEN_ROOT / "README.md").is_file():
        pytest.fail(f"golden vectors missing: {GOLDEN_ROOT} must hold the reference data (see its PROVENANCE.md)")
    return GOLDEN_ROOT


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Folder (diffusers layout) of the default tiny CogVideoX-I2V."""
    from reangle.models.cogvideox import materialize_tiny

    return materialize_tiny(None, tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def tiny_wan_dir(tmp_path_factory):
    """Folder (diffusers layout) of the default tiny Wan2.1-I2V."""
    from reangle.models.wan import materialize_wan_tiny

    return materialize_wan_tiny(None, tmp_path_factory.mktemp("wan_cache"))


@pytest.fixture(scope="session")
def tiny_wan22_dir(tmp_path_factory):
    """Folder (diffusers layout) of the tiny Wan2.2-TI2V (``variant: ti2v``)."""
    from reangle.models.wan import materialize_wan_tiny

    return materialize_wan_tiny({"variant": "ti2v"}, tmp_path_factory.mktemp("wan22_cache"))


@pytest.fixture(scope="session")
def tiny_wan22_a14b_dir(tmp_path_factory):
    """Folder (diffusers layout) of the tiny two-expert Wan2.2-I2V-A14B (``variant: i2v_a14b``)."""
    from reangle.models.wan import materialize_wan_tiny

    return materialize_wan_tiny({"variant": "i2v_a14b"}, tmp_path_factory.mktemp("wan22_a14b_cache"))


def write_test_omega(root, mode="static", num_frames=9, height=64, width=96, warped_views=1):
    """An Omega (input + ``warped_views`` warped views ``orbit_left_<i>`` with holes) of a moving colour ramp."""
    import torch

    from reangle.data.omega import INPUT_VIEW, Omega, publish, staging_dir, write_view

    t = torch.linspace(0, 1, num_frames).view(-1, 1, 1, 1)
    ys = torch.linspace(0, 1, height).view(1, 1, -1, 1)
    xs = torch.linspace(0, 1, width).view(1, 1, 1, -1)
    frames = torch.cat([(xs + t) % 1 * torch.ones_like(ys), ys * torch.ones_like(xs) + 0 * t,
                        (0.5 + 0.5 * torch.sin(6 * (xs + ys) + 3 * t))], dim=1)
    K = torch.tensor([[60.0, 0, width / 2], [0, 60.0, height / 2], [0, 0, 1]])
    w2c = torch.eye(4).repeat(num_frames, 1, 1)
    hole = torch.ones(num_frames, height, width, dtype=torch.bool)
    hole[:, :, : width // 3] = False
    camera = "CAMERA_ORBIT_LEFT Camera movement orbit left, " if mode == "dynamic" else ""
    staging = staging_dir(root)
    views = [write_view(staging, INPUT_VIEW, frames, torch.ones_like(hole), K, w2c, "a colour ramp", None, 0.0, 8),
             *[write_view(staging, f"orbit_left_{i}",
                          frames.roll(3 * i, -1).flip(-1) * hole.roll(5 * i, -1).unsqueeze(1), hole.roll(5 * i, -1),
                          K, w2c, camera + "a colour ramp", "orbit_left", 12.0 + i, 8)
               for i in range(warped_views)]]
    omega = Omega(root=root, key=f"test-{mode}", mode=mode, num_frames=num_frames, height=height, width=width,
                  fps=8, caption="a colour ramp", views=views)
    return publish(staging, root, omega)


@pytest.fixture(scope="session")
def tiny_omega(tmp_path_factory):
    """Folder of a two-view test Omega (9 frames of 64x96)."""
    return write_test_omega(tmp_path_factory.mktemp("omega") / "omega").root


def inpainter_ode_path(inpainter, image, visible, prompt, steps=3, seed=5):
    """Stage III's sampler on one view with S = 1 and the ODE: (condition, initial noise, final latents)."""
    import torch

    from reangle.inpaint.search import guided_sample

    class OneView:
        def velocity(self, k, latents, sigma):
            return inpainter.velocity(latents, sigma, cond)

    cond = inpainter.condition(image, visible, prompt)
    noise = inpainter.initial_noise(cond, torch.Generator().manual_seed(seed))
    out = guided_sample(OneView(), [noise], inpainter.sigmas(steps, cond), 1, torch.Generator(), stochastic=False)
    return cond, noise, out.latents[0]


def random_lora_file(transformer, folder, pipeline=None):
    """A rank-4 LoRA on the attention projections of a copy of ``transformer`` with random (non-zero) B,
    exported by our exporter (``pipeline``: the pipeline class writing it); returns (file, adapted copy)."""
    import copy

    import torch

    from reangle.models.lora import add_lora, lora_state_dict, save_lora

    adapted = copy.deepcopy(transformer)
    config = add_lora(adapted, rank=4, alpha=8)
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return save_lora(folder / "lora", lora_state_dict(adapted), config, pipeline=pipeline), adapted
