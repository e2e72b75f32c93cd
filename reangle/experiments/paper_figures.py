"""The paper's reported figures (Tab. 1, Tab. 2; see paper.md) and the settings they belong to.

Metric names are those of ``python -m eval`` (``eval.json``). A run matches the paper's
setting when its resolved config has the paper's values for every key of ``PAPER_SETTING``
(plus the mode's M, and for Tab. 2 stage III's steps, size, S and guidance flag).
"""
from __future__ import annotations

from typing import Any

TABLE1_METRICS = {  # eval name -> column title (paper Tab. 1)
    "subject_consistency": "SubjC", "background_consistency": "BackC", "temporal_flickering": "Flick",
    "motion_smoothness": "Smooth", "dynamic_degree": "Dyn", "aesthetic_quality": "Aesth",
    "imaging_quality": "Imag", "met3r": "MEt3R", "fid": "FID", "fvd": "FVD",
}
TABLE2_METRICS = {"met3r": "MEt3R", "sed": "SED", "tsed": "TSED"}
LOWER_IS_BETTER = {"met3r", "fid", "fvd", "sed", "camera_rot_err", "camera_trans_err", "warp_lpips", "train_loss"}

TABLE1 = {  # mode -> the paper's Reangle-A-Video row
    "static": dict(zip(TABLE1_METRICS, (.9516, .9327, .9764, .9907, .7657, .5160, .6414, .0412, 53.448, 2690.9))),
    "dynamic": dict(zip(TABLE1_METRICS, (.9140, .9364, .9386, .9794, .8884, .5238, .6271, .0648, 74.194, 3019.7))),
}
TABLE2 = {  # inpaint.guidance -> the paper's row (SED thresholds Te = 1.25, Tm = 10)
    False: {"met3r": .1431, "sed": 1.1966, "tsed": .5241},
    True: {"met3r": .1184, "sed": 1.1844, "tsed": .5588},
}
PAPER_SETTING = {"lora.rank": 128, "lora.alpha": 128, "train.steps": 400, "train.lr": 1.0e-4, "train.masked": True,
                 "train.views": None, "train.exclude_motions": [], "sample.steps": 40, "sample.guidance": 6.0}
PAPER_INPAINT = {"inpaint.steps": 50, "inpaint.size": 1024}  # stage III (Tab. 2); guided runs also S = 25
PAPER_PER_MOTION = {"static": 2, "dynamic": 1}  # M = 12 (static), 6 (dynamic)


def _get(config: dict[str, Any], dotted: str, default: Any = KeyError) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            if default is KeyError:
                raise KeyError(dotted)
            return default
        node = node[part]
    return node


def matches_paper(config: dict[str, Any]) -> bool:
    """True when the resolved ``config`` (a plain dict) has the paper's training and sampling settings."""
    try:
        same = all(_get(config, k) == v for k, v in PAPER_SETTING.items())
        per_motion = _get(config, "views.per_motion") or PAPER_PER_MOTION.get(config.get("mode"))
        motions = _get(config, "views.motions")
    except KeyError:
        return False
    return same and per_motion == PAPER_PER_MOTION.get(config.get("mode")) and len(motions) == 6


def _paper_stage3(config: dict[str, Any], guidance: bool) -> bool:
    """Whether stage III ran as in the paper (ControlNet inpainter, its steps and size; S = 25 when guided)."""
    if _get(config, "inpaint.inpainter", "controlnet") != "controlnet":  # the paper inpaints with the ControlNet
        return False
    inpaint = {**PAPER_INPAINT, **({"inpaint.candidates": 25} if guidance else {})}
    return all(_get(config, k, None) == v for k, v in inpaint.items())


def paper_table1_row(config: dict[str, Any]) -> dict[str, float] | None:
    """The paper's Tab. 1 row for ``config``'s mode when it is the paper's full method (its training
    and sampling settings; in static mode also stage III with stochastic guidance, as the paper ran it)."""
    if not matches_paper(config):
        return None
    if config.get("mode") == "static" and not (_get(config, "inpaint.guidance", None) is True
                                               and _get(config, "inpaint.enabled", True)
                                               and _paper_stage3(config, True)):
        return None
    return TABLE1.get(config.get("mode"))


def paper_table2_row(config: dict[str, Any]) -> dict[str, float] | None:
    """The paper's Tab. 2 row (with / without stochastic guidance) for a static run in the paper's setting."""
    guidance = _get(config, "inpaint.guidance", None)
    if config.get("mode") != "static" or guidance is None or not matches_paper(config):
        return None
    return TABLE2[bool(guidance)] if _paper_stage3(config, bool(guidance)) else None
