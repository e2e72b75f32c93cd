"""The first process of a sweep unit: runs the unit's command in its own process group and takes
the whole group down when the runner stops it or dies.

    python -m reangle.experiments.guard COMMAND [ARG ...]

The runner starts it as a process-group leader with a parent-death signal (SIGTERM, on Linux),
so ``kill -9`` of the runner reaches the guard, which no ``train.py`` grandchild (data loader
workers, the ranks of a multi-GPU run) would otherwise get. On SIGTERM, SIGINT or SIGHUP the
guard sends SIGTERM to the group, and SIGKILL to whatever is left after the grace period or
once the command has exited. Its exit status is the command's.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys

GRACE_S = 5


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m reangle.experiments.guard COMMAND [ARG ...]", file=sys.stderr)
        return 2
    stopping = False

    def kill_group(signum=None, frame=None) -> None:
        os.killpg(0, signal.SIGKILL)  # the guard included: the runner reads the unit as stopped

    def stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        signal.signal(signal.SIGALRM, kill_group)
        os.killpg(0, signal.SIGTERM)
        signal.alarm(GRACE_S)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
    child = subprocess.Popen(argv)
    code = child.wait()
    if stopping:
        kill_group()
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
