"""Optional dependencies: imported only where used, or one line that names what is missing.

The ``ddae``/``ddaepp`` training path and the torch kNN / linear probe need only torch, torchvision,
pytorch-lightning, numpy, scipy and pyyaml, so they run on a machine with a fixed stack (an
air-gapped GPU node, benchmarks/README.md). lightly (SimCLR, DINO, their view pipelines, the MoCo v3
heads of contrastive self-distillation, LARS), faiss (the faiss kNN backend), wandb (the wandb
logger) and the FID networks' packages are imported through :func:`require` at the point of use.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ssl_diffusion.errors import UserError


def require(module: str, needed_for: str, pip_name: str | None = None) -> ModuleType:
    """``import module``, or a one-line ``UserError`` naming the package, its use and the fix."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package = pip_name or module.split(".")[0]
        raise UserError(f"{needed_for} needs the package `{package}`, which is not installed "
                        f"here ({exc}); pip install {package}") from None


__all__ = ["require"]
