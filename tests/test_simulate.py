"""The fake-tensor simulator (reangle.simulate) against real CPU execution: peak memory of a LoRA
training step of the real CogVideoX transformer class within 10 % of the CPU allocator's own
events (profiler), FLOPs exact against closed forms."""
import importlib.util
from pathlib import Path

import pytest
import torch

from reangle.simulate import LiveBytes, Simulation, compare_with_real

_spec = importlib.util.spec_from_file_location("full_size", Path(__file__).parents[1] / "benchmarks" / "full_size.py")
full_size = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(full_size)


@pytest.mark.parametrize("size", sorted(full_size.SMALL_SIZES))
def test_simulated_peak_of_a_training_step_matches_real_cpu_allocations(size):
    dims = full_size.SMALL_SIZES[size]
    torch.manual_seed(0)
    simulated, measured = compare_with_real(lambda: full_size.small_transformer(*dims),
                                            lambda m: full_size.small_training_step(m, *dims[3:]))
    assert measured > 1e5
    assert abs(simulated - measured) <= 0.10 * measured, (size, simulated, measured)


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


def test_value_dependent_ops_take_their_largest_size():
    with Simulation() as sim:
        mask = torch.rand(100) > 0.5
        with sim.section():
            assert mask.nonzero().shape == (100, 1)
            assert torch.arange(100)[mask].shape == (100,)
            assert bool(mask.any()) is True


def test_layerwise_casting_on_fake_weights_holds_one_layer_in_the_compute_dtype_at_a_time():
    """diffusers' per-layer casts (module.to) run on fake parameters; conversions on meta count nothing."""
    from diffusers.hooks import apply_layerwise_casting

    from reangle.simulate import materialize

    mib = 2**20
    with torch.device("meta"):
        model = torch.nn.Sequential(*[torch.nn.Linear(1024, 1024, bias=False) for _ in range(3)]).to(torch.bfloat16)
    with Simulation() as sim:
        apply_layerwise_casting(model, torch.float8_e4m3fn, torch.bfloat16, skip_modules_pattern=())  # on meta
        assert sim.live.live == 0
        materialize(model)
        x = torch.empty(1, 1024, dtype=torch.bfloat16)
        with sim.section() as s, torch.no_grad():
            model(x)
    assert s.resident_bytes == 3 * mib + 2048  # three fp8 layers + the input
    assert 2 * mib <= s.peak_bytes - s.resident_bytes <= 2 * mib + 8192  # one bf16 copy (+ outputs)
    assert all(p.dtype == torch.float8_e4m3fn for p in model.parameters())
    assert torch.nn.Module._apply.__module__ == "torch.nn.modules.module"  # restored after the simulation
