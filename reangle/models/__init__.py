"""Stage II backbones, each a :class:`reangle.models.spec.ModelSpec`, chosen by ``model.family``."""
from __future__ import annotations

from typing import Any, Mapping


def spec_class(model: Mapping[str, Any]) -> type:
    """The :class:`~reangle.models.spec.ModelSpec` subclass of a ``model`` config section
    (``family``: ``cogvideox`` or ``wan``; an unknown family is a ``ConfigError``)."""
    from reangle.models.family import check_family

    check_family(model.get("family", "cogvideox"))
    if model.get("family") == "wan":
        from reangle.models.wan_i2v import WanI2V

        return WanI2V
    from reangle.models.cogvideox_i2v import CogVideoXI2V

    return CogVideoXI2V
