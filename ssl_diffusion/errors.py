"""User-facing errors: every bad input becomes one actionable line and a non-zero exit."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A problem with the user's input (config, path, checkpoint, data).

    CLIs print ``error: <message>`` on one line and exit with code 2; no traceback.
    """


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The closest valid choice to ``name``, or None when nothing is close."""
    matches = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.5)
    return matches[0] if matches else None


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """A ' — did you mean `x`?' suffix, or '' when nothing is close."""
    match = closest(name, choices)
    return f" — did you mean `{match}`?" if match else ""
