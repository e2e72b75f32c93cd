"""The fake-tensor simulator (reangle.simulate) against real CPU execution: peak memory of a LoRA
training step of the real CogVideoX transformer class within 10 % of the CPU allocator's own
events (profiler), FLOPs exact against closed forms."""
import pytest
import torch

from reangle.simulate import LiveBytes, Simulation, materialize, measured_peak_bytes

SIZES = {  # (layers, heads, head_dim, frames, height, width) of a CogVideoX-I2V transformer
    "tiny": (2, 2, 16, 9, 32, 48),
    "mid": (4, 8, 64, 25, 128, 192),
}


def _transformer(layers, heads, head_dim, frames, height, width):
    from diffusers import CogVideoXTransformer3DModel

    from reangle.models.lora import add_lora

    model = CogVideoXTransformer3DModel(
        num_attention_heads=heads, attention_head_dim=head_dim, in_channels=32, out_channels=16, time_embed_dim=32,
        text_embed_dim=64, num_layers=layers, sample_height=height // 8, sample_width=width // 8,
        sample_frames=frames, max_text_seq_length=32, use_rotary_positional_embeddings=False,
        use_learned_positional_embeddings=False)
    add_lora(model, rank=8, alpha=8)
    model.enable_gradient_checkpointing()
    return model.train()


def _step(model, frames, height, width):
    """One LoRA training step: forward, loss, backward, AdamW step (states created on the first step)."""
    f = (frames - 1) // 4 + 1
    x = torch.randn(1, f, 32, height // 8, width // 8)
    text = torch.randn(1, 32, 64)
    out = model(hidden_states=x, encoder_hidden_states=text, timestep=torch.tensor([500]), return_dict=False)[0]
    out.float().square().mean().backward()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return opt


@pytest.mark.parametrize("size", sorted(SIZES))
def test_simulated_peak_of_a_training_step_matches_real_cpu_allocations(size):
    layers, heads, head_dim, frames, height, width = SIZES[size]
    torch.manual_seed(0)
    model = _transformer(*SIZES[size])
    kept = []
    real = measured_peak_bytes(lambda: kept.append(_step(model, frames, height, width)))

    with torch.device("meta"):
        meta_model = _transformer(*SIZES[size])
    with Simulation(round_to=1) as sim:
        fake_model = materialize(meta_model)
        with sim.section() as s:
            kept.append(_step(fake_model, frames, height, width))
    simulated = s.peak_bytes - s.resident_bytes
    assert real > 1e5
    assert abs(simulated - real) <= 0.10 * real, (size, simulated, real)


def test_flops_of_an_mlp_step_are_the_closed_form():
    n, d, h = 64, 96, 256
    with Simulation() as sim:
        mlp = torch.nn.Sequential(torch.nn.Linear(d, h), torch.nn.GELU(), torch.nn.Linear(h, d))
        x = torch.randn(n, d)
        with sim.section() as s:
            mlp(x).sum().backward()
    forward = 2 * n * d * h * 2
    backward = 2 * n * d * h + 2 * (2 * n * h * d)  # weight grad of layer 1; input and weight grads of layer 2
    assert s.flops == forward + backward


def test_attention_flops_are_the_closed_form_and_no_score_matrix_is_allocated():
    b, heads, length, dim = 1, 4, 4096, 64
    with Simulation() as sim:
        q, k, v = (torch.randn(b, heads, length, dim, dtype=torch.bfloat16) for _ in range(3))
        with sim.section() as s:
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert s.flops == 4 * b * heads * length * length * dim  # Q K^T and P V
    scores = b * heads * length * length * 2
    assert s.peak_bytes - s.resident_bytes < scores / 10
    assert s.end_bytes - s.resident_bytes >= out.numel() * 2


def test_views_are_free_and_freed_tensors_leave():
    with LiveBytes(round_to=1) as live:
        x = torch.zeros(1000)
        y = x.view(10, 100).t()
        assert live.live == 4000
        del x, y
        z = torch.ones(10)
    assert live.live == 40 and live.peak == 4000
    del z
