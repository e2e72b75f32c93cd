"""AMT-S port: golden output of the reference model, official key names and shapes, loader sources."""
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from reangle.nets.amt import AMTS, load_amt_s

GOLDEN = Path(__file__).parent / "golden" / "amt_s"


def _golden_io():
    return load_file(str(GOLDEN / "io.safetensors"))


def test_reproduces_reference_output():
    """case.json: Model(corr_radius=3, corr_lvls=4, num_flows=3) at 128x192, embt 0.5, tolerance 1e-4."""
    io = _golden_io()
    model = load_amt_s(GOLDEN / "weights.safetensors")
    outputs = [k for k in io if k not in ("img0", "img1", "embt") and not k.startswith("debug.")]
    assert outputs == ["imgt_pred"]
    with torch.no_grad():
        pred = model(io["img0"], io["img1"], io["embt"])
    torch.testing.assert_close(pred, io["imgt_pred"], rtol=1e-4, atol=1e-4)


def test_full_size_build_on_meta_has_reference_keys_and_shapes():
    reference = load_file(str(GOLDEN / "weights.safetensors"))
    with torch.device("meta"):
        model = AMTS()
    state = model.state_dict()
    assert set(state) == set(reference)
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: tuple(v.shape) for k, v in reference.items()}
    assert sum(v.numel() for v in state.values()) == 2990543


def test_official_pth_layout_loads(tmp_path):
    """The released amt-s.pth wraps the weights as {"state_dict": ...}."""
    io = _golden_io()
    path = tmp_path / "amt-s.pth"
    torch.save({"state_dict": load_file(str(GOLDEN / "weights.safetensors"))}, path)
    model = load_amt_s(path)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        pred = model(io["img0"], io["img1"], io["embt"])
    torch.testing.assert_close(pred, io["imgt_pred"], rtol=1e-4, atol=1e-4)


def test_tiny_is_deterministic_and_batched():
    a, b = load_amt_s("tiny"), load_amt_s("tiny")
    torch.testing.assert_close(a.state_dict(), b.state_dict())
    gen = torch.Generator().manual_seed(0)
    img0, img1 = torch.rand(2, 3, 128, 128, generator=gen), torch.rand(2, 3, 128, 128, generator=gen)
    embt = torch.full((2, 1, 1, 1), 0.5)
    with torch.no_grad():
        both = a(img0, img1, embt)
        first = a(img0[:1], img1[:1], embt[:1])
    assert both.shape == (2, 3, 128, 128) and 0 <= both.min() and both.max() <= 1
    torch.testing.assert_close(both[:1], first, rtol=1e-4, atol=1e-5)


def test_bad_checkpoints_are_clear_errors(tmp_path):
    missing = tmp_path / "nowhere" / "amt-s.pth"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_amt_s(missing)
    other = tmp_path / "other.pth"
    torch.save({"state_dict": {"weight": torch.zeros(1)}}, other)
    with pytest.raises(ValueError, match="AMT-S checkpoint .* does not match the architecture"):
        load_amt_s(other)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not be read as a state dict"):
        load_amt_s(garbage)
