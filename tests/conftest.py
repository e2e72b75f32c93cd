"""Shared fixtures: the tiny random CogVideoX-I2V, written once per session."""
import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Folder (diffusers layout) of the default tiny CogVideoX-I2V."""
    from reangle.models.cogvideox import materialize_tiny

    return materialize_tiny(None, tmp_path_factory.mktemp("cache"))
