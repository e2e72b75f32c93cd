"""``eval.json`` / ``eval.md`` on disk: a new result merged into the file already there, and the
failure that makes the entry points exit non-zero when a metric has no score.

Merging: the metrics just scored (or just failed) replace their entries; the other metrics of
the existing file are kept when it scored the same videos (same names), so a re-run with
``--metrics`` computes only what is missing. Metrics are kept in the registry's order.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from eval.evaluate import EvalResult
from eval.models import EvalConfigError
from eval.registry import METRICS
from eval.report import markdown_table
from reangle.utils import atomic_write_text

EVAL_JSON, EVAL_MD = "eval.json", "eval.md"


class MetricsFailed(EvalConfigError):
    """One or more metrics have no score; the others are in ``eval.json`` (and in ``.result``)."""

    result: EvalResult


def _ordered(names) -> list[str]:
    order = {name: k for k, name in enumerate(METRICS)}
    return sorted(names, key=lambda n: order.get(n, len(order)))


def merge_results(previous: dict | None, new: dict) -> dict:
    """``new`` (an ``EvalResult.to_json()``) on top of ``previous`` (an ``eval.json`` dict): the metrics of
    ``new`` replace theirs; the others are kept when both scored the same videos."""
    if not previous or sorted(previous.get("videos", {})) != sorted(new["videos"]):
        return new
    fresh = set(new["settings"]["metrics"])
    kept = [m for m in list(previous.get("aggregate", {})) + list(previous.get("errors", {})) if m not in fresh]
    aggregate = {**{m: v for m, v in previous.get("aggregate", {}).items() if m in kept}, **new["aggregate"]}
    errors = {**{m: v for m, v in previous.get("errors", {}).items() if m in kept}, **new["errors"]}
    details = {**{m: v for m, v in previous.get("details", {}).items() if m in kept}, **new["details"]}
    videos = {}
    for view, scores in new["videos"].items():
        merged = {**{m: v for m, v in previous["videos"][view].items() if m in kept}, **scores}
        videos[view] = {m: merged[m] for m in _ordered(merged)}
    settings = {**new["settings"], "metrics": _ordered(set(new["settings"]["metrics"]) | set(kept))}
    return {"aggregate": {m: aggregate[m] for m in _ordered(aggregate)}, "videos": videos, "settings": settings,
            "errors": {m: errors[m] for m in _ordered(errors)}, "details": {m: details[m] for m in _ordered(details)}}


def write_results(result: EvalResult, out_dir: str | os.PathLike, title: str) -> tuple[Path, Path]:
    """``eval.json`` (merged into the one in ``out_dir``, see :func:`merge_results`) and ``eval.md`` in
    ``out_dir``, each written through a temporary file."""
    out_dir = Path(out_dir)
    path = out_dir / EVAL_JSON
    previous = None
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
        except json.JSONDecodeError:
            previous = None  # a damaged file is replaced
    data = merge_results(previous, result.to_json())
    return (atomic_write_text(path, json.dumps(data, indent=1)),
            atomic_write_text(out_dir / EVAL_MD, markdown_table(data, title)))


def raise_for_errors(result: EvalResult, out_dir: str | os.PathLike) -> None:
    """:class:`MetricsFailed` naming each metric without a score and why (after the file is written)."""
    if result.errors:
        reasons = "; ".join(f"{name}: {why}" for name, why in result.errors.items())
        error = MetricsFailed(f"{len(result.errors)} metric(s) failed ({reasons}); the other scores are in "
                              f"{Path(out_dir) / EVAL_JSON}")
        error.result = result
        raise error
