"""The results of a sweep folder: ``results.csv``, ``results.md`` and ``plots/*.png``.

Reads every ``trials/*/result.json`` and the unit's resolved ``config.yaml``. Units are compared
like with like:

* **groups**: a unit's mode (static view transport / dynamic camera control: MEt3R pairs views in
  one and frames in the other, SED/TSED exist in static mode only) and its ``eval.source``
  (sampled videos, or stage III's start frames) form a group; groups are never mixed in a row;
* **common videos**: within a group, settings are compared over the videos every setting
  finished (the table says which, and what was left out); a cell scored on fewer videos shows
  its n;
* **paper rows** follow only a setting the paper reports: Tab. 1 (sampled videos) beside the full
  method in the paper's setting, Tab. 2 (start frames) beside the guided / independent stage III;
* **losses**: masked and plain diffusion losses (``train.masked``) are different quantities and
  are labelled and plotted apart.

``results.csv``: one row per unit (``view`` = ``all``: the unit's aggregate) and one per unit and
evaluated view (its per-view scores): the swept keys, mode, source, status, seconds, final
training loss, every metric, the error. The plots, per group: each metric per setting (bar =
mean over the common videos, error bar = standard deviation, dots = videos, n under each
setting) and each metric against every numeric swept key, with the direction (lower/higher is
better) on the axis and a note where the y axis is zoomed onto a small spread.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import statistics
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from reangle.experiments.paper_figures import (LOWER_IS_BETTER, TABLE1_METRICS, TABLE2_METRICS, paper_table1_row,
                                               paper_table2_row)
from reangle.experiments.trial import RESULT
from reangle.utils import atomic_write_text, temporary_path

TRIALS = "trials"
ALL_VIEWS = "all"
BASE_COLUMNS = ["id", "trial", "setting", "mode", "source"]
UNIT_COLUMNS = ["video", "view", "status", "seconds", "train_loss"]
MODE_TITLES = {"static": "static view transport", "dynamic": "dynamic camera control"}
SOURCE_TITLES = {"samples": "scores of the sampled videos", "start_frames": "scores of stage III's start frames"}
UNITS = {"seconds": "s", "train_loss": "diffusion loss"}
ZOOM_NOTE = 0.05  # a y range under 5 % of the values' size is called out as zoomed


def collect_results(sweep_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every recorded unit result under ``sweep_dir/trials``, ordered by unit id."""
    results = []
    for path in sorted((Path(sweep_dir) / TRIALS).glob(f"*/{RESULT}")):
        try:
            results.append(json.loads(path.read_text()))
        except json.JSONDecodeError:
            continue
    return results


def _format_value(value: Any) -> str:
    if isinstance(value, list):
        return "+".join(map(str, value)) if value else "[]"
    return str(value)


def setting_label(params: dict[str, Any]) -> str:
    """A short name of a parameter set, e.g. ``experiment=unmasked, lora.rank=16``."""
    return ", ".join(f"{k}={_format_value(v)}" for k, v in params.items()) or "default"


