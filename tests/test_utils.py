"""Shared helpers: cache keys and device choice."""
import pytest
import torch

from reangle.utils import file_fingerprint, fingerprint, resolve_device


def test_fingerprint_follows_params_and_tensor_bytes():
    a = torch.arange(6.0)
    assert fingerprint({"x": 1}, a) == fingerprint({"x": 1}, a.clone())
    assert fingerprint({"x": 1}, a) != fingerprint({"x": 2}, a)
    assert fingerprint({"x": 1}, a) != fingerprint({"x": 1}, a.view(2, 3))  # the shape counts too
    assert len(fingerprint([1], length=None)) == 64 and len(fingerprint([1])) == 16


def test_file_fingerprint_follows_bytes_and_names(tmp_path):
    (tmp_path / "a").write_bytes(b"one")
    first = file_fingerprint(tmp_path)
    (tmp_path / "a").write_bytes(b"two")
    assert file_fingerprint(tmp_path) != first
    (tmp_path / "b").write_bytes(b"")
    assert file_fingerprint(tmp_path) != file_fingerprint(tmp_path / "a")  # a new file counts


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")
