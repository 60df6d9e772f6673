"""Resource knobs checked against the machine before a run starts (issue 13).

``data.num_workers`` (worker processes) and CPU ``trainer.devices`` (one process each) are
bounded by the CPUs this process may use; an absurd value would exhaust memory or process
slots and leave orphaned workers instead of failing with a one-line error.
"""

from __future__ import annotations

import os
from typing import Any

from ssl_diffusion.errors import UserError

WORKERS_PER_CPU = 4  # loaders waiting on I/O can use a few more workers than cores
MIN_WORKER_LIMIT = 8


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def max_workers() -> int:
    return max(WORKERS_PER_CPU * available_cpus(), MIN_WORKER_LIMIT)


def check_resources(cfg: Any) -> None:
    cpus = available_cpus()
    workers = cfg.data.num_workers
    if workers > max_workers():
        raise UserError(
            f"data.num_workers={workers} is more worker processes than this machine can run "
            f"({cpus} CPUs; at most {max_workers()}); use data.num_workers={min(cpus, 8)} or fewer")
    t = cfg.trainer
    on_cpu = t.accelerator == "cpu" or (t.accelerator == "auto" and not _has_accelerator())
    if on_cpu and t.devices * t.num_nodes > 1 and t.devices > cpus:
        raise UserError(
            f"trainer.devices={t.devices} on CPU starts one process per device but this machine "
            f"has {cpus} CPUs; use trainer.devices={cpus} or fewer")


def _has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available() or (
        hasattr(torch.backends, "mps") and torch.backends.mps.is_available())


__all__ = ["available_cpus", "check_resources", "max_workers"]