def _number(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return ""
    return f"{value:.5g}"


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def video_name(result: dict[str, Any]) -> str:
    """The unit's manifest video, or the sweep command's own input when it ran without a manifest."""
    return result.get("video") or "the command's video"


def _run_config(sweep_dir: Path, unit_id: str) -> dict[str, Any]:
    path = sweep_dir / TRIALS / unit_id / "config.yaml"
    return yaml.safe_load(path.read_text()) if path.is_file() else {}


def direction(column: str) -> str:
    """``lower is better`` or ``higher is better`` for a metric or column."""
    return "lower is better" if column in LOWER_IS_BETTER or column == "seconds" else "higher is better"


def axis_label(column: str) -> str:
    unit = UNITS.get(column)
    return f"{column}{f' [{unit}]' if unit else ''} ({direction(column)})"


class SweepResults:
    """The results of one sweep folder, grouped by (mode, evaluation source), then by setting."""

    def __init__(self, sweep_dir: str | os.PathLike):
        self.dir = Path(sweep_dir)
        self.units = collect_results(self.dir)
        self.configs = {r["id"]: _run_config(self.dir, r["id"]) for r in self.units}
        self.param_keys = list(dict.fromkeys(k for r in self.units for k in r.get("params", {})))
        self.metrics = sorted({m for r in self.units for m in r.get("metrics", {})})
        self.groups: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
        for result in self.units:
            self.groups[self.group(result)][setting_label(result.get("params", {}))].append(result)
        self.name = self.units[0].get("sweep", self.dir.name) if self.units else self.dir.name

    # --- what a unit is -----------------------------------------------------------------------
    def group(self, result: dict[str, Any]) -> tuple[str, str]:
        """``(mode, eval.source)`` of a unit: recorded by the runner, else from its saved config."""
        config = self.configs.get(result["id"], {})
        return (result.get("mode") or config.get("mode") or "unknown",
                result.get("source") or (config.get("eval") or {}).get("source") or "samples")

    def loss_kind(self, result: dict[str, Any]) -> str:
        """``masked`` or ``plain``: which diffusion loss the unit's ``train_loss`` is."""
        swept = result.get("params", {}).get("train.masked", True)
        masked = (self.configs.get(result["id"], {}).get("train") or {}).get("masked", swept)
        return "masked" if masked else "plain"

    def failures(self) -> list[dict[str, Any]]:
        return [r for r in self.units if r.get("status") != "ok"]

    def value(self, result: dict[str, Any], column: str) -> float | None:
        value = result.get(column) if column in ("train_loss", "seconds") else result.get("metrics", {}).get(column)
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None

    # --- comparisons --------------------------------------------------------------------------
    def common_videos(self, group: tuple[str, str]) -> list[str]:
        """The videos every setting of ``group`` finished (what its settings are compared over)."""
        finished = [{video_name(r) for r in results if r.get("status") == "ok"}
                    for results in self.groups[group].values()]
        return sorted(set.intersection(*finished)) if finished else []

    def values(self, group: tuple[str, str], setting: str, column: str, videos: list[str] | None) -> list[float]:
        """``column`` of the finished units of ``setting`` in ``group`` (of ``videos`` only, unless None)."""
        return [v for r in self.groups[group][setting] if r.get("status") == "ok"
                and (videos is None or video_name(r) in videos) and (v := self.value(r, column)) is not None]

    def compared_videos(self, group: tuple[str, str]) -> list[str] | None:
        """The common videos, or None (each setting its own videos) when there are none."""
        return self.common_videos(group) or None

    # --- files --------------------------------------------------------------------------------
    def csv_text(self) -> str:
        columns = BASE_COLUMNS + self.param_keys + UNIT_COLUMNS + self.metrics + ["error"]
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(columns)
        for r in self.units:
            params = r.get("params", {})
            head = [r.get("id"), r.get("trial"), setting_label(params), *self.group(r)]
            head += [json.dumps(params[k]) if isinstance(params.get(k), (list, dict)) else params.get(k, "")
                     for k in self.param_keys]
            writer.writerow(head + [r.get("video") or "", ALL_VIEWS, r.get("status"), r.get("seconds"),
                                    r.get("train_loss")]
                            + [r.get("metrics", {}).get(m, "") for m in self.metrics] + [r.get("error") or ""])
            for view, scores in (r.get("views") or {}).items():
                writer.writerow(head + [r.get("video") or "", view, r.get("status"), "", ""]
                                + [scores.get(m, "") for m in self.metrics] + [""])
        return out.getvalue()

    def _cell(self, group, setting, column, videos, row_n) -> str:
        values = self.values(group, setting, column, videos)
        text = _number(_mean(values))
        return f"{text} (n={len(values)})" if text and len(values) != row_n else text

    def _table(self, group, columns: dict[str, str], paper_row, paper_note: str) -> list[str]:
        videos = self.compared_videos(group)
        lines = ["| setting | n | " + " | ".join(columns.values()) + " |", "|---" * (len(columns) + 2) + "|"]
        for setting, results in self.groups[group].items():
            finished = [r for r in results if r.get("status") == "ok"]
            n = len(videos) if videos else len(finished)
            lines.append(f"| {setting} | {n} | " + " | ".join(self._cell(group, setting, m, videos, n) for m in columns)
                         + " |")
            paper = paper_row(self.configs.get(finished[0]["id"], {})) if finished and paper_row else None
            if paper is not None:
                lines.append(f"| *paper ({paper_note})* | 28 | " + " | ".join(_number(paper.get(m)) for m in columns)
                             + " |")
        return lines

    def _group_markdown(self, group: tuple[str, str]) -> list[str]:
        mode, source = group
        settings = self.groups[group]
        common = self.common_videos(group)
        lines = [f"## {MODE_TITLES.get(mode, mode)}: {SOURCE_TITLES.get(source, source)}", ""]
        if common:
            lines.append(f"Settings are compared over the {len(common)} video(s) every setting finished: "
                         f"{', '.join(common)}.")
            extra = {s: sorted({video_name(r) for r in rs if r.get('status') == 'ok'} - set(common))
                     for s, rs in settings.items()}
            left_out = [f"{s}: {', '.join(v)}" for s, v in extra.items() if v]
            if left_out:
                lines.append("Left out of the comparison (not finished by every setting): " + "; ".join(left_out) + ".")
        else:
            lines.append("No video was finished by every setting: each row is the mean over its own videos (n), "
                         "so rows are not comparable.")
        videos = common or None
        kinds = {self.loss_kind(r) for rs in settings.values() for r in rs}
        lines += ["", "| setting | finished | failed | final train loss | seconds |", "|---|---|---|---|---|"]
        for setting, results in settings.items():
            ok = sum(r.get("status") == "ok" for r in results)
            kind = self.loss_kind(results[0])
            loss = _number(_mean(self.values(group, setting, "train_loss", videos)))
            lines.append(f"| {setting} | {ok} | {len(results) - ok} | {loss + (f' ({kind})' if loss else '')} | "
                         f"{_number(_mean(self.values(group, setting, 'seconds', videos)))} |")
        if len(kinds) > 1:
            lines += ["", "Masked and plain diffusion losses are different quantities: compare the training loss only "
                          "between rows of the same kind."]
        table1 = source == "samples" and any(m in self.metrics for m in TABLE1_METRICS)
        table2 = any(m in self.metrics for m in TABLE2_METRICS if m != "met3r") or (
            source == "start_frames" and "met3r" in self.metrics)
        if table1:
            lines += ["", "### Video quality (layout of the paper's Tab. 1)", "",
                      *self._table(group, TABLE1_METRICS, paper_table1_row, f"{mode}, full method")]
        if table2:
            lines += ["", "### Multi-view consistency (layout of the paper's Tab. 2)", ""]
            if source != "start_frames":
                lines += ["The paper's Tab. 2 scores stage III's start frames, these are the sampled videos' scores, "
                          "so no paper row is shown (the sweep `configs/sweeps/start_frames.yaml` scores the start "
                          "frames).", ""]
            lines += self._table(group, TABLE2_METRICS, paper_table2_row if source == "start_frames" else None,
                                 "stage III")
        shown = set(TABLE1_METRICS) if table1 else set()
        shown |= set(TABLE2_METRICS) if table2 else set()
        other = [m for m in self.metrics if m not in shown]
        if other:
            lines += ["", "### Other metrics", "", *self._table(group, {m: m for m in other}, None, "")]
        zero = [m for m in self.metrics if (vs := [v for s in settings for v in self.values(group, s, m, None)])
                and all(v == 0 for v in vs)]
        if zero:
            lines += ["", f"Every video scored 0 in {', '.join(zero)}: the metric found nothing to measure (see "
                          f"each unit's eval.md), not a perfect or failed score."]
        return lines

    def markdown(self) -> str:
        failed = self.failures()
        lines = [f"# Sweep `{self.name}`", "",
                 f"{len(self.units)} units (trials x videos): {len(self.units) - len(failed)} finished, "
                 f"{len(failed)} failed. Static and dynamic videos, and scores of sampled videos and of start "
                 f"frames, are reported in separate sections. n: videos in a mean.", ""]
        for group in self.groups:
            lines += self._group_markdown(group) + [""]
        if self.metrics:
            lower = sorted(m for m in LOWER_IS_BETTER if m in self.metrics)
            lines += ["A *paper* row follows a setting the paper reports, in its settings (LoRA rank = alpha = 128, "
                      "400 steps, lr 1e-4, masked loss, all six motions with M = 12 static / 6 dynamic, 40 sampling "
                      "steps, guidance 6; stage III with the ControlNet, 50 steps at 1024 px, S = 25 when guided): "
                      "Tab. 1 for the full method's sampled videos, Tab. 2 for the start frames. The paper's n is its "
                      "28 videos. Lower is better for " + (", ".join(lower) or "none here") + ". A blank cell: no "
                      "compared video has a value (the metric was not asked for that unit, or it failed).", ""]
        if failed:
            lines += ["## Failures", ""]
            lines += [f"- `{r.get('id')}` (video {video_name(r)}, {setting_label(r.get('params', {}))}) "
                      f"failed in {r.get('stage') or '?'}: {r.get('error')} (log: {TRIALS}/{r.get('id')}/trial.log)"
                      for r in failed]
        return "\n".join(lines).rstrip("\n") + "\n"

    def _suffix(self, group: tuple[str, str]) -> str:
        return "" if len(self.groups) == 1 else f"_{group[0]}_{group[1]}"

    def plot(self, out_dir: Path) -> list[Path]:
        """PNG plots (see module docstring) into ``out_dir``; returns their paths."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        written = []
        for group in self.groups:
            kinds = sorted({self.loss_kind(r) for rs in self.groups[group].values() for r in rs})
            for column in ["train_loss", *self.metrics]:
                subsets = [(k, f"_{k}") for k in kinds] if column == "train_loss" and len(kinds) > 1 else [(None, "")]
                for kind, tail in subsets:
                    written += self._bar_plot(plt, out_dir, group, column, kind, self._suffix(group) + tail)
                    if kind is None:
                        for key in self._numeric_keys():
                            written += self._line_plot(plt, out_dir, group, column, key, self._suffix(group))
        return written

    def _numeric_keys(self) -> list[str]:
        return [k for k in self.param_keys if len({json.dumps(r["params"].get(k)) for r in self.units}) > 1
                and all(isinstance(r["params"].get(k), (int, float)) and not isinstance(r["params"].get(k), bool)
                        for r in self.units)]

    def _title(self, group, text: str) -> str:
        mode, source = group
        return "\n".join(textwrap.wrap(f"{text} — {mode}, {source.replace('_', ' ')}", 60))

    def _bar_plot(self, plt, out_dir, group, column, kind, suffix) -> list[Path]:
        videos = self.compared_videos(group)
        settings = [s for s, rs in self.groups[group].items() if kind is None or self.loss_kind(rs[0]) == kind]
        points = {s: self.values(group, s, column, videos) for s in settings}
        if not any(points.values()):
            return []
        fig, ax = plt.subplots(figsize=(max(4.5, 1.7 * len(settings)), 4.0))
        xs = range(len(settings))
        ax.bar(xs, [_mean(points[s]) or 0.0 for s in settings], yerr=[_std(points[s]) for s in settings],
               color="#8fb3d9", capsize=4, label="mean ± std over videos")
        for i, s in enumerate(settings):
            ax.plot([i] * len(points[s]), points[s], "o", color="#1f4e79", markersize=4)
        ax.set_xticks(list(xs), ["\n".join(textwrap.wrap(s, 22)) + f"\n(n={len(points[s])})" for s in settings],
                     fontsize=7)
        ax.set_ylabel(axis_label(column), fontsize=8)
        what = f"{column} per setting" + (f" ({kind} loss)" if kind else "")
        over = "common videos" if videos else "each setting's own videos (not comparable)"
        note = "; all values 0: nothing was measured" if all(v == 0 for vs in points.values() for v in vs) else ""
        ax.set_title(self._title(group, f"{what}: bar = mean over {over}, dots = videos{note}"), fontsize=8)
        return [_save(fig, out_dir / f"{_slug(column)}_by_setting{suffix}.png")]

    def _line_plot(self, plt, out_dir: Path, group, column: str, key: str, suffix: str) -> list[Path]:
        videos = self.compared_videos(group)
        others = [k for k in self.param_keys if k != key]
        lines: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
        kinds = {self.loss_kind(r) for rs in self.groups[group].values() for r in rs}
        if column == "train_loss" and len(kinds) > 1:
            return []  # masked and plain losses on one axis would read as comparable
        for results in self.groups[group].values():
            for r in results:
                if r.get("status") == "ok" and (videos is None or video_name(r) in videos) \
                        and (v := self.value(r, column)) is not None:
                    lines[setting_label({k: r["params"].get(k) for k in others})][float(r["params"][key])].append(v)
        if not lines:
            return []
        fig, ax = plt.subplots(figsize=(5.5, 4.0))
        for label, points in lines.items():
            xs = sorted(points)
            ax.errorbar(xs, [_mean(points[x]) for x in xs], yerr=[_std(points[x]) for x in xs], fmt="o-", capsize=3,
                        label=f"{label} (n={max(len(points[x]) for x in xs)})")
        ticks = sorted({x for points in lines.values() for x in points})
        if ticks[0] > 0 and ticks[-1] / ticks[0] >= 8:  # e.g. ranks 16 ... 256: even spacing on a log axis
            ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [f"{x:g}" for x in ticks])
        ax.set_xlabel(key)
        ax.set_ylabel(axis_label(column), fontsize=8)
        means = [m for points in lines.values() for x in points if (m := _mean(points[x])) is not None]
        spread = max(means) - min(means)
        size = max(abs(m) for m in means) or 1.0
        note = f"; y axis zoomed: the means differ by {100 * spread / size:.2g} %" \
            if 0 < spread < ZOOM_NOTE * size else ""
        ax.set_title(self._title(group, f"{column} vs {key}: mean ± std over videos{note}"), fontsize=8)
        ax.legend(fontsize=7)
        return [_save(fig, out_dir / f"{_slug(column)}_vs_{_slug(key)}{suffix}.png")]

    def summary(self) -> tuple[list[str], list[list[Any]]]:
        """The sweep-level table (columns, rows): per group and setting, n (the videos compared), the
        failures, the final training loss and every metric, means over the group's common videos."""
        columns = ["mode", "source", "setting", "n", "failed", "train_loss", *self.metrics]
        rows = []
        for group, settings in self.groups.items():
            videos = self.compared_videos(group)
            for setting, results in settings.items():
                finished = [r for r in results if r.get("status") == "ok"]
                rows.append([*group, setting, len(videos) if videos else len(finished), len(results) - len(finished)]
                            + [_mean(self.values(group, setting, c, videos)) for c in ["train_loss", *self.metrics]])
        return columns, rows

    def write(self) -> list[Path]:
        """Write ``results.csv``, ``results.md`` and the plots into the sweep folder; returns the paths."""
        paths = [atomic_write_text(self.dir / "results.csv", self.csv_text()),
                 atomic_write_text(self.dir / "results.md", self.markdown())]
        return paths + self.plot(self.dir / "plots")


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    fig.tight_layout()
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path
