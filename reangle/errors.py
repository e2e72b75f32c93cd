"""The one base class of errors a user can act on.

Every error raised for bad input or bad state (a wrong config value, an unreadable video, a
missing checkpoint, a run folder that belongs to another config, ...) derives from
:class:`InputError`; its message is one sentence saying what is wrong and what to do. The
entry points report these as ``error: <message>`` with a non-zero exit, without a traceback.
"""
from __future__ import annotations


class InputError(ValueError):
    """Bad input or state that the user can fix; the message says what and how."""
