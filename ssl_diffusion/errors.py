"""User-facing errors: every bad input becomes one actionable line and a non-zero exit."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterable
from types import ModuleType


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


def require(module: str, needed_for: str, pip_name: str | None = None) -> ModuleType:
    """``import module``, or a one-line ``UserError`` naming the package, its use and the fix.

    For optional dependencies, imported where used: the ``ddae``/``ddaepp`` path and the torch
    kNN / linear probe need none of lightly (SimCLR, DINO, their view pipelines, the MoCo v3
    heads of contrastive self-distillation), faiss (the faiss kNN backend), wandb (the wandb
    logger) or the FID packages, so they run on a fixed stack (an air-gapped GPU node,
    benchmarks/README.md).
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package = pip_name or module.split(".")[0]
        raise UserError(f"{needed_for} needs the package `{package}`, which is not installed "
                        f"here ({exc}); pip install {package}") from None
