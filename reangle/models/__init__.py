"""Stage II backbones, each a :class:`reangle.models.spec.ModelSpec`."""
from __future__ import annotations

from typing import Any, Mapping


def spec_class(model: Mapping[str, Any]) -> type:
    """The :class:`~reangle.models.spec.ModelSpec` subclass of a ``model`` config section
    (CogVideoX-I2V is the one backbone so far)."""
    from reangle.models.cogvideox_i2v import CogVideoXI2V

    return CogVideoXI2V
