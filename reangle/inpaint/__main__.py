"""Stage III alone: python -m reangle.inpaint --run RUN_DIR [--views a,b] [key=value ...]

Inpaints the start frames of a train.py run's static views with its config (``inpaint.*``;
``key=value`` overrides any key), writes ``RUN_DIR/start_frames/<view>.png``,
``scores.json`` and ``preview.png`` (one row per view: warped | inpainted). Then
``python sample.py --run RUN_DIR`` samples from them.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


from reangle.config import RUN_CONFIG, ConfigError, load_run_config
from reangle.errors import run_entry_point
from reangle.io.grid import tile_videos
from reangle.io.video import write_image
from reangle.sampling.plan import INPAINTED_DIR, SamplingInputError, inpainted_views, read_image
from reangle.sampling.run import find_omega

from .run import omega_views, run_stage3

PREVIEW = "preview.png"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a train.py run directory (its config.yaml and Omega are used)")
    parser.add_argument("--views", help="comma-separated view names, inpainted in this order (default: inpaint.views)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[Path]:
    args = parse_args(argv)
    run_dir = Path(args.run)
    if not (run_dir / RUN_CONFIG).is_file():
        raise SamplingInputError(f"{run_dir} is not a run directory ({RUN_CONFIG} is missing); give the run.dir of a "
                                 f"train.py run")
    cfg = load_run_config(run_dir, overrides=args.overrides)
    if cfg.mode != "static":
        raise ConfigError(f"run {run_dir} is in {cfg.mode} mode; stage III makes start frames for static mode only")
    omega = find_omega(cfg)
    views = [v for v in args.views.split(",") if v] if args.views else None
    run_stage3(cfg, omega, run_dir, views)  # keeps the views a killed run finished
    order = views or (list(cfg.inpaint.views) if cfg.inpaint.views else [v.name for v in omega.views])
    names = [name for name in order if name in inpainted_views(run_dir, omega)]
    paths = [run_dir / INPAINTED_DIR / f"{name}.png" for name in names]
    tiles = [frame[None] for view, path in zip(omega_views(omega, names), paths)
             for frame in (view.image, read_image(path, omega.height, omega.width))]
    preview = write_image(tile_videos(tiles, columns=2)[0], run_dir / INPAINTED_DIR / PREVIEW)
    print(*paths, preview, sep="\n")
    return paths


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
