"""The results of a sweep folder: ``results.csv``, ``results.md`` and ``plots/*.png``.

Reads every ``trials/*/result.json`` (and the run's resolved ``config.yaml``, to tell which
settings match the paper's). ``results.csv`` has one row per unit (trial x video): the swept
config keys, status, seconds, final training loss, every metric, the error. ``results.md``
averages the finished videos of each setting in the layout of the paper's Tab. 1 and Tab. 2,
with the paper's figures below a setting that matches the paper's, and names every failure.
The plots: each metric per setting (bars = mean, dots = videos) and each metric against
every numeric swept key (one line per combination of the other swept keys).
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from reangle.experiments.paper_figures import (LOWER_IS_BETTER, TABLE1_METRICS, TABLE2_METRICS, paper_table1_row,
                                               paper_table2_row)
from reangle.experiments.trial import RESULT
from reangle.utils import atomic_write_text, temporary_path

TRIALS = "trials"
BASE_COLUMNS = ["id", "trial", "setting", "video", "status", "seconds", "train_loss"]


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


def _run_config(sweep_dir: Path, unit_id: str) -> dict[str, Any]:
    path = sweep_dir / TRIALS / unit_id / "config.yaml"
    return yaml.safe_load(path.read_text()) if path.is_file() else {}


class SweepResults:
    """The results of one sweep folder, grouped by setting (the trial's parameters)."""

    def __init__(self, sweep_dir: str | os.PathLike):
        self.dir = Path(sweep_dir)
        self.units = collect_results(self.dir)
        self.param_keys = list(dict.fromkeys(k for r in self.units for k in r.get("params", {})))
        self.metrics = sorted({m for r in self.units for m in r.get("metrics", {})})
        self.settings: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for result in self.units:
            self.settings[setting_label(result.get("params", {}))].append(result)
        self.name = self.units[0].get("sweep", self.dir.name) if self.units else self.dir.name

    def failures(self) -> list[dict[str, Any]]:
        return [r for r in self.units if r.get("status") != "ok"]

    def value(self, result: dict[str, Any], column: str) -> float | None:
        value = result.get(column) if column in ("train_loss", "seconds") else result.get("metrics", {}).get(column)
        return float(value) if isinstance(value, (int, float)) else None

    def mean(self, setting: str, column: str) -> float | None:
        ok = [r for r in self.settings[setting] if r.get("status") == "ok"]
        return _mean([v for r in ok if (v := self.value(r, column)) is not None])

    def config(self, setting: str) -> dict[str, Any]:
        ok = [r for r in self.settings[setting] if r.get("status") == "ok"]
        return _run_config(self.dir, ok[0]["id"]) if ok else {}

    # --- files --------------------------------------------------------------------------------
    def csv_text(self) -> str:
        columns = BASE_COLUMNS[:3] + self.param_keys + BASE_COLUMNS[3:] + self.metrics + ["error"]
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(columns)
        for r in self.units:
            params = r.get("params", {})
            row = [r.get("id"), r.get("trial"), setting_label(params)]
            row += [json.dumps(params[k]) if isinstance(params.get(k), (list, dict)) else params.get(k, "")
                    for k in self.param_keys]
            row += [r.get("video") or "", r.get("status"), r.get("seconds"), r.get("train_loss")]
            row += [r.get("metrics", {}).get(m, "") for m in self.metrics]
            writer.writerow(row + [r.get("error") or ""])
        return out.getvalue()

    def _table(self, columns: dict[str, str], paper_row) -> list[str]:
        lines = ["| setting | " + " | ".join(columns.values()) + " |", "|---" * (len(columns) + 1) + "|"]
        for setting in self.settings:
            lines.append(f"| {setting} | " + " | ".join(_number(self.mean(setting, m)) for m in columns) + " |")
            config = self.config(setting)
            paper = paper_row(config) if config else None
            if paper is not None:
                lines.append(f"| *paper ({config.get('mode')})* | "
                             + " | ".join(_number(paper.get(m)) for m in columns) + " |")
        return lines

    def markdown(self) -> str:
        failed = self.failures()
        lines = [f"# Sweep `{self.name}`", "",
                 f"{len(self.units)} units (trials x videos): {len(self.units) - len(failed)} finished, "
                 f"{len(failed)} failed. Each row is the mean over the videos that finished.", "",
                 "| setting | videos | failed | final train loss | seconds |", "|---|---|---|---|---|"]
        for setting, results in self.settings.items():
            ok = sum(r.get("status") == "ok" for r in results)
            lines.append(f"| {setting} | {ok} | {len(results) - ok} | {_number(self.mean(setting, 'train_loss'))} | "
                         f"{_number(self.mean(setting, 'seconds'))} |")
        table1 = any(m in self.metrics for m in TABLE1_METRICS)
        table2 = any(m in self.metrics for m in ("sed", "tsed"))
        if table1:
            lines += ["", "## Video quality (layout of the paper's Tab. 1)", "",
                      *self._table(TABLE1_METRICS, paper_table1_row)]
        if table2:
            lines += ["", "## Multi-view consistency (layout of the paper's Tab. 2)", "",
                      "The paper scores stage III's start frames; a sweep's scores come from the sampled videos "
                      "(evaluate the start frames themselves with `eval.source=start_frames`).", "",
                      *self._table(TABLE2_METRICS, paper_table2_row)]
        other = [m for m in self.metrics if m not in TABLE1_METRICS and m not in TABLE2_METRICS]
        if other:
            lines += ["", "## Other metrics", "", *self._table({m: m for m in other}, lambda config: None)]
        if table1 or table2:
            lines += ["", "A *paper* row follows a setting whose resolved config has the paper's settings "
                      "(LoRA rank = alpha = 128, 400 steps, lr 1e-4, masked loss, all six motions with M = 12 "
                      "static / 6 dynamic, 40 sampling steps, guidance 6). Lower is better for "
                      + ", ".join(sorted(m for m in LOWER_IS_BETTER if m in self.metrics) or ["none here"]) + "."]
        if failed:
            lines += ["", "## Failures", ""]
            lines += [f"- `{r.get('id')}` (video {r.get('video') or '-'}, {setting_label(r.get('params', {}))}) "
                      f"failed in {r.get('stage') or '?'}: {r.get('error')} (log: {TRIALS}/{r.get('id')}/trial.log)"
                      for r in failed]
        return "\n".join(lines) + "\n"

    def plot(self, out_dir: Path) -> list[Path]:
        """PNG plots (see module docstring) into ``out_dir``; returns their paths."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        written = []
        columns = ["train_loss", *self.metrics]
        settings = list(self.settings)
        numeric = [k for k in self.param_keys if len({json.dumps(r["params"].get(k)) for r in self.units}) > 1
                   and all(isinstance(r["params"].get(k), (int, float)) and not isinstance(r["params"].get(k), bool)
                           for r in self.units)]
        for column in columns:
            means = [self.mean(s, column) for s in settings]
            if all(m is None for m in means):
                continue
            fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(settings)), 3.5))
            ax.bar(range(len(settings)), [m if m is not None else 0.0 for m in means], color="#8fb3d9")
            for i, s in enumerate(settings):
                points = [v for r in self.settings[s] if r.get("status") == "ok" and (v := self.value(r, column)) is not None]
                ax.plot([i] * len(points), points, "o", color="#1f4e79", markersize=4)
            ax.set_xticks(range(len(settings)), settings, rotation=20, ha="right", fontsize=8)
            ax.set_ylabel(column)
            ax.set_title(f"{column} per setting (mean over videos; dots: videos)", fontsize=9)
            written.append(_save(fig, out_dir / f"{_slug(column)}_by_setting.png"))
            for key in numeric:
                written += self._line_plot(plt, out_dir, column, key)
        return written

    def _line_plot(self, plt, out_dir: Path, column: str, key: str) -> list[Path]:
        others = [k for k in self.param_keys if k != key]
        lines: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
        for r in self.units:
            if r.get("status") == "ok" and (v := self.value(r, column)) is not None:
                label = setting_label({k: r["params"].get(k) for k in others})
                lines[label][float(r["params"][key])].append(v)
        if not lines:
            return []
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for label, points in lines.items():
            xs = sorted(points)
            ax.plot(xs, [_mean(points[x]) for x in xs], "o-", label=label)
        ticks = sorted({x for points in lines.values() for x in points})
        if ticks[0] > 0 and ticks[-1] / ticks[0] >= 8:  # e.g. ranks 16 ... 256: even spacing on a log axis
            ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [f"{x:g}" for x in ticks])
        ax.set_xlabel(key)
        ax.set_ylabel(column)
        ax.set_title(f"{column} vs {key} (mean over videos)", fontsize=9)
        if len(lines) > 1 or others:
            ax.legend(fontsize=7)
        return [_save(fig, out_dir / f"{_slug(column)}_vs_{_slug(key)}.png")]

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
