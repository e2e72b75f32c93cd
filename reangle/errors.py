"""The one base class of errors a user can act on, and how entry points report them.

Every error raised for bad input or bad state (a wrong config value, an unreadable video, a
missing checkpoint, a run folder that belongs to another config, a missing optional package,
...) derives from :class:`InputError`; its message is one sentence saying what is wrong and what
to do. Every entry point (``train.py``, ``sample.py``, ``python -m reangle.warp``,
``python -m reangle.inpaint``, ``python -m eval``, ``python -m reangle.sweep``) runs its ``main``
through :func:`run_entry_point`, which reports these as ``error: <message>`` on stderr with exit
status 1, without a traceback; any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import sys
from typing import Any, Callable


class InputError(ValueError):
    """Bad input or state that the user can fix; the message says what and how."""


class MissingPackageError(InputError, ImportError):
    """An optional package a feature needs is not installed (the message names the pip command)."""


INPUT_ERROR_STATUS = 1


def run_entry_point(main: Callable[[], Any]) -> int:
    """Run an entry point's ``main()`` and give its exit status: an ``int`` it returns, else 0; an
    :class:`InputError` prints ``error: <message>`` on stderr and gives :data:`INPUT_ERROR_STATUS`.

    Use as ``sys.exit(run_entry_point(main))``."""
    try:
        result = main()
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return INPUT_ERROR_STATUS
    return result if isinstance(result, int) and not isinstance(result, bool) else 0
