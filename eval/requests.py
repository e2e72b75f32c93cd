"""Whether ``python -m eval`` can score a request: metrics for a run's mode and ``eval.source``,
checked before anything trains (the sweep runner asks for all its units at once).

    python -m eval.requests METRIC[,METRIC ...] MODE:SOURCE [MODE:SOURCE ...]

prints one JSON object ``{"MODE:SOURCE": problem or null}``.
"""
from __future__ import annotations

import json
import sys
from typing import Sequence

from eval.registry import METRICS, STATIC_ONLY
from eval.run import SOURCES, START_FRAME_METRICS


def request_problem(metrics: Sequence[str], mode: str, source: str) -> str | None:
    """Why ``metrics`` cannot be scored for a run of ``mode`` evaluated on ``source``, or None."""
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        return f"unknown metric(s) {', '.join(unknown)}; python -m eval knows {', '.join(METRICS)}"
    if source not in SOURCES:
        return f"unknown eval.source {source!r}; use one of {', '.join(SOURCES)}"
    if source == "start_frames":
        others = [m for m in metrics if m not in START_FRAME_METRICS]
        if others:
            return f"eval.source=start_frames scores {', '.join(START_FRAME_METRICS)} only, not {', '.join(others)}"
    static_only = [m for m in metrics if m in STATIC_ONLY]
    if static_only and mode != "static":
        return (f"{', '.join(static_only)} compare neighbouring views of static view transport; this run is "
                f"{mode}: leave {', '.join(static_only)} out of the metrics or run its video as static")
    return None


def main(argv: list[str]) -> int:
    if len(argv) < 2 or any(":" not in pair for pair in argv[1:]):
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    metrics = [m for m in argv[0].split(",") if m]
    print(json.dumps({pair: request_problem(metrics, *pair.split(":", 1)) for pair in argv[1:]}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
