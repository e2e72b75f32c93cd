"""Stage I from the command line: build Omega (warped views) and its preview.

    python -m reangle.warp --config configs/presets/tiny.yaml [key=value ...] [--force]
"""
from __future__ import annotations

import argparse
import sys

from reangle.config import add_config_arguments, config_from_args
from reangle.data.build import build_omega
from reangle.errors import run_entry_point


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build Omega: warp the input video into the target views.")
    add_config_arguments(parser)
    parser.add_argument("--force", action="store_true", help="rebuild even if a cached Omega exists")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    omega = build_omega(cfg, force=args.force)
    print(f"Omega: {omega.root} ({len(omega.views)} views incl. the input)")
    if (omega.root / "preview.mp4").is_file():
        print(f"preview: {omega.root / 'preview.mp4'} and {omega.root / 'preview.gif'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
