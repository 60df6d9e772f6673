"""Per-sample random streams, so that sample i depends only on seed i (not on the batch size,
the batch composition or the number of GPUs), following NVlabs/edm2's ``StackedRandomGenerator``.

Generators live on the CPU by default: the numbers are then identical on every machine, and
drawing a few images' worth of noise per step on the CPU is cheap next to a network call.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def seed_generators(
    seeds: Sequence[int], device: torch.device | str = "cpu"
) -> list[torch.Generator]:
    """One freshly seeded ``torch.Generator`` per sample."""
    return [torch.Generator(device=device).manual_seed(int(seed)) for seed in seeds]


def per_sample_randn(
    generators: Sequence[torch.Generator],
    shape: Sequence[int],
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """(N, *shape) standard normal noise, row i drawn from ``generators[i]`` (advancing it)."""
    rows = [
        torch.randn(tuple(shape), generator=g, device=g.device, dtype=dtype) for g in generators
    ]
    return torch.stack(rows).to(device=device)


def seeded_randn(
    seeds: Sequence[int],
    shape: Sequence[int],
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """(N, *shape) standard normal noise, row i a function of ``seeds[i]`` only."""
    return per_sample_randn(seed_generators(seeds), shape, device=device, dtype=dtype)
