"""``eval.md``: the scores as a table in the layout of the paper's Tab. 1 (one row per
run, the dataset scores), then one row per view."""
from __future__ import annotations

from eval.registry import METRICS


def _cell(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.5g}"


MODES = {"static": "static view transport", "dynamic": "dynamic camera control"}  # the paper's table halves


def _header(names: list[str], first: str = "") -> list[str]:
    labels = [METRICS[n].label + ("↑" if METRICS[n].higher_is_better else "↓") if n in METRICS else n for n in names]
    return [f"| {first} | " + " | ".join(labels) + " |", "|---" * (len(names) + 1) + "|"]


def markdown_table(result: dict, title: str) -> str:
    """Markdown of an ``eval.json`` dict: the dataset row (``title``) and the per-view rows."""
    names = list(result["aggregate"])
    settings = result.get("settings", {})
    lines = [f"# Evaluation: {title}", ""] + _header(names, MODES.get(settings.get("mode"), ""))
    lines.append(f"| {title} | " + " | ".join(_cell(result["aggregate"][n]) for n in names) + " |")
    per_view = [n for n in names if any(n in scores for scores in result["videos"].values())]
    if per_view:
        lines += ["", "## Per view", ""] + _header(per_view, "view")
        for view, scores in result["videos"].items():
            lines.append(f"| {view} | " + " | ".join(_cell(scores.get(n)) for n in per_view) + " |")
    lines += ["", f"{settings.get('num_videos', len(result['videos']))} videos, mode {settings.get('mode')}, "
                  f"{settings.get('num_reference', 0)} reference video(s) for FID/FVD."]
    errors = result.get("errors", {})
    if errors:
        lines += ["", "## Failed metrics", ""] + [f"- {name}: {why}" for name, why in errors.items()]
    warnings = settings.get("warnings", [])
    if warnings:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in warnings]
    return "\n".join(lines) + "\n"
