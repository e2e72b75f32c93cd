"""The fake-tensor simulator (reangle.simulate) against real CPU execution: peak memory of a LoRA
training step of the real CogVideoX transformer class within 10 % of the CPU allocator's own
events (profiler), FLOPs exact against closed forms."""
import importlib.util
from pathlib import Path

import pytest
import torch

from reangle import simulate
from reangle.simulate import (LiveBytes, Simulation, compare_with_real, extrapolate_depth, materialize, measured,
                              memoize_calls)

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


def _simulated_training_step(layers: int) -> tuple[int, int]:
    """(peak bytes, FLOPs) of a LoRA training step of a CogVideoX transformer of ``layers`` blocks
    (gradient checkpointing, AdamW), simulated."""
    dims = (layers, 4, 32, 9, 64, 96)
    with torch.device("meta"):
        model = full_size.small_transformer(*dims)
    with Simulation() as sim:
        materialize(model)
        with sim.section() as s:
            full_size.small_training_step(model, *dims[3:])
    return s.peak_bytes, s.flops


def test_depth_extrapolation_matches_the_full_depth_simulation():
    full = _simulated_training_step(10)
    extrapolated = extrapolate_depth(_simulated_training_step, 10, base=2)
    assert extrapolated[1] == full[1]  # FLOPs exactly
    assert abs(extrapolated[0] - full[0]) <= 0.005 * full[0], (extrapolated, full)
    assert _simulated_training_step(2)[0] < 0.5 * full[0]  # the two shallow runs are far from the full depth


def test_depth_extrapolation_refuses_runs_that_measure_differently():
    with pytest.raises(RuntimeError, match="measured more"):
        extrapolate_depth(lambda n: [measured(1) for _ in range(n)], 5)


class _Cached(torch.nn.Module):
    """Replaces ``cache[0]`` by its input's square (a side effect: never replayed; the old entry is
    freed during the call and must not be kept alive by the recording)."""

    def forward(self, x, cache):
        cache[0] = x * x
        return x + 1


def _three_calls(memo: bool):
    known = set(simulate._MEMO.entries)
    with Simulation() as sim:
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.GELU(), torch.nn.Conv2d(16, 3, 3))
        side = _Cached()
        if memo:
            memoize_calls(net), memoize_calls(side)
        x = torch.randn(2, 3, 64, 64)
        cache = [torch.zeros_like(x)]
        with sim.section() as s, torch.no_grad():
            outs = [net(x) for _ in range(3)] + [side(x, cache) for _ in range(2)]
        assert all(o.shape == (2, 3, 62, 62) for o in outs[:3])
    new = [e for k, e in simulate._MEMO.entries.items() if k not in known]
    replayable = [e for e in new if isinstance(e, tuple)]
    return s.peak_bytes, s.end_bytes, s.flops, len(replayable), len(new) - len(replayable)


def test_replayed_calls_count_what_running_them_counts():
    plain, memo = _three_calls(False), _three_calls(True)
    assert memo[:3] == plain[:3]
    assert plain[2] == 3 * 2 * 2 * (62 * 62 * 3 * 16 * 9 + 64 * 64 * 16 * 3 * 9)  # 3 calls of two convolutions
    assert memo[3:] == (4, 1)  # the net and its three layers recorded once; the side-effect call marked never replayed


@pytest.mark.slow
def test_full_size_wan_step_extrapolated_equals_its_full_depth_simulation():
    full = full_size.phase_wan_train_step()
    extrapolated = full_size.at_full_depth(full_size.phase_wan_train_step)
    assert extrapolated["tflop"] == full["tflop"]
    assert extrapolated["peak_gb"] == pytest.approx(full["peak_gb"], rel=1e-3)
    assert extrapolated["weights_gb"] == pytest.approx(full["weights_gb"], rel=1e-9)


def test_eval_phase_counts_the_items_the_metrics_score():
    from torchvision.models import inception_v3

    from eval.dynamic_degree import subsample_indices
    from eval.fvd import video_clips
    from eval.motion_smoothness import midpoint_pairs

    video = torch.zeros(49, 3, 8, 8)
    assert full_size.eval_items("motion_smoothness", 49) == midpoint_pairs(video)[0].shape[0] == 24
    assert full_size.eval_items("dynamic_degree", 49, fps=24) == len(subsample_indices(49, 24)) - 1 == 16
    assert full_size.eval_items("fvd", 49) == video_clips(video, 16, 16).shape[0] == 3   # FVD's default protocol
    out = full_size.phase_eval("fid", frames=5, height=64, width=96, batch=2)
    real = inception_v3(weights=None, aux_logits=False, init_weights=False)
    weights = sum(t.numel() * t.element_size() for t in [*real.parameters(), *real.buffers()])
    assert out["weights_gb"] * 1e9 == pytest.approx(weights, rel=1e-9)
    assert (out["items_per_video"], out["items_per_call"]) == (5, 2) and out["peak_gb"] > out["weights_gb"]
